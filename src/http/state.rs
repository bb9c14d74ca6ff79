//! What every handler shares.

use std::sync::Arc;

use imagejobs_core::broker::Broker;
use imagejobs_core::events::EventSink;

use crate::auth::Verifier;
use crate::blob::BlobService;
use crate::index::JobIndex;
use crate::metrics::IngressMetrics;
use crate::ratelimit::TenantLimiter;
use crate::submitter::Submitter;

/// What every handler shares; a cheap clone of one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub broker: Broker,
    pub events: EventSink,
    pub verifier: Verifier,
    /// Largest image accepted, in bytes (`MAX_BODY_BYTES`).
    pub max_body: usize,
    /// How long a client may take to send a submit's body.
    pub body_timeout: std::time::Duration,
    pub limiter: Option<TenantLimiter>,
    /// Accepts jobs: the claim check, the confirmed publish, the QUEUED event.
    pub submitter: Submitter,
    pub index: JobIndex,
    /// What the index follower is doing (`/readyz`).
    pub progress: Arc<crate::index::follow::Progress>,
    pub metrics: Arc<IngressMetrics>,
    /// Where results are fetched (`GET /api/v1/job/{id}/result`).
    pub blobs: BlobService,
    /// Answer the result route with a 307 to the result's URL instead of streaming it.
    pub result_redirect: bool,
    /// The dashboard's Content-Security-Policy (`dashboard::csp`).
    pub dashboard_csp: axum::http::HeaderValue,
    /// How often an idle event stream gets a comment line.
    pub sse_heartbeat: std::time::Duration,
    /// One permit per event stream open (`MAX_WATCHERS`).
    pub watchers: Arc<tokio::sync::Semaphore>,
    /// The dashboard's cached queue depth.
    pub queue_depth: crate::queue_depth::QueueDepth,
    /// Cancelled at shutdown: event streams end so that their clients move on.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}
