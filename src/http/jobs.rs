//! `GET /api/v1/job/{id}`, `GET /api/v1/job/{id}/status` and `GET /api/v1/jobs`,
//! answered from the index. Another tenant's job is a 404, exactly like an unknown id.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Caller;
use crate::index::{Cursor, JobView};
use imagejobs_core::ids::JobId;
use imagejobs_core::status::Status;

/// Page size of a listing without `limit`, and the largest one allowed.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// The caller's job `id`: 404 when it is unknown or another tenant's, 503 while the index
/// is still catching up (the job may only be unread yet).
pub fn lookup(
    app: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Caller, JobView), ApiError> {
    let caller = app.verifier.verify_headers(headers)?;
    let id: JobId = id.parse().map_err(|_| ApiError::NotFound)?;
    match app.index.get(id) {
        Some(job) if job.tenant_id == caller.tenant_id => Ok((caller, job)),
        Some(_) => Err(ApiError::NotFound),
        None if !app.index.caught_up() => Err(ApiError::catching_up()),
        None => Err(ApiError::NotFound),
    }
}

pub async fn job(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    lookup(&app, &headers, &id).map(|(_, job)| Json(job))
}

pub async fn status(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    lookup(&app, &headers, &id).map(|(_, job)| Json(json!({ "status": job.status })))
}

/// The query of `GET /api/v1/jobs`, as sent: checked by [`ListQuery::parse`] so that each
/// bad value gets its own message.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// A checked [`ListQuery`].
#[derive(Debug, PartialEq)]
pub struct Listing {
    pub status: Option<Status>,
    pub limit: usize,
    pub after: Option<Cursor>,
}

impl ListQuery {
    pub fn parse(self) -> Result<Listing, ApiError> {
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "bad status",
                    format!(
                        "{s:?} is not one of QUEUED, RUNNING, RETRYING, SUCCESS, FAILED, CANCELLED"
                    ),
                )
            })?),
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n @ 1..=MAX_LIMIT) => n,
                _ => {
                    return Err(ApiError::bad_request(
                        "bad limit",
                        format!("limit must be a whole number from 1 to {MAX_LIMIT}, not {l:?}"),
                    ))
                }
            },
        };
        let after = match self.after.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse::<Cursor>().map_err(|_| {
                ApiError::bad_request(
                    "bad cursor",
                    "after must be a `next` value of an earlier page",
                )
            })?),
        };
        Ok(Listing {
            status,
            limit,
            after,
        })
    }
}

pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.verifier.verify_headers(&headers)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad query", e.body_text()))?;
    let q = query.parse()?;
    if !app.index.caught_up() {
        return Err(ApiError::catching_up());
    }
    let page = app.index.list(caller.tenant_id, q.status, q.limit, q.after);
    let mut body = json!({ "jobs": page.jobs });
    if let Some(next) = page.next {
        body["next"] = json!(next.to_string());
    }
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(status: Option<&str>, limit: Option<&str>, after: Option<&str>) -> ListQuery {
        ListQuery {
            status: status.map(Into::into),
            limit: limit.map(Into::into),
            after: after.map(Into::into),
        }
    }

    #[test]
    fn listing_queries_are_checked() {
        let l = q(None, None, None).parse().unwrap();
        assert_eq!((l.status, l.limit, l.after), (None, 50, None));
        let l = q(Some("CANCELLED"), Some("1000"), None).parse().unwrap();
        assert_eq!((l.status, l.limit), (Some(Status::Cancelled), 1000));
        for bad in [
            q(Some("done"), None, None),
            q(None, Some("1001"), None),
            q(None, Some("0"), None),
            q(None, Some("-1"), None),
            q(None, None, Some("xyz")),
        ] {
            let e = bad.parse().unwrap_err();
            assert_eq!(e.status(), 400, "{e:?}");
        }
    }
}
