//! What the stubs have seen: requests per endpoint (total, in flight now, most in flight at
//! once), blob PUTs and worker POSTs per id, and how jobs ended.
//!
//! Tests of the pipeline read these to check its promises from the outside: "at most N calls
//! in flight" (prefetch), "the same job id was PUT twice and the worker still ran it once"
//! (idempotent repeats). In-flight counts cover the whole request including the injected
//! latency, because that is the time a caller's slot is busy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use crate::faults::INTERNAL_HEADER;

/// Most distinct ids whose blob PUTs (and, separately, worker POSTs) are counted; beyond it
/// new ids are not tracked, so a benchmark of millions of jobs cannot grow these maps forever.
pub const MAX_TRACKED_IDS: usize = 1_000_000;

/// The API endpoints the stubs count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `PUT /api/v1/blob/{id}`
    BlobPut,
    /// `POST /api/v1/blob`
    BlobPost,
    /// `GET /api/v1/blob/{id}`
    BlobGet,
    /// `POST /api/v1/job`
    JobPost,
    /// `GET /api/v1/job/{id}/status`
    JobStatus,
}

impl Endpoint {
    /// Every endpoint, in a fixed order.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::BlobPut,
        Endpoint::BlobPost,
        Endpoint::BlobGet,
        Endpoint::JobPost,
        Endpoint::JobStatus,
    ];

    /// The key of this endpoint in [`StatsSnapshot::endpoints`].
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::BlobPut => "blob_put",
            Endpoint::BlobPost => "blob_post",
            Endpoint::BlobGet => "blob_get",
            Endpoint::JobPost => "job_post",
            Endpoint::JobStatus => "job_status",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The endpoint a routed request belongs to, from its method and route template.
    fn classify(method: &Method, route: &str) -> Option<Endpoint> {
        match (method.as_str(), route) {
            ("PUT", "/api/v1/blob/{id}") => Some(Endpoint::BlobPut),
            ("POST", "/api/v1/blob") => Some(Endpoint::BlobPost),
            ("GET", "/api/v1/blob/{id}") => Some(Endpoint::BlobGet),
            ("POST", "/api/v1/job") => Some(Endpoint::JobPost),
            ("GET", "/api/v1/job/{id}/status") => Some(Endpoint::JobStatus),
            _ => None,
        }
    }
}

/// Request counts of one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Requests received since start (including those answered with an injected 503).
    pub requests: u64,
    /// Requests being served right now (including their injected latency).
    pub in_flight: u64,
    /// Most requests in flight at once since start or the last
    /// [`reset_max_in_flight`](crate::Stubs::reset_max_in_flight).
    pub max_in_flight: u64,
}

/// A copy of the stubs' counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Per endpoint, keyed by [`Endpoint::as_str`]; every endpoint is present.
    pub endpoints: BTreeMap<String, EndpointStats>,
    /// Calls the worker made to this process's own blob service (fetching images, storing
    /// thumbnails); they are not in `endpoints` and get no injected faults.
    pub internal_requests: u64,
    /// Blob PUTs that reached the handler, per blob id (thumbnails are `{job id}.thumb`).
    /// Requests answered with an injected 503 are not here.
    pub blob_puts: BTreeMap<String, u64>,
    /// Worker `POST /job` requests that reached the handler with a readable body, per job id.
    /// Requests answered with an injected 503 are not here.
    pub job_posts: BTreeMap<String, u64>,
    /// Ids not counted in `blob_puts`/`job_posts` because [`MAX_TRACKED_IDS`] was reached.
    pub untracked_ids: u64,
    /// Worker jobs started (repeated POSTs of a known id start nothing).
    pub jobs_started: u64,
    /// Worker jobs that ended SUCCESS.
    pub jobs_succeeded: u64,
    /// Worker jobs that ended FAILED.
    pub jobs_failed: u64,
    /// Blobs held now.
    pub blobs_stored: u64,
    /// Bytes of blob content held now.
    pub blob_bytes: u64,
    /// Blobs evicted to stay within capacity since start.
    pub blobs_evicted: u64,
}

impl StatsSnapshot {
    /// Counts of one endpoint.
    pub fn endpoint(&self, endpoint: Endpoint) -> EndpointStats {
        self.endpoints
            .get(endpoint.as_str())
            .copied()
            .unwrap_or_default()
    }

    /// Blob PUTs seen for this blob id.
    pub fn blob_puts_for(&self, id: &str) -> u64 {
        self.blob_puts.get(id).copied().unwrap_or(0)
    }

    /// Worker POSTs seen for this job id.
    pub fn job_posts_for(&self, id: &str) -> u64 {
        self.job_posts.get(id).copied().unwrap_or(0)
    }
}

/// The live counters; a cheap `Clone` handle shared by both services.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    endpoints: [EndpointCounters; Endpoint::ALL.len()],
    internal_requests: AtomicU64,
    jobs_started: AtomicU64,
    jobs_succeeded: AtomicU64,
    jobs_failed: AtomicU64,
    untracked_ids: AtomicU64,
    ids: Mutex<IdCounts>,
    /// Requests by endpoint, for `/metrics` (`imagejobs_stub_requests_total`).
    requests: Family<EndpointLabels, Counter>,
    /// The last [`MAX_TRACES`] `traceparent` trace ids received, with their endpoint.
    traces: Mutex<VecDeque<(Endpoint, String)>>,
}

/// Trace ids kept for [`Stats::trace_ids`]: enough for a test, bounded for a benchmark.
pub const MAX_TRACES: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Debug, Default)]
struct EndpointCounters {
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

#[derive(Debug, Default)]
struct IdCounts {
    blob_puts: HashMap<String, u64>,
    job_posts: HashMap<String, u64>,
}

/// How a worker job ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobEnd {
    Succeeded,
    Failed,
}

impl Stats {
    /// Counters without the blob store's figures, which [`crate::Stubs`] adds; the per-id maps
    /// only when asked for, as they can be large.
    pub(crate) fn snapshot(&self, with_ids: bool) -> StatsSnapshot {
        let inner = &self.inner;
        let endpoints = Endpoint::ALL
            .iter()
            .map(|&endpoint| {
                let c = &inner.endpoints[endpoint.index()];
                let stats = EndpointStats {
                    requests: c.requests.load(Ordering::Relaxed),
                    in_flight: c.in_flight.load(Ordering::Relaxed),
                    max_in_flight: c.max_in_flight.load(Ordering::Relaxed),
                };
                (endpoint.as_str().to_owned(), stats)
            })
            .collect();
        let (blob_puts, job_posts) = if with_ids {
            let ids = self.ids();
            (copy(&ids.blob_puts), copy(&ids.job_posts))
        } else {
            Default::default()
        };
        StatsSnapshot {
            endpoints,
            internal_requests: inner.internal_requests.load(Ordering::Relaxed),
            blob_puts,
            job_posts,
            untracked_ids: inner.untracked_ids.load(Ordering::Relaxed),
            jobs_started: inner.jobs_started.load(Ordering::Relaxed),
            jobs_succeeded: inner.jobs_succeeded.load(Ordering::Relaxed),
            jobs_failed: inner.jobs_failed.load(Ordering::Relaxed),
            ..StatsSnapshot::default()
        }
    }

    /// Lowers every endpoint's high-water mark to what is in flight now, so a test can measure
    /// concurrency of one phase only.
    pub(crate) fn reset_max_in_flight(&self) {
        for c in &self.inner.endpoints {
            c.max_in_flight
                .store(c.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub(crate) fn record_blob_put(&self, id: &str) {
        let mut ids = self.ids();
        let IdCounts { blob_puts, .. } = &mut *ids;
        self.bump(blob_puts, id);
    }

    pub(crate) fn record_job_post(&self, id: &str) {
        let mut ids = self.ids();
        let IdCounts { job_posts, .. } = &mut *ids;
        self.bump(job_posts, id);
    }

    pub(crate) fn record_job_started(&self) {
        self.inner.jobs_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_job_end(&self, end: JobEnd) {
        let counter = match end {
            JobEnd::Succeeded => &self.inner.jobs_succeeded,
            JobEnd::Failed => &self.inner.jobs_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn bump(&self, map: &mut HashMap<String, u64>, id: &str) {
        if let Some(count) = map.get_mut(id) {
            *count += 1;
        } else if map.len() < MAX_TRACKED_IDS {
            map.insert(id.to_owned(), 1);
        } else {
            self.inner.untracked_ids.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request counters, for the stubs' `/metrics`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "imagejobs_stub_requests",
            "API requests the stubs received, by endpoint (injected 503s included)",
            self.inner.requests.clone(),
        );
    }

    /// The trace ids of the `traceparent` headers received lately, per endpoint
    /// (`blob_put`, `job_post`...), oldest first.
    pub fn trace_ids(&self) -> Vec<(String, String)> {
        let traces = self.inner.traces.lock().unwrap_or_else(|p| p.into_inner());
        traces
            .iter()
            .map(|(e, t)| (e.as_str().to_owned(), t.clone()))
            .collect()
    }

    fn record_trace(&self, endpoint: Endpoint, trace_id: String) {
        let mut traces = self.inner.traces.lock().unwrap_or_else(|p| p.into_inner());
        if traces.len() == MAX_TRACES {
            traces.pop_front();
        }
        traces.push_back((endpoint, trace_id));
    }

    /// The per-id maps; a panic elsewhere while holding the lock leaves plain counters, which
    /// are still worth reading, so a poisoned lock is simply taken over.
    fn ids(&self) -> MutexGuard<'_, IdCounts> {
        self.inner
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a request as started; the returned guard counts it as finished when dropped,
    /// also when the caller goes away mid-request and the handler future is dropped.
    fn enter(&self, endpoint: Endpoint) -> InFlight {
        self.inner
            .requests
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.as_str(),
            })
            .inc();
        let c = &self.inner.endpoints[endpoint.index()];
        c.requests.fetch_add(1, Ordering::Relaxed);
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
            endpoint,
        }
    }
}

fn copy(counts: &HashMap<String, u64>) -> BTreeMap<String, u64> {
    counts.iter().map(|(id, n)| (id.clone(), *n)).collect()
}

/// Counts one request as in flight while alive.
struct InFlight {
    stats: Stats,
    endpoint: Endpoint,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.inner.endpoints[self.endpoint.index()]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware around every API route (outside the fault injection, so in-flight time
/// includes the injected latency). The worker's own calls are counted apart.
pub(crate) async fn track(State(stats): State<Stats>, request: Request, next: Next) -> Response {
    if request.headers().contains_key(INTERNAL_HEADER) {
        stats
            .inner
            .internal_requests
            .fetch_add(1, Ordering::Relaxed);
        return next.run(request).await;
    }
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|route| Endpoint::classify(request.method(), route.as_str()));
    let _in_flight = endpoint.map(|endpoint| stats.enter(endpoint));
    let trace = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_of);
    if let Some(endpoint) = endpoint {
        let trace_id = trace.map(str::to_owned);
        tracing::info!(
            endpoint = endpoint.as_str(),
            path = request.uri().path(),
            trace_id = trace_id.as_deref().unwrap_or("-"),
            "request"
        );
        if let Some(t) = trace_id {
            stats.record_trace(endpoint, t);
        }
    }
    next.run(request).await
}

/// The trace id of a W3C `traceparent` (`00-{32 hex}-{16 hex}-{2 hex}`), as a real service's
/// tracing library would read it; `None` when the header is not of that shape.
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (_, trace, span, _) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, n| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex(trace, 32) && hex(span, 16) && trace.bytes().any(|b| b != b'0')).then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_rises_and_falls_and_the_maximum_stays() {
        let stats = Stats::default();
        let a = stats.enter(Endpoint::JobPost);
        let b = stats.enter(Endpoint::JobPost);
        drop(a);
        let snapshot = stats.snapshot(true);
        let job_post = snapshot.endpoint(Endpoint::JobPost);
        assert_eq!(job_post.requests, 2);
        assert_eq!(job_post.in_flight, 1);
        assert_eq!(job_post.max_in_flight, 2);
        assert_eq!(
            snapshot.endpoint(Endpoint::BlobGet),
            EndpointStats::default()
        );

        stats.reset_max_in_flight();
        assert_eq!(
            stats
                .snapshot(true)
                .endpoint(Endpoint::JobPost)
                .max_in_flight,
            1
        );
        drop(b);
        assert_eq!(
            stats.snapshot(true).endpoint(Endpoint::JobPost).in_flight,
            0
        );
    }

    #[test]
    fn ids_are_counted_per_id() {
        let stats = Stats::default();
        stats.record_blob_put("a");
        stats.record_blob_put("a");
        stats.record_job_post("a");
        let snapshot = stats.snapshot(true);
        assert_eq!(snapshot.blob_puts_for("a"), 2);
        assert_eq!(snapshot.job_posts_for("a"), 1);
        assert_eq!(snapshot.job_posts_for("b"), 0);
    }

    #[test]
    fn routes_map_to_endpoints() {
        assert_eq!(
            Endpoint::classify(&Method::PUT, "/api/v1/blob/{id}"),
            Some(Endpoint::BlobPut)
        );
        assert_eq!(
            Endpoint::classify(&Method::GET, "/api/v1/job/{id}/status"),
            Some(Endpoint::JobStatus)
        );
        assert_eq!(Endpoint::classify(&Method::GET, "/ping"), None);
    }
}
