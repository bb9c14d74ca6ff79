//! `POST /api/v1/job`: authenticate, read and check the image, publish it with a
//! confirm, answer 202.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use super::error::ApiError;
use super::state::AppState;
use super::upload::{self, BodyKind};
use crate::idempotency;
use imagejobs_core::ids::JobId;
use imagejobs_core::message::JobMeta;
use imagejobs_core::trace::TraceContext;
use tracing::Instrument;

pub async fn submit(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = app.verifier.verify_headers(&headers)?;
    if let Some(limiter) = &app.limiter {
        limiter
            .check(caller.tenant_id)
            .map_err(|wait| ApiError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            })?;
    }
    let content_type = match headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return Err(ApiError::Unsupported("unreadable Content-Type".into())),
    };
    let kind = BodyKind::of(content_type)?;
    let key = match headers.get("idempotency-key").map(HeaderValue::to_str) {
        None => None,
        Some(Ok(k)) if idempotency::valid_key(k) => Some(k.to_owned()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid Idempotency-Key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ))
        }
    };

    let max = app.max_body;
    let limit = kind.body_limit(max);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit: max });
    }
    let bytes = tokio::time::timeout(app.body_timeout, read_body(body, limit, max))
        .await
        .map_err(|_| ApiError::Timeout {
            what: "request body",
        })??;
    let upload = match kind.resolve(&bytes) {
        BodyKind::Json | BodyKind::Sniff => upload::from_json(&bytes, max)?,
        BodyKind::Raw => {
            let md5 = headers
                .get("content-md5")
                .map(|v| v.to_str().unwrap_or("?"));
            upload::from_raw(bytes, md5, max)?
        }
    };

    let id = match &key {
        Some(k) => JobId::for_idempotency_key(caller.tenant_id, k),
        None => JobId::new(),
    };
    let meta = JobMeta {
        id,
        tenant_id: caller.tenant_id,
        client_id: caller.client_id,
        content_type: Some(upload.mime.to_owned()),
        md5: upload.md5,
        attempt: 1,
        payload_location: None,
        payload_size: Some(upload.bytes.len() as u64),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = TraceContext::continue_or_start(header("traceparent"), header("tracestate"));
    let span = tracing::info_span!(
        "submit",
        trace_id = %trace.parent.trace_hex(),
        job_id = %id,
        tenant_id = caller.tenant_id.0,
    );
    imagejobs_core::telemetry::link(&span, &trace.parent);
    publish(&app, key, &meta, &upload.bytes, &trace)
        .instrument(span.clone())
        .await?;
    tracing::info!(parent: &span, size = upload.bytes.len(), "job accepted");
    Ok(accepted(id))
}

/// Publishes the job once: an Idempotency-Key already seen publishes nothing again.
async fn publish(
    app: &AppState,
    key: Option<String>,
    meta: &JobMeta,
    bytes: &[u8],
    trace: &TraceContext,
) -> Result<(), ApiError> {
    let (id, tenant) = (meta.id, meta.tenant_id);
    match key {
        // A job the index knows was published before (here or by another replica).
        Some(_) if app.index.get(id).is_some() => app.metrics.idempotency_hit(),
        Some(k) => {
            let ran = AtomicBool::new(false);
            let publish = async {
                ran.store(true, Ordering::Relaxed);
                app.enqueue(meta, bytes, trace).await
            };
            app.idempotency
                .publish_once(tenant, k, publish)
                .await
                .map_err(|e| ApiError::from(e.as_ref()))?;
            if !ran.load(Ordering::Relaxed) {
                app.metrics.idempotency_hit();
            }
        }
        None => app.enqueue(meta, bytes, trace).await?,
    }
    Ok(())
}

fn accepted(id: JobId) -> Response {
    let location = format!("/api/v1/job/{id}");
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": "QUEUED"})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Reads at most `limit` bytes. A body that arrives in one piece is not copied.
async fn read_body(body: Body, limit: usize, max_image: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::TooLarge { limit: max_image })
        }
        Err(e) => Err(ApiError::bad_request(
            "could not read the request body",
            e.to_string(),
        )),
    }
}
