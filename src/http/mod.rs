//! The ingress's HTTP API (DESIGN §3): routes, shared state and the error type.

pub mod error;
mod jobs;
mod submit;
pub mod upload;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::auth::Verifier;
use crate::broker::{Broker, PublishError};
use crate::idempotency::IdempotencyCache;
use crate::index::JobIndex;
use crate::job::{JobMeta, Status, StatusEvent};
use crate::ratelimit::TenantLimiter;
use crate::topology::SUBMIT_KEY;
use error::ApiError;

/// What every handler shares; a cheap clone of one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub broker: Broker,
    pub verifier: Verifier,
    /// Largest image accepted, in bytes (`MAX_BODY_BYTES`).
    pub max_body: usize,
    pub limiter: Option<TenantLimiter>,
    pub idempotency: IdempotencyCache,
    pub index: JobIndex,
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

    /// Publishes a job, then its QUEUED event. `Ok` means the broker confirmed the job into
    /// the durable work queue; the event is best effort (the job is safe without it and
    /// this replica's index has it either way).
    pub async fn enqueue(&self, meta: &JobMeta, body: &[u8]) -> Result<(), PublishError> {
        let topo = self.broker.topology();
        self.broker
            .publish(
                &topo.jobs_exchange(),
                SUBMIT_KEY,
                body,
                meta.to_properties(),
            )
            .await
            .inspect_err(
                |e| tracing::warn!(job_id = %meta.id, error = %e, "job not accepted by the broker"),
            )?;
        let event = StatusEvent::new(meta, Status::Queued);
        self.index.apply(&event);
        // The 202 waits for this confirm too (a replica restarted right after the 202 must
        // find the job in the stream), but a failure only costs the event, not the job.
        if let Err(e) = self.broker.publish_event(&event).await {
            tracing::warn!(job_id = %meta.id, error = %e, "QUEUED event not published");
        }
        tracing::debug!(job_id = %meta.id, tenant_id = meta.tenant_id.0, size = body.len(), "job queued");
        Ok(())
    }
}

/// The whole API, ready to serve or to drive with `oneshot` in tests.
pub fn router(state: AppState) -> Router {
    // Bodies are read by the submit handler itself, with its own limit (MAX_BODY_BYTES,
    // or 4/3 of it for base64 JSON), so axum's 2 MB default must not cut them first.
    let submit_route = post(submit::submit).layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/api/v1/job", submit_route)
        .route("/api/v1/job/{id}", get(jobs::job))
        .route("/api/v1/job/{id}/status", get(jobs::status))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async {
            ApiError::bad_request("method not allowed", "see the API in the README")
        })
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn ready(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> (StatusCode, &'static str) {
    if !app.broker.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")
    } else if !app.index.caught_up() {
        (StatusCode::SERVICE_UNAVAILABLE, "job index catching up")
    } else {
        (StatusCode::OK, "ready")
    }
}
