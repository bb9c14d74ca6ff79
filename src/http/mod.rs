//! The ingress's HTTP API (docs/http-api.md): routes, shared state and the error type.

mod cancel;
pub mod dashboard;
pub mod error;
pub mod extract;
mod jobs;
mod live;
pub mod openapi;
pub mod result;
mod state;
mod submit;
pub mod upload;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use error::ApiError;
pub use state::{AppState, Shared};

/// The whole API, ready to serve or to drive with `oneshot` in tests.
pub fn router(state: AppState) -> Router {
    // Bodies are read by the submit handler itself, with its own limit (MAX_BODY_BYTES,
    // or 4/3 of it for base64 JSON), so axum's 2 MB default must not cut them first.
    let submit_route = post(submit::submit).layer(DefaultBodyLimit::disable());
    let api = Router::new()
        .route("/ping", get(ping))
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(scrape))
        .route("/api/v1/job", submit_route)
        .route(
            "/api/v1/job/{id}",
            get(jobs::job).merge(delete(cancel::cancel)),
        )
        .route("/api/v1/job/{id}/status", get(jobs::status))
        .route("/api/v1/job/{id}/events", get(live::job_events))
        .route("/api/v1/job/{id}/result", get(result::result))
        .route("/api/v1/jobs", get(jobs::list))
        .route("/api/v1/jobs/events", get(live::tenant_events))
        .route("/api/v1/stats", get(dashboard::stats))
        .route("/", get(dashboard::index))
        .route("/dashboard/main.js", get(dashboard::main_js))
        .route("/dashboard/api.js", get(dashboard::api_js))
        .route("/dashboard/ui.js", get(dashboard::ui_js))
        .route("/dashboard/jobs.js", get(dashboard::jobs_js))
        .route("/dashboard/uploads.js", get(dashboard::uploads_js))
        .route("/dashboard/live.js", get(dashboard::live_js))
        .route("/dashboard/stats.js", get(dashboard::stats_js))
        .route("/dashboard/style.css", get(dashboard::style_css))
        .route("/dashboard/favicon.svg", get(dashboard::favicon))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state);
    // Around the whole router: axum adds `Allow` to a 405 outside the routes' own layers.
    Router::new()
        .fallback_service(api)
        .layer(axum::middleware::map_response(method_not_allowed))
        .layer(TraceLayer::new_for_http())
}

/// axum answers a known route asked with another method 405 with an `Allow` header and
/// an empty body; this gives it the API's error body and keeps the header.
async fn method_not_allowed(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED {
        return resp;
    }
    let allow = resp.headers().get(axum::http::header::ALLOW).cloned();
    let mut out = ApiError::MethodNotAllowed {
        allowed: allow
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    }
    .into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(axum::http::header::ALLOW, allow);
    }
    out
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn scrape(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = app.metrics.render(&app.index, &app.broker);
    let content_type = imagejobs_core::metrics::CONTENT_TYPE;
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Seed compatible liveness.
#[utoipa::path(get, path = "/ping", tag = "operations",
    responses((status = 200, description = "Always", content_type = "text/plain", body = String, example = "pong")))]
async fn ping() -> &'static str {
    "pong"
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Always", content_type = "text/plain", body = String, example = "ok")))]
async fn healthz() -> &'static str {
    "ok"
}

/// 200 only with a live connection that the broker does not block, the topology
/// declared and the index caught up. QUEUED events waiting in the outbox are shown.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", content_type = "text/plain", body = String),
    (status = 503, description = "Not ready, and why", content_type = "text/plain", body = String)))]
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
        (StatusCode::SERVICE_UNAVAILABLE, app.progress.describe())
    } else {
        (StatusCode::OK, "ready".to_owned())
    };
    let pending = app.submitter.outbox.pending();
    if pending > 0 {
        text.push_str(&format!("; {pending} QUEUED events waiting for the broker"));
    }
    (code, text)
}
