//! `GET /api/v1/job/{id}/result`: the job's result (the worker's thumbnail) streamed from
//! the blob service to the job's own tenant, so that browsers and clients never reach the
//! blob service themselves.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::error::ApiError;
use super::jobs::lookup;
use super::state::AppState;
use imagejobs_core::status::Status;

/// The HTTP client of results, and where relative locations live.
pub struct Results {
    http: reqwest::Client,
    blob_url: String,
}

impl Results {
    pub fn new(blob_url: &reqwest::Url, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        imagejobs_core::tls::install_crypto();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        Ok(Results {
            http: builder.build()?,
            blob_url: blob_url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    /// `location` when it is an absolute URL, else the blob service's URL + it.
    fn url_of(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}/{}", self.blob_url, location.trim_start_matches('/'))
        }
    }
}

pub async fn result(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (_, job) = lookup(&app, &headers, &id)?;
    let location = match (&job.status, &job.payload_location) {
        (Status::Success, Some(location)) => location,
        _ => return Err(ApiError::NoResult),
    };
    let url = app.results.url_of(location);
    let resp = app.results.http.get(&url).send().await.map_err(|e| {
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
