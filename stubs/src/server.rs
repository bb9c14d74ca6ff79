//! Binding, wiring and serving both services, and the [`Stubs`] handle tests hold.
//!
//! Each port serves its API routes (behind the stats and fault middleware), plus `GET /ping`
//! and `GET /stats`, which get no faults and are not counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use reqwest::Url;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blob::{self, BlobService, BlobStore};
use crate::blob_client::BlobClient;
use crate::error::{no_such_route, ApiError};
use crate::faults::{self, Faults};
use crate::stats::{self, Stats, StatsSnapshot};
use crate::worker::{self, JobTable, WorkerService};
use crate::StubConfig;

/// Running stubs: where they listen, and handles to steer and observe them.
///
/// The servers stop when the `shutdown` token given to [`Stubs::start`] is cancelled; dropping
/// this handle does not stop them.
#[derive(Debug)]
pub struct Stubs {
    /// Base URL of the worker API, e.g. `http://127.0.0.1:8080/api/v1` (what the consumer's
    /// `WORKER_SERVICE_URL` should be).
    pub worker_url: String,
    /// Base URL of the blob API, e.g. `http://127.0.0.1:8081/api/v1` (what the consumer's
    /// `BLOB_SERVICE_URL` should be).
    pub blob_url: String,
    /// Address the worker service is bound to.
    pub worker_addr: SocketAddr,
    /// Address the blob service is bound to.
    pub blob_addr: SocketAddr,
    faults: Faults,
    stats: Stats,
    store: BlobStore,
    tracker: TaskTracker,
}

impl Stubs {
    /// Binds both listeners, starts serving in background tasks and returns at once.
    ///
    /// Fails when a port cannot be bound or a configured URL cannot serve as a base.
    pub async fn start(config: StubConfig, shutdown: CancellationToken) -> anyhow::Result<Stubs> {
        // reqwest's rustls takes the process's provider; install it once (idempotent).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(imagejobs_serve::tls_acceptor(cert, key)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ca_pem = match &config.service_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading SERVICE_CA_FILE {}", path.display()))?,
            ),
            None => None,
        };
        let faults = Faults::new(&config);
        let stats = Stats::default();
        let store = BlobStore::new(config.blob_capacity, config.blob_max_bytes);
        let tracker = TaskTracker::new();

        let blob_listener = TcpListener::bind((config.host, config.blob_port))
            .await
            .with_context(|| {
                format!(
                    "binding the blob service to {}:{}",
                    config.host, config.blob_port
                )
            })?;
        let worker_listener = TcpListener::bind((config.host, config.worker_port))
            .await
            .with_context(|| {
                format!(
                    "binding the worker service to {}:{}",
                    config.host, config.worker_port
                )
            })?;
        let blob_addr = blob_listener
            .local_addr()
            .context("blob listener address")?;
        let worker_addr = worker_listener
            .local_addr()
            .context("worker listener address")?;
        let blob_url = api_base(scheme, blob_addr);
        let worker_url = api_base(scheme, worker_addr);
        let own_blob_base: Url = blob_url.parse().context("own blob service URL")?;

        let public_base = config
            .blob_public_url
            .clone()
            .unwrap_or_else(|| own_blob_base.clone());
        if public_base.cannot_be_a_base() {
            anyhow::bail!("blob public URL {public_base} cannot take a path");
        }
        let blob_service_url = config.blob_service_url.clone().unwrap_or(own_blob_base);
        if blob_service_url.cannot_be_a_base() {
            anyhow::bail!("blob service URL {blob_service_url} cannot take a path");
        }

        let blob_api = blob::routes(BlobService {
            store: store.clone(),
            stats: stats.clone(),
            public_base,
        });
        let worker_api = worker::routes(WorkerService {
            jobs: JobTable::new(config.job_capacity),
            faults: faults.clone(),
            stats: stats.clone(),
            blobs: BlobClient::new(blob_service_url.clone(), ca_pem.as_deref())?,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            decodes: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_decodes.max(1))),
            max_pixels: config.max_pixels,
        });
        let observer = Observer {
            stats: stats.clone(),
            store: store.clone(),
        };
        let blob_app = app(blob_api, &faults, &observer);
        let worker_app = app(worker_api, &faults, &observer);

        tracing::info!("blob listening on {scheme}://{blob_addr} (API base {blob_url})");
        tracing::info!(
            "worker listening on {scheme}://{worker_addr} (API base {worker_url}, blob service {blob_service_url})"
        );
        tracing::info!(
            seed = faults.seed(),
            latency_ms = config.latency_ms,
            error_rate = config.error_rate,
            blob_error_rate = config.blob_error_rate,
            blob_hang_ms = config.blob_hang_ms,
            job_fail_rate = config.job_fail_rate,
            running_ms = config.running_ms,
            skip_image_work = config.skip_image_work,
            force_job_status = config.force_job_status,
            "fault knobs"
        );

        tracker.spawn(serve(
            "blob",
            blob_listener,
            tls.clone(),
            blob_app,
            shutdown.clone(),
        ));
        tracker.spawn(serve("worker", worker_listener, tls, worker_app, shutdown));

        Ok(Stubs {
            worker_url,
            blob_url,
            worker_addr,
            blob_addr,
            faults,
            stats,
            store,
            tracker,
        })
    }

    /// The fault knobs, adjustable while the stubs serve.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A copy of the counters now.
    pub fn stats(&self) -> StatsSnapshot {
        Observer {
            stats: self.stats.clone(),
            store: self.store.clone(),
        }
        .snapshot(true)
    }

    /// The trace ids of the `traceparent` headers the services received lately, with the
    /// endpoint (`blob_put`, `job_post`, ...) each came to; oldest first.
    pub fn trace_ids(&self) -> Vec<(String, String)> {
        self.stats.trace_ids()
    }

    /// The blob stored under `id` (e.g. a job id, or `{job id}.thumb` for its thumbnail) and
    /// its content type.
    pub fn blob(&self, id: &str) -> Option<(Bytes, String)> {
        self.store.get(id)
    }

    /// Lowers every endpoint's `max_in_flight` to its current `in_flight`, to measure the
    /// concurrency of what follows only.
    pub fn reset_max_in_flight(&self) {
        self.stats.reset_max_in_flight();
    }

    /// Waits until the shutdown token is cancelled and both servers and all job tasks have
    /// stopped.
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Starts the stubs and serves until `shutdown` is cancelled.
pub async fn run(config: StubConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stubs = Stubs::start(config, shutdown).await?;
    stubs.wait().await;
    tracing::info!("stubs stopped");
    Ok(())
}

/// `http(s)://<addr>/api/v1`, with an unspecified bind address (0.0.0.0, ::) replaced by
/// loopback so that the URL can be called.
fn api_base(scheme: &str, addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("{scheme}://{}/api/v1", SocketAddr::new(ip, addr.port()))
}

/// One service's full router: its API behind fault injection and, outside that, the request
/// tracking (so in-flight time includes injected latency); `/ping`, `/stats` and the JSON 404
/// beside it.
fn app(api: Router, faults: &Faults, observer: &Observer) -> Router {
    let api = api
        .route_layer(from_fn_with_state(faults.clone(), faults::inject))
        .route_layer(from_fn_with_state(observer.stats.clone(), stats::track));
    let plain = Router::new()
        .route("/ping", get(ping))
        .route("/stats", get(stats_json))
        .with_state(observer.clone());
    let knobs = Router::new()
        .route("/faults", get(faults_json).put(set_faults))
        .with_state(faults.clone());
    let (stats, f) = (observer.stats.clone(), faults.clone());
    let metrics = Router::new().route(
        "/metrics",
        get(move || {
            let (stats, faults) = (stats.clone(), f.clone());
            async move { metrics_text(&stats, &faults) }
        }),
    );
    api.merge(plain)
        .merge(knobs)
        .merge(metrics)
        .fallback(no_such_route)
}

/// The fault knobs as they stand, for `GET /faults`.
#[derive(Debug, serde::Serialize, Deserialize, Default)]
struct FaultsBody {
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    job_fail_rate: Option<f64>,
    running_ms: Option<u64>,
    skip_image_work: Option<bool>,
    /// 0 clears a forced status.
    force_job_status: Option<u16>,
    /// Keep the next this many new jobs RUNNING for `hang_ms` (a hanging worker).
    hang_next: Option<u64>,
    hang_ms: Option<u64>,
    /// Share of blob PUTs answered 503 (the blob service only).
    blob_error_rate: Option<f64>,
    /// How long each blob PUT waits before it is handled; 0 ends it.
    blob_hang_ms: Option<u64>,
}

fn current_faults(f: &Faults) -> FaultsBody {
    FaultsBody {
        latency_ms: Some(f.latency().as_millis() as u64),
        error_rate: Some(f.error_rate()),
        job_fail_rate: Some(f.job_fail_rate()),
        running_ms: Some(f.running().as_millis() as u64),
        skip_image_work: Some(f.skip_image_work()),
        force_job_status: Some(f.forced_status().unwrap_or(0)),
        hang_next: Some(f.hangs_left()),
        hang_ms: None,
        blob_error_rate: Some(f.blob_error_rate()),
        blob_hang_ms: Some(f.blob_hang().as_millis() as u64),
    }
}

async fn faults_json(State(f): State<Faults>) -> Json<FaultsBody> {
    Json(current_faults(&f))
}

/// `PUT /faults` with any of the knobs, to stage failures in a running demo, e.g.
/// `curl -X PUT localhost:8080/faults -d '{"error_rate": 1}'`.
async fn set_faults(State(f): State<Faults>, body: Bytes) -> Result<Json<FaultsBody>, ApiError> {
    let req: FaultsBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid JSON body",
            e.to_string(),
        )
    })?;
    if let Some(v) = req.latency_ms {
        f.set_latency(std::time::Duration::from_millis(v));
    }
    if let Some(v) = req.error_rate {
        f.set_error_rate(v);
    }
    if let Some(v) = req.job_fail_rate {
        f.set_job_fail_rate(v);
    }
    if let Some(v) = req.running_ms {
        f.set_running(std::time::Duration::from_millis(v));
    }
    if let Some(v) = req.skip_image_work {
        f.set_skip_image_work(v);
    }
    if let Some(v) = req.force_job_status {
        f.set_forced_status((v != 0).then_some(v));
    }
    if let Some(v) = req.blob_error_rate {
        f.set_blob_error_rate(v);
    }
    if let Some(v) = req.blob_hang_ms {
        f.set_blob_hang(std::time::Duration::from_millis(v));
    }
    if let Some(n) = req.hang_next {
        let ms = req.hang_ms.unwrap_or(60_000);
        f.hang_next(n, std::time::Duration::from_millis(ms));
    }
    tracing::info!(faults = ?current_faults(&f), "fault knobs changed");
    Ok(Json(current_faults(&f)))
}

async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    shutdown: CancellationToken,
) {
    let limits = imagejobs_serve::Limits {
        header_timeout: std::time::Duration::from_secs(10),
        drain_timeout: std::time::Duration::from_secs(10),
    };
    let outcome = imagejobs_serve::serve(listener, tls, app, limits, shutdown).await;
    match outcome {
        Ok(()) => tracing::debug!(service = name, "server stopped"),
        Err(error) => tracing::error!(service = name, %error, "server failed"),
    }
}

/// What `/stats` reads: the counters and the blob store's sizes.
#[derive(Clone, Debug)]
struct Observer {
    stats: Stats,
    store: BlobStore,
}

impl Observer {
    fn snapshot(&self, with_ids: bool) -> StatsSnapshot {
        let mut snapshot = self.stats.snapshot(with_ids);
        let figures = self.store.figures();
        snapshot.blobs_stored = figures.blobs;
        snapshot.blob_bytes = figures.bytes;
        snapshot.blobs_evicted = figures.evicted;
        snapshot
    }
}

/// `GET /metrics`: requests by endpoint and the faults injected, in the exposition format.
fn metrics_text(stats: &Stats, faults: &Faults) -> impl axum::response::IntoResponse {
    let mut registry = prometheus_client::registry::Registry::default();
    stats.register(&mut registry);
    faults.register(&mut registry);
    let mut body = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn ping() -> &'static str {
    "pong"
}

#[derive(Debug, Default, Deserialize)]
struct StatsQuery {
    /// Include the per-id maps, which can be large after a benchmark.
    #[serde(default)]
    ids: bool,
}

/// `GET /stats[?ids=true]`: the counters as JSON, for demos and benchmarks.
async fn stats_json(
    State(observer): State<Observer>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<StatsSnapshot>, ApiError> {
    let Query(query) = query?;
    Ok(Json(observer.snapshot(query.ids)))
}
