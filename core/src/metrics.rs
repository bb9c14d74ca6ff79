//! Prometheus metrics (docs/http-api.md `/metrics`): helpers over `prometheus-client`, the
//! broker connection's own metrics, and a small listener for processes that have no web
//! server of their own (the consumer's `METRICS_PORT`).
//!
//! Every family is registered once per process in its own `Registry`; labels are
//! low-cardinality by construction (enums and route templates, never a job id).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

pub use prometheus_client;

/// The exposition format `encode` writes (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders a registry in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

/// Buckets for latencies in seconds: 0.5 ms to about 33 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 17,
    ))
}

/// Seconds since `start`, for a histogram.
pub fn since(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// The broker connection as metrics: connected, blocked by an alarm, connections made.
/// Read from the supervisor at each scrape ([`BrokerMetrics::refresh`]).
#[derive(Clone, Default)]
pub struct BrokerMetrics {
    connected: Gauge,
    blocked: Gauge,
    connections: Counter,
}

impl BrokerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = BrokerMetrics::default();
        registry.register(
            "imagejobs_broker_connected",
            "1 while a broker connection is up with the topology declared",
            m.connected.clone(),
        );
        registry.register(
            "imagejobs_broker_blocked",
            "1 while the broker blocks this connection's publishers (memory or disk alarm)",
            m.blocked.clone(),
        );
        registry.register(
            "imagejobs_broker_connections",
            "Broker connections made; more than one means reconnects",
            m.connections.clone(),
        );
        m
    }

    pub fn refresh(&self, broker: &Broker) {
        self.connected.set(i64::from(broker.is_ready()));
        self.blocked.set(i64::from(broker.blocked().is_some()));
        let made = broker.connections_made();
        let seen = self.connections.get();
        if made > seen {
            self.connections.inc_by(made - seen);
        }
    }
}

/// Serves `GET /metrics` (and `GET /healthz`, for a liveness probe) on `listener` until
/// `shutdown`; `render` is called for every scrape. HTTP/1 only, one short request per
/// connection at a time, with a bound on how long a scrape's head may take.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: CancellationToken,
) {
    use hyper::body::Incoming;
    use hyper::{Request, Response, StatusCode};
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", CONTENT_TYPE)
                            .body(render())
                    } else if req.uri().path() == "/healthz" {
                        // A liveness probe's target: the process runs and serves.
                        Response::builder().body("ok\n".to_owned())
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body("not found: try /metrics\n".to_owned())
                    };
                    Ok::<_, Infallible>(resp.unwrap_or_default())
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Binds `port` on all interfaces (`0` picks one), logs `metrics on http://ADDR/metrics`
/// and serves until `shutdown`. Returns the bound address.
pub async fn listen(
    port: u16,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!("metrics on http://{addr}/metrics");
    tokio::spawn(serve(listener, render, shutdown));
    Ok(addr)
}
