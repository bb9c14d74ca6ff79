//! `GET /api/v1/job/{id}/result`: the job's result (the worker's thumbnail) streamed from
//! the blob service to the job's own tenant, so that browsers and clients never reach the
//! blob service themselves; or, with `RESULT_REDIRECT=true`, a 307 to the result's absolute
//! URL, so that a CDN or object store in front serves the bytes (docs/http-api.md, "Images
//! by reference").

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

use super::error::ApiError;
use super::extract::MyJob;
use super::openapi::ErrorBody;
use super::state::AppState;
use imagejobs_core::status::Status;

/// The result of a job that succeeded (the worker's output, e.g. a thumbnail), streamed
/// from the blob service with its content type; or, with RESULT_REDIRECT, a 307 to it.
#[utoipa::path(get, path = "/api/v1/job/{id}/result", tag = "jobs", security(("bearer" = [])), params(("id" = String, Path, description = "The job's id (a UUID)")),
    responses((status = 200, description = "The result", content_type = "image/*", body = Vec<u8>),
        (status = 307, description = "RESULT_REDIRECT: the result is there", headers(("Location" = String))),
        (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 404, description = "No such job, another tenant's, or one that has not succeeded", body = ErrorBody),
        (status = 502, description = "The blob service failed to hand over the result", body = ErrorBody), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn result(
    State(app): State<AppState>,
    MyJob { job, .. }: MyJob,
) -> Result<Response, ApiError> {
    let location = match (&job.status, &job.payload_location) {
        (Status::Success, Some(location)) => location,
        _ => return Err(ApiError::NoResult),
    };
    let url = app.blobs.url_of(location);
    if app.result_redirect {
        return redirect(&url);
    }
    let resp = app.blobs.fetch(&url).await.map_err(|e| {
        tracing::warn!(job_id = %job.id, error = %e, "could not fetch a result");
        ApiError::BadGateway("the blob service did not answer; retry later".into())
    })?;
    if !resp.status().is_success() {
        tracing::warn!(job_id = %job.id, status = %resp.status(), "the blob service refused a result");
        return Err(ApiError::BadGateway(format!(
            "the blob service answered {} for the result",
            resp.status().as_u16()
        )));
    }
    // Only images are served as what they say they are: anything else on this origin
    // could be a page running with the dashboard's rights.
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.starts_with("image/") && !t.contains("svg"))
        .map(str::to_owned);
    let mut out = Response::builder()
        .status(StatusCode::OK)
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        .header(header::VARY, "authorization")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if let Some(len) = resp.headers().get(header::CONTENT_LENGTH).cloned() {
        out = out.header(header::CONTENT_LENGTH, len);
    }
    out = match content_type {
        Some(t) => out.header(header::CONTENT_TYPE, t),
        None => out
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_DISPOSITION, "attachment"),
    };
    // Only a header the blob service sent could be invalid; that is its failure.
    out.body(Body::from_stream(resp.bytes_stream()))
        .map_err(|_| ApiError::BadGateway("the result could not be relayed".into()))
}

/// A 307 to the result's URL. The answer is per tenant (the route checks the token), so
/// caches may keep it only privately.
fn redirect(url: &str) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(url)
        .map_err(|_| ApiError::BadGateway("the result's location is not a valid URL".into()))?;
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, location)
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        .header(header::VARY, "authorization")
        .body(Body::empty())
        .map_err(|_| ApiError::BadGateway("the result could not be redirected".into()))
}
