//! The one error type of the HTTP API, rendered in the seed's JSON shape
//! `{"error": "<message>", "code": <int>, "details": "<text>"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::AuthError;
use crate::blob::BlobError;
pub use crate::metrics::Rejected;
use crate::submitter::SubmitError;
use imagejobs_core::broker::PublishError;

/// Every way a request can fail. The `details` never carry internals such as broker
/// addresses; those are logged where the error is handled.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: &'static str,
        details: String,
    },
    #[error("unauthorized")]
    Unauthorized(#[from] AuthError),
    #[error("not found")]
    NotFound,
    #[error("not found")]
    NoResult,
    #[error("conflict")]
    Conflict(String),
    #[error("bad gateway")]
    BadGateway(String),
    #[error("method not allowed")]
    MethodNotAllowed { allowed: String },
    #[error("request timeout")]
    Timeout { what: &'static str },
    #[error("payload too large")]
    TooLarge { limit: usize },
    #[error("unsupported media type")]
    Unsupported(String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("service unavailable")]
    Unavailable {
        details: String,
        retry_after_secs: u64,
        reason: Rejected,
    },
}

impl ApiError {
    pub fn bad_request(message: &'static str, details: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message,
            details: details.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound | ApiError::NoResult => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn details(&self) -> String {
        match self {
            ApiError::BadRequest { details, .. } => details.clone(),
            ApiError::Unauthorized(e) => e.to_string(),
            ApiError::NotFound => "no such job".into(),
            ApiError::NoResult => "the job has no result: it has not succeeded".into(),
            ApiError::Conflict(d) | ApiError::BadGateway(d) => d.clone(),
            ApiError::MethodNotAllowed { allowed } => {
                format!("this route takes {allowed}")
            }
            ApiError::Timeout { what } => format!("the {what} did not arrive in time"),
            ApiError::TooLarge { limit } => format!("the image may be at most {limit} bytes"),
            ApiError::Unsupported(d) => d.clone(),
            ApiError::RateLimited { .. } => {
                "the tenant is over its request rate; retry later".into()
            }
            ApiError::Unavailable { details, .. } => details.clone(),
        }
    }
}

impl ApiError {
    /// 503 while the index is not caught up: an unknown id may only be unread yet.
    pub fn catching_up() -> Self {
        ApiError::Unavailable {
            details: "the job index is catching up with the events stream; retry shortly".into(),
            retry_after_secs: 1,
            reason: Rejected::CatchingUp,
        }
    }
}

impl From<&SubmitError> for ApiError {
    fn from(e: &SubmitError) -> Self {
        match e {
            SubmitError::Publish(e) => ApiError::from(e),
            SubmitError::Blob(BlobError::Unavailable(_)) => ApiError::Unavailable {
                details: "the blob service could not store the image; retry later".into(),
                retry_after_secs: 2,
                reason: Rejected::BlobUnavailable,
            },
            SubmitError::Blob(BlobError::Refused(why)) => {
                ApiError::BadGateway(format!("the blob service refused the image: {why}"))
            }
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        ApiError::from(&e)
    }
}

impl From<&PublishError> for ApiError {
    fn from(e: &PublishError) -> Self {
        let details = match e {
            PublishError::Nack => {
                "the job queue is full or the broker refused the job; retry later"
            }
            PublishError::Returned(_) => "the job could not be routed to a queue; retry later",
            PublishError::Blocked(_) => {
                "the broker is short of memory or disk and takes no jobs now; retry later"
            }
            _ => "the broker is unavailable; retry later",
        };
        let reason = match e {
            PublishError::Nack => Rejected::QueueFull,
            PublishError::Returned(_) => Rejected::Unroutable,
            PublishError::Blocked(_) => Rejected::BrokerBlocked,
            _ => Rejected::BrokerUnavailable,
        };
        ApiError::Unavailable {
            details: details.into(),
            retry_after_secs: 1,
            reason,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({ "error": self.to_string(), "code": status.as_u16(), "details": self.details() });
        let mut resp = (status, Json(body)).into_response();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_secs } => {
                resp.extensions_mut().insert(Rejected::RateLimited);
                Some(*retry_after_secs)
            }
            ApiError::Unavailable {
                retry_after_secs,
                reason,
                ..
            } => {
                resp.extensions_mut().insert(*reason);
                Some(*retry_after_secs)
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
