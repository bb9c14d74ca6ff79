//! The ingress's HTTP API (DESIGN §3): routes, shared state and the error type.

pub mod error;
mod jobs;
mod state;
mod submit;
pub mod upload;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use error::ApiError;
pub use state::{AppState, Shared};

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

/// 200 only with a live connection that the broker does not block, the topology
/// declared and the index caught up. QUEUED events waiting in the outbox are shown.
async fn ready(axum::extract::State(app): axum::extract::State<AppState>) -> (StatusCode, String) {
    let (code, mut text) = if !app.broker.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "broker unavailable".to_owned(),
        )
    } else if let Some(reason) = app.broker.blocked() {
        let text = format!("the broker blocks publishers (resource alarm): {reason}");
        (StatusCode::SERVICE_UNAVAILABLE, text)
    } else if !app.index.caught_up() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "job index catching up".to_owned(),
        )
    } else {
        (StatusCode::OK, "ready".to_owned())
    };
    let pending = app.outbox.pending();
    if pending > 0 {
        text.push_str(&format!("; {pending} QUEUED events waiting for the broker"));
    }
    (code, text)
}
