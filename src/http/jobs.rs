//! `GET /api/v1/job/{id}` and `GET /api/v1/job/{id}/status`, answered from the index.
//! Another tenant's job is a 404, exactly like an unknown id.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::index::JobView;
use imagejobs_core::ids::JobId;

fn lookup(app: &AppState, headers: &HeaderMap, id: &str) -> Result<JobView, ApiError> {
    let caller = app.verifier.verify_headers(headers)?;
    let id: JobId = id.parse().map_err(|_| ApiError::NotFound)?;
    app.index
        .get(id)
        .filter(|job| job.tenant_id == caller.tenant_id)
        .ok_or(ApiError::NotFound)
}

pub async fn job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    lookup(&app, &headers, &id).map(Json)
}

pub async fn status(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    lookup(&app, &headers, &id).map(|job| Json(json!({ "status": job.status })))
}
