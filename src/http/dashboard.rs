//! `GET /`: the dashboard, files compiled into the binary (no web server or Node build to
//! run it), served with a strict content security policy; and `GET /api/v1/stats`, the
//! figures it draws (queue depth, the tenant's recent throughput).

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::openapi::{ErrorBody, Stats};
use super::state::AppState;
use crate::auth::Caller;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
const FAVICON_SVG: &str = include_str!("dashboard/favicon.svg");

/// The dashboard's content security policy: scripts and styles from this origin only, and
/// no framing, since the page holds a token. With `RESULT_REDIRECT` the thumbnails are
/// images of wherever results are served (`result_origin`, the blob service, or any
/// `https:` CDN); `connect-src` stays `'self'`, so the token can go nowhere else.
pub fn csp(result_redirect: bool, result_origin: Option<&str>) -> HeaderValue {
    let images = match (result_redirect, result_origin) {
        (false, _) => String::new(),
        (true, Some(origin)) => format!(" https: {origin}"),
        (true, None) => " https:".to_owned(),
    };
    let policy = format!(
        "default-src 'self'; img-src 'self' blob: data:{images}; connect-src 'self'; \
         style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"))
}

fn file(app: &AppState, content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, app.dashboard_csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The dashboard page (it asks for a token and keeps it in the tab).
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The dashboard page (it asks for a token and keeps it in the tab)", content_type = "text/html; charset=utf-8", body = String)))]
pub async fn index(State(app): State<AppState>) -> Response {
    file(&app, "text/html; charset=utf-8", INDEX_HTML)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/dashboard/app.js", tag = "operations",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript; charset=utf-8", body = String)))]
pub async fn app_js(State(app): State<AppState>) -> Response {
    file(&app, "text/javascript; charset=utf-8", APP_JS)
}

/// The dashboard's style sheet.
#[utoipa::path(get, path = "/dashboard/style.css", tag = "operations",
    responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css; charset=utf-8", body = String)))]
pub async fn style_css(State(app): State<AppState>) -> Response {
    file(&app, "text/css; charset=utf-8", STYLE_CSS)
}

/// The dashboard's icon.
#[utoipa::path(get, path = "/dashboard/favicon.svg", tag = "operations",
    responses((status = 200, description = "The dashboard's icon", content_type = "image/svg+xml", body = String)))]
pub async fn favicon(State(app): State<AppState>) -> Response {
    file(&app, "image/svg+xml", FAVICON_SVG)
}

/// The dashboard's figures for the caller: the work queue's depth, its consumers and
/// lanes, the caller's backlog and throughput.
#[utoipa::path(get, path = "/api/v1/stats", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "The figures", body = Stats), (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn stats(State(app): State<AppState>, caller: Caller) -> Result<Json<Stats>, ApiError> {
    let depth = app.queue_depth.get(&app.broker).await;
    let (completed, failed) = app.index.throughput(caller.tenant_id);
    Ok(Json(Stats {
        queue_depth: depth.map(|d| d.0),
        consumers: depth.map(|d| d.1),
        lanes: app.broker.topology().lanes(),
        backlog: app.index.backlog(caller.tenant_id),
        bucket_secs: crate::index::BUCKET_SECS,
        completed,
        failed,
    }))
}
