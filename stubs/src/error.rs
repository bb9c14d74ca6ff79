//! The one error type of the stubs' HTTP API, answered as the seed's JSON shape
//! `{"error": "<message>", "code": <int>, "details": "<text>"}`.
//!
//! Handlers take axum's extractors as `Result`s and turn rejections into an [`ApiError`], so
//! even a malformed request gets this shape rather than axum's plain-text rejection.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An HTTP error answer: a status, a short message and details for the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: u16,
    details: &'a str,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            details: details.into(),
        }
    }

    pub(crate) fn bad_request(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad request", details)
    }

    pub(crate) fn not_found(details: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not found", details)
    }

    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Client mistakes and injected faults are expected in a stub; log them quietly.
        tracing::debug!(status = self.status.as_u16(), error = %self.message, details = %self.details, "request refused");
        let body = ErrorBody {
            error: &self.message,
            code: self.status.as_u16(),
            details: &self.details,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::new(
            rejection.status(),
            "invalid JSON body",
            rejection.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), "invalid path", rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self::new(rejection.status(), "unreadable body", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), "invalid query", rejection.body_text())
    }
}

/// Answer for routes that do not exist, in the same shape as every other error.
pub(crate) async fn no_such_route() -> ApiError {
    ApiError::not_found("no such route")
}
