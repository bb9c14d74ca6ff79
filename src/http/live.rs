//! Server-sent events: `GET /api/v1/job/{id}/events` (one job, resumable) and
//! `GET /api/v1/jobs/events` (every change of the caller's jobs, for the dashboard).
//!
//! Both are fed by the index's watchers (`index::watch`): a change wakes the streams of
//! that job and tenant only, so many open streams cost a task each and nothing per change
//! of other jobs. A job's event `id:` is [`JobView::seq`], equal on every replica, so a
//! client that reconnects anywhere with `Last-Event-ID` gets the job's state only if it
//! moved on since. Each stream holds a permit of `MAX_WATCHERS` and ends at shutdown.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use tokio::sync::OwnedSemaphorePermit;

use super::error::{ApiError, Rejected};
use super::extract::MyJob;
use super::openapi::ErrorBody;
use super::state::AppState;
use crate::auth::Caller;
use crate::index::watch::{JobWatch, TenantChange, TenantWatch};
use crate::index::JobView;
use imagejobs_core::ids::{JobId, TenantId};

fn permit(app: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    app.watchers
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable {
            details: "too many event streams are open; retry later".into(),
            retry_after_secs: 5,
            reason: Rejected::Watchers,
        })
}

fn sse<S>(app: &AppState, events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let keep_alive = KeepAlive::new()
        .interval(app.sse_heartbeat)
        .text("heartbeat");
    let mut resp = Sse::new(events).keep_alive(keep_alive).into_response();
    // Proxies such as nginx buffer responses unless told not to.
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    resp
}

fn status_event(job: &JobView, with_id: bool) -> Event {
    let event = Event::default().event("status");
    let event = if with_id {
        event.id(job.seq().to_string())
    } else {
        event
    };
    event
        .json_data(job)
        .unwrap_or_else(|_| Event::default().comment("unencodable job"))
}

struct JobStream {
    app: AppState,
    id: JobId,
    watch: JobWatch,
    /// The `seq` of the last state sent (or the client's `Last-Event-ID`).
    sent: Option<u64>,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

/// One job's status as server-sent events: a `status` event (data: the job, `id`: a
/// number that grows with every change) now and at every change, ending after a terminal
/// status; a comment line every SSE_HEARTBEAT_SECS keeps the stream open.
#[utoipa::path(get, path = "/api/v1/job/{id}/events", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id (a UUID)"), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event's id")),
    responses((status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 404, description = "No such job, or another tenant's", body = ErrorBody), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn job_events(
    State(app): State<AppState>,
    MyJob { job, .. }: MyJob,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let state = JobStream {
        _permit: permit(&app)?,
        // Watching before the first read: a change in between wakes the stream at once.
        watch: app.index.watch_job(job.id),
        app: app.clone(),
        id: job.id,
        sent,
        done: false,
    };
    let events = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let job = st.app.index.get(st.id)?;
            let seq = job.seq();
            if st.sent.is_none_or(|sent| seq > sent) {
                st.sent = Some(seq);
                st.done = job.status.is_terminal();
                return Some((Ok(status_event(&job, true)), st));
            }
            if job.status.is_terminal() {
                return None;
            }
            tokio::select! {
                _ = st.app.shutdown.cancelled() => return None,
                _ = st.watch.changed() => {}
            }
        }
    });
    Ok(sse(&app, events))
}

struct TenantStream {
    app: AppState,
    tenant: TenantId,
    watch: TenantWatch,
    _permit: OwnedSemaphorePermit,
}

/// Every change of the caller's jobs as server-sent `status` events (data: the job), and
/// `resync` when changes were missed (reload the list). Never ends by itself.
#[utoipa::path(get, path = "/api/v1/jobs/events", tag = "jobs", security(("bearer" = [])),
    responses((status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn tenant_events(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let state = TenantStream {
        _permit: permit(&app)?,
        watch: app.index.watch_tenant(caller.tenant_id),
        app: app.clone(),
        tenant: caller.tenant_id,
    };
    let events = stream::unfold(state, |mut st| async move {
        loop {
            let change = tokio::select! {
                _ = st.app.shutdown.cancelled() => return None,
                change = st.watch.next() => change,
            };
            match change {
                TenantChange::Job(id) => {
                    let Some(job) = st.app.index.get(id).filter(|j| j.tenant_id == st.tenant)
                    else {
                        continue;
                    };
                    return Some((Ok(status_event(&job, false)), st));
                }
                TenantChange::Missed => {
                    let resync = Event::default().event("resync").data("{}");
                    return Some((Ok(resync), st));
                }
            }
        }
    });
    Ok(sse(&app, events))
}
