//! `GET /api/v1/job/{id}`, `GET /api/v1/job/{id}/status` and `GET /api/v1/jobs`,
//! answered from the index. Another tenant's job is a 404, exactly like an unknown id
//! ([`MyJob`]).

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::MyJob;
use super::openapi::{ErrorBody, JobPage, StatusBody};
use super::state::AppState;
use crate::auth::Caller;
use crate::index::{Cursor, JobView};
use imagejobs_core::status::Status;

/// Page size of a listing without `limit`, and the largest one allowed.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

/// One job, as the index knows it.
#[utoipa::path(get, path = "/api/v1/job/{id}", tag = "jobs", security(("bearer" = [])), params(("id" = String, Path, description = "The job's id (a UUID)")),
    responses((status = 200, description = "The job", body = JobView), (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 404, description = "No such job, or another tenant's", body = ErrorBody), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn job(MyJob { job, .. }: MyJob) -> Json<JobView> {
    Json(job)
}

/// One job's status only.
#[utoipa::path(get, path = "/api/v1/job/{id}/status", tag = "jobs", security(("bearer" = [])), params(("id" = String, Path, description = "The job's id (a UUID)")),
    responses((status = 200, description = "Its status", body = StatusBody), (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 404, description = "No such job, or another tenant's", body = ErrorBody), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn status(MyJob { job, .. }: MyJob) -> Json<StatusBody> {
    Json(StatusBody { status: job.status })
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
        // An empty `status=` or `limit=` is refused like any other bad value (the fuzzer
        // found them taken as absent, which the documented enum and integer do not allow).
        let status = match self.status.as_deref() {
            None => None,
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
            None => DEFAULT_LIMIT,
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

/// The caller's jobs, newest first (by `created_at`, ties by id), a page at a time.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", security(("bearer" = [])),
    params(
        ("status" = Option<crate::index::StatusName>, Query, description = "Only jobs in this status"),
        ("limit" = Option<u32>, Query, description = "Jobs per page, 1 to 1000 (default 50)", minimum = 1, maximum = 1000),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses((status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "A bad status, limit or cursor", body = ErrorBody), (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad query", e.body_text()))?;
    let q = query.parse()?;
    if !app.index.caught_up() {
        return Err(ApiError::catching_up());
    }
    let page = app.index.list(caller.tenant_id, q.status, q.limit, q.after);
    Ok(Json(JobPage {
        jobs: page.jobs,
        next: page.next.map(|n| n.to_string()),
    }))
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
            // Found by the fuzzer: empty values were taken as absent.
            q(Some(""), None, None),
            q(None, Some(""), None),
        ] {
            let e = bad.parse().unwrap_err();
            assert_eq!(e.status(), 400, "{e:?}");
        }
    }
}
