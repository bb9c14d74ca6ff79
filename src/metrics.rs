//! The ingress's Prometheus metrics (`GET /metrics`, docs/http-api.md).
//!
//! Labels are bounded by construction: the outcome and status code of a submit, a route
//! template (never a path with a job id in it), why a request was turned away.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use imagejobs_core::broker::Broker;
use imagejobs_core::metrics::{latency_histogram, render, BrokerMetrics};
use imagejobs_core::status::StatusEvent;

use crate::index::snapshot::SnapshotInfo;
use crate::index::JobIndex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubmitLabels {
    outcome: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    message: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    code: u16,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantStatusLabels {
    tenant_id: i64,
    status: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one ingress process.
pub struct IngressMetrics {
    registry: Registry,
    submits: Family<SubmitLabels, Counter>,
    requests: Histograms<RouteLabels>,
    confirms: Histograms<PublishLabels>,
    blob_puts: Histogram,
    rejections: Family<RejectLabels, Counter>,
    idempotency_hits: Counter,
    events_applied: Counter,
    follower_lag: Gauge<f64, AtomicU64>,
    snapshot: SnapshotMetrics,
    index_jobs: Gauge,
    index_bytes: Gauge,
    tenant_jobs: Family<TenantStatusLabels, Gauge>,
    broker: BrokerMetrics,
}

impl Default for IngressMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IngressMetrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let submits = Family::<SubmitLabels, Counter>::default();
        r.register(
            "imagejobs_submits",
            "Job submits by outcome (accepted, rejected, unavailable) and HTTP status code",
            submits.clone(),
        );
        let requests: Histograms<RouteLabels> = Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "imagejobs_http_request_duration",
            "HTTP request duration by route template",
            Unit::Seconds,
            requests.clone(),
        );
        let confirms: Histograms<PublishLabels> = Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "imagejobs_publish_confirm_duration",
            "From publishing to the broker's confirm, for jobs and their QUEUED events",
            Unit::Seconds,
            confirms.clone(),
        );
        let blob_puts = latency_histogram();
        r.register_with_unit(
            "imagejobs_blob_put_duration",
            "From a claim-checked submit's PUT to the blob service's answer",
            Unit::Seconds,
            blob_puts.clone(),
        );
        let rejections = Family::<RejectLabels, Counter>::default();
        r.register(
            "imagejobs_rejections",
            "Requests turned away with 429 or 503, by reason",
            rejections.clone(),
        );
        let idempotency_hits = Counter::default();
        r.register(
            "imagejobs_idempotency_hits",
            "Submits whose Idempotency-Key named a job already accepted",
            idempotency_hits.clone(),
        );
        let events_applied = Counter::default();
        r.register(
            "imagejobs_index_events_applied",
            "Status events read from the events stream and applied to the job index",
            events_applied.clone(),
        );
        let follower_lag = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "imagejobs_index_follower_lag",
            "Age of the last status event the index follower applied, when it applied it",
            Unit::Seconds,
            follower_lag.clone(),
        );
        let snapshot = SnapshotMetrics::register(&mut r);
        let index_jobs = Gauge::default();
        r.register(
            "imagejobs_index_jobs",
            "Jobs the in-memory job index holds",
            index_jobs.clone(),
        );
        let index_bytes = Gauge::default();
        r.register_with_unit(
            "imagejobs_index",
            "Heap the job index holds for its records (approximate)",
            Unit::Bytes,
            index_bytes.clone(),
        );
        let tenant_jobs = Family::<TenantStatusLabels, Gauge>::default();
        r.register(
            "imagejobs_tenant_jobs",
            "Each tenant's unfinished jobs by status, from the job index: the tenant's backlog \
             (the work queue's lanes mix the tenants that hash to them)",
            tenant_jobs.clone(),
        );
        let broker = BrokerMetrics::register(&mut r);
        IngressMetrics {
            registry: r,
            submits,
            requests,
            confirms,
            blob_puts,
            rejections,
            idempotency_hits,
            events_applied,
            follower_lag,
            snapshot,
            index_jobs,
            index_bytes,
            tenant_jobs,
            broker,
        }
    }

    /// Renders every family, with the gauges read now.
    pub fn render(&self, index: &JobIndex, broker: &Broker) -> String {
        self.snapshot.refresh_age();
        self.index_jobs.set(index.len() as i64);
        self.index_bytes.set(index.approx_bytes() as i64);
        // Tenants whose backlog emptied leave the families instead of staying at zero.
        self.tenant_jobs.clear();
        for (tenant, b) in index.backlogs() {
            for (status, n) in [
                ("QUEUED", b.queued),
                ("RUNNING", b.running),
                ("RETRYING", b.retrying),
            ] {
                let labels = TenantStatusLabels {
                    tenant_id: tenant.0,
                    status,
                };
                self.tenant_jobs
                    .get_or_create(&labels)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        self.broker.refresh(broker);
        render(&self.registry)
    }

    /// A confirmed publish of a job (`job`) or its QUEUED event (`event`) took this long.
    pub fn confirmed(&self, message: &'static str, started: Instant) {
        self.confirms
            .get_or_create(&PublishLabels { message })
            .observe(started.elapsed().as_secs_f64());
    }

    /// A claim-checked image's PUT to the blob service took this long, answered or not.
    pub fn blob_put(&self, started: Instant) {
        self.blob_puts.observe(started.elapsed().as_secs_f64());
    }

    /// An index snapshot was written in `secs` seconds.
    pub fn snapshot_written(&self, info: &SnapshotInfo, secs: f64) {
        self.snapshot.record(info, "write", secs);
    }

    /// An index snapshot was loaded at start-up in `secs` seconds.
    pub fn snapshot_loaded(&self, info: &SnapshotInfo, secs: f64) {
        self.snapshot.record(info, "load", secs);
    }

    pub fn idempotency_hit(&self) {
        self.idempotency_hits.inc();
    }

    /// The follower applied `n` events of one stream message, `last` the last of them
    /// (its age is the lag: read once a message, not once an event, to keep catch-up fast).
    pub fn applied(&self, n: u64, last: Option<&StatusEvent>) {
        self.events_applied.inc_by(n);
        let Some(event) = last else { return };
        if let Ok(at) = humantime::parse_rfc3339_weak(&event.at) {
            if let Ok(age) = std::time::SystemTime::now().duration_since(at) {
                self.follower_lag.set(age.as_secs_f64());
            }
        }
    }

    fn observe(&self, method: &Method, route: &'static str, response: &Response, took: f64) {
        self.requests
            .get_or_create(&RouteLabels { route })
            .observe(took);
        let code = response.status().as_u16();
        if route == "/api/v1/job" && method == Method::POST {
            let outcome = match response.status() {
                StatusCode::ACCEPTED => "accepted",
                StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                _ => "rejected",
            };
            self.submits
                .get_or_create(&SubmitLabels { outcome, code })
                .inc();
        }
        let reason = response
            .extensions()
            .get::<Rejected>()
            .copied()
            .or_else(|| {
                response
                    .extensions()
                    .get::<imagejobs_serve::Overloaded>()
                    .map(|_| Rejected::InFlight)
            });
        if let Some(reason) = reason {
            self.rejections
                .get_or_create(&RejectLabels {
                    code,
                    reason: reason.as_str(),
                })
                .inc();
        }
    }

    /// The middleware, outermost, so that it sees the in-flight cap's 503s too.
    pub async fn track(
        State(metrics): State<Arc<IngressMetrics>>,
        request: Request,
        next: Next,
    ) -> Response {
        let started = Instant::now();
        let method = request.method().clone();
        // The template now: no copy of the path per request.
        let route = route_of(request.uri().path());
        let response = next.run(request).await;
        metrics.observe(&method, route, &response, started.elapsed().as_secs_f64());
        response
    }
}

/// The route template of a path: a fixed set, so that no label holds a job id.
fn route_of(path: &str) -> &'static str {
    match path {
        "/api/v1/job" => "/api/v1/job",
        "/metrics" => "/metrics",
        "/readyz" => "/readyz",
        "/healthz" => "/healthz",
        "/ping" => "/ping",
        "/api/v1/jobs" => "/api/v1/jobs",
        "/api/v1/jobs/events" => "/api/v1/jobs/events",
        "/api/v1/stats" => "/api/v1/stats",
        "/" => "/",
        "/api/v1/openapi.json" => "/api/v1/openapi.json",
        // The dashboard's files (its script is several modules): one label.
        p if p.starts_with("/dashboard/") => "/dashboard",
        _ => match path.strip_prefix("/api/v1/job/") {
            Some(rest) if !rest.is_empty() && !rest.contains('/') => "/api/v1/job/{id}",
            Some(rest) if rest.matches('/').count() == 1 => {
                match rest.rsplit_once('/').map(|(_, tail)| tail) {
                    Some("status") => "/api/v1/job/{id}/status",
                    Some("events") => "/api/v1/job/{id}/events",
                    Some("result") => "/api/v1/job/{id}/result",
                    _ => "other",
                }
            }
            _ => "other",
        },
    }
}

/// Why a request was turned away with 429 or 503: a label of
/// `imagejobs_rejections_total`, carried on the response as an extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    RateLimited,
    QueueFull,
    Unroutable,
    BrokerBlocked,
    BrokerUnavailable,
    /// The cap on requests in flight (`MAX_IN_FLIGHT`).
    InFlight,
    /// The cap on event streams open at once (`MAX_WATCHERS`).
    Watchers,
    /// The index is still reading the events stream.
    CatchingUp,
    /// The blob service did not store a claim-checked image (down, slow, 429, 5xx).
    BlobUnavailable,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::RateLimited => "rate_limited",
            Rejected::QueueFull => "queue_full",
            Rejected::Unroutable => "unroutable",
            Rejected::BrokerBlocked => "broker_blocked",
            Rejected::BrokerUnavailable => "broker_unavailable",
            Rejected::InFlight => "in_flight",
            Rejected::Watchers => "watchers",
            Rejected::CatchingUp => "catching_up",
            Rejected::BlobUnavailable => "blob_unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templates() {
        assert_eq!(route_of("/api/v1/job"), "/api/v1/job");
        assert_eq!(route_of("/api/v1/job/abc"), "/api/v1/job/{id}");
        assert_eq!(
            route_of("/api/v1/job/abc/status"),
            "/api/v1/job/{id}/status"
        );
        assert_eq!(route_of("/api/v1/job/abc/x/status"), "other");
        assert_eq!(
            route_of("/api/v1/job/abc/events"),
            "/api/v1/job/{id}/events"
        );
        assert_eq!(
            route_of("/api/v1/job/abc/result"),
            "/api/v1/job/{id}/result"
        );
        assert_eq!(route_of("/api/v1/job/abc/nope"), "other");
        assert_eq!(route_of("/dashboard/main.js"), "/dashboard");
        assert_eq!(route_of("/dashboard/stats.js"), "/dashboard");
        assert_eq!(route_of("/api/v1/openapi.json"), "/api/v1/openapi.json");
        assert_eq!(route_of("/api/v1/job/"), "other");
        assert_eq!(route_of("/etc/passwd"), "other");
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotOpLabels {
    op: &'static str,
}

/// The index snapshots' gauges: the newest one's age, size and offset, and how long the
/// last write and the load at start-up took.
struct SnapshotMetrics {
    age: Gauge<f64, AtomicU64>,
    bytes: Gauge,
    offset: Gauge,
    duration: Family<SnapshotOpLabels, Gauge<f64, AtomicU64>>,
    /// When the newest snapshot was made (ms since the epoch; 0 = none yet).
    made_ms: std::sync::atomic::AtomicU64,
}

impl SnapshotMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = SnapshotMetrics {
            age: Gauge::default(),
            bytes: Gauge::default(),
            offset: Gauge::default(),
            duration: Family::default(),
            made_ms: Default::default(),
        };
        r.register_with_unit(
            "imagejobs_index_snapshot_age",
            "Age of the newest index snapshot this ingress wrote or loaded",
            Unit::Seconds,
            m.age.clone(),
        );
        r.register_with_unit(
            "imagejobs_index_snapshot_size",
            "Size of the newest index snapshot",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register(
            "imagejobs_index_snapshot_offset",
            "Events stream offset the newest index snapshot covers",
            m.offset.clone(),
        );
        r.register_with_unit(
            "imagejobs_index_snapshot_duration",
            "How long the last index snapshot write, and the load at start-up, took",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    fn record(&self, info: &SnapshotInfo, op: &'static str, secs: f64) {
        self.bytes
            .set(i64::try_from(info.bytes).unwrap_or(i64::MAX));
        self.offset.set(info.offset);
        self.made_ms
            .store(info.written_at_ms, std::sync::atomic::Ordering::Relaxed);
        self.duration
            .get_or_create(&SnapshotOpLabels { op })
            .set(secs);
        self.refresh_age();
    }

    fn refresh_age(&self) {
        let made = self.made_ms.load(std::sync::atomic::Ordering::Relaxed);
        if made == 0 {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.age.set(now.saturating_sub(made) as f64 / 1000.0);
    }
}
