//! Who is asking, and for which of their jobs, as axum extractors: a handler that takes
//! a [`Caller`] runs only for a valid token, and one that takes a [`MyJob`] only for a job
//! of the caller's tenant. Each failure is the API's error: 401, or a 404 that looks the
//! same for an unknown id and another tenant's job (503 while the index catches up, since
//! the job may only be unread yet).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Caller;
use crate::index::JobView;
use imagejobs_core::ids::JobId;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(app.verifier.verify_headers(&parts.headers)?)
    }
}

/// The job of the `{id}` in the path, when it is the caller's.
pub struct MyJob {
    pub caller: Caller,
    pub job: JobView,
}

impl FromRequestParts<AppState> for MyJob {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|_| ApiError::NotFound)?;
        let id: JobId = id.parse().map_err(|_| ApiError::NotFound)?;
        match app.index.get(id) {
            Some(job) if job.tenant_id == caller.tenant_id => Ok(MyJob { caller, job }),
            Some(_) => Err(ApiError::NotFound),
            None if !app.index.caught_up() => Err(ApiError::catching_up()),
            None => Err(ApiError::NotFound),
        }
    }
}
