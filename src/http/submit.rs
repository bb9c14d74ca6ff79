//! `POST /api/v1/job`: authenticate, read and check the image, hand it to the
//! [`Submitter`](crate::submitter::Submitter), answer 202.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::error::ApiError;
use super::openapi::{Accepted, ErrorBody};
use super::state::AppState;
use super::upload::{self, BodyKind};
use crate::auth::Caller;
use crate::idempotency;
use crate::submitter::{Carriage, Submission};
use imagejobs_core::ids::{JobId, Md5, Md5Stream};
use imagejobs_core::trace::TraceContext;
use tracing::Instrument;

/// Submits an image: as JSON (`encoding`, `md5`, `content` in base64) or as the raw image
/// (`Content-Type: image/...`, optionally `Content-MD5`). 202 only once the broker confirmed
/// the job; an image of `CLAIM_CHECK_MIN_BYTES` or more is stored in the blob service first.
#[utoipa::path(post, path = "/api/v1/job", tag = "jobs", security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same tenant returns the same job (1 to 255 visible ASCII characters)"),
        ("Content-MD5" = Option<String>, Header, description = "RFC 1864: base64 of the raw image's MD5"),
    ),
    request_body(description = "The image", content(
        (crate::http::openapi::SubmitJson = "application/json"),
        (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/gif"),
        (Vec<u8> = "image/webp"), (Vec<u8> = "image/bmp"), (Vec<u8> = "image/tiff"))),
    responses(
        (status = 202, description = "Accepted: the job is durable", body = Accepted,
            headers(("Location" = String, description = "/api/v1/job/{id}"))),
        (status = 400, description = "Bad JSON, an unknown encoding, bad base64, an MD5 that does not match, a bad Idempotency-Key or reference", body = ErrorBody), (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 408, description = "The body did not arrive within BODY_TIMEOUT_SECS", body = ErrorBody),
        (status = 413, description = "Over MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Not an image (PNG, JPEG, GIF, WebP, BMP, TIFF), or an unknown Content-Type", body = ErrorBody),
        (status = 429, description = "The tenant is over TENANT_RATE", body = ErrorBody, headers(("Retry-After" = u32))),
        (status = 502, description = "The blob service refused the image", body = ErrorBody),
        (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn submit(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
    // A raw body's MD5 is computed as it arrives when it will be needed: to check a
    // Content-MD5, or for the `md5` header of an image that may go by reference. (A JSON
    // body's image exists only once decoded; a `Sniff` body may turn out raw.)
    let may_be_reference = declared
        .is_none_or(|len| app.submitter.claim_check.carriage(len.min(max)) == Carriage::Reference);
    let hash = kind != BodyKind::Json && (headers.contains_key("content-md5") || may_be_reference);
    let read = read_body(body, limit, max, declared, hash);
    let (bytes, streamed) = tokio::time::timeout(app.body_timeout, read)
        .await
        .map_err(|_| ApiError::Timeout {
            what: "request body",
        })??;
    let image = match kind.resolve(&bytes) {
        BodyKind::Json | BodyKind::Sniff => upload::from_json(&bytes, max)?,
        BodyKind::Raw => {
            let md5 = headers
                .get("content-md5")
                .map(|v| v.to_str().unwrap_or("?"));
            upload::from_raw(bytes, md5, streamed, max)?
        }
    };

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = TraceContext::continue_or_start(header("traceparent"), header("tracestate"));
    let span = tracing::info_span!(
        "submit",
        trace_id = %trace.parent.trace_hex(),
        job_id = tracing::field::Empty,
        tenant_id = caller.tenant_id.0,
    );
    imagejobs_core::telemetry::link(&span, &trace.parent);
    let size = image.bytes.len();
    let submission = Submission {
        caller,
        image,
        key,
        trace,
    };
    let (id, carriage) = app
        .submitter
        .submit(submission)
        .instrument(span.clone())
        .await
        .map_err(|e| ApiError::from(e.as_ref()))?;
    span.record("job_id", tracing::field::display(id));
    let by_reference = carriage == Carriage::Reference;
    tracing::info!(parent: &span, %id, size, by_reference, "job accepted");
    Ok(accepted(id))
}

fn accepted(id: JobId) -> Response {
    let location = format!("/api/v1/job/{id}");
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: id.to_string(),
            status: "QUEUED".into(),
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Reads at most `limit` bytes, into one buffer sized by `Content-Length` when the client
/// declared it, and with `hash` their MD5 as they arrive. A body that arrives in one piece
/// is not copied.
async fn read_body(
    body: Body,
    limit: usize,
    max_image: usize,
    declared: Option<usize>,
    hash: bool,
) -> Result<(Bytes, Option<Md5>), ApiError> {
    let mut pieces = body.into_data_stream();
    let mut md5 = hash.then(Md5Stream::new);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(piece) = pieces.next().await {
        let piece = piece
            .map_err(|e| ApiError::bad_request("could not read the request body", e.to_string()))?;
        len += piece.len();
        if len > limit {
            return Err(ApiError::TooLarge { limit: max_image });
        }
        if let Some(md5) = &mut md5 {
            md5.update(&piece);
        }
        if let Some(buf) = &mut joined {
            buf.extend_from_slice(&piece);
        } else if let Some(head) = first.take() {
            let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).clamp(len, limit));
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&piece);
            joined = Some(buf);
        } else {
            first = Some(piece);
        }
    }
    let bytes = match joined {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    };
    Ok((bytes, md5.map(Md5Stream::finish)))
}
