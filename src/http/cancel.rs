//! `DELETE /api/v1/job/{id}`: cancel a job (ARCHITECTURE.md, "Cancelling a job").
//!
//! The cancel goes to the control stream first, so that every consumer, running or yet to
//! start, drops the job. A job that waits (QUEUED, RETRYING) is then final at once: a
//! CANCELLED event goes to the events stream, and the answer waits until this replica has
//! read it back, so that it answers what every replica will show. A running job is asked
//! to stop: its consumer reports CANCELLED unless the attempt ended first.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::extract::MyJob;
use super::openapi::{Cancelled, ErrorBody};
use super::state::AppState;
use imagejobs_core::control::ControlMessage;
use imagejobs_core::status::{Status, StatusEvent};

/// How long the answer waits for this replica to read its CANCELLED event back.
const READ_BACK: Duration = Duration::from_secs(2);

/// Cancels a job: a QUEUED or RETRYING one is CANCELLED at once and never reaches the
/// worker; a RUNNING one is stopped by its consumer unless it ends first.
#[utoipa::path(delete, path = "/api/v1/job/{id}", tag = "jobs", security(("bearer" = [])), params(("id" = String, Path, description = "The job's id (a UUID)")),
    responses((status = 202, description = "Cancelled, or cancel requested of its consumer", body = Cancelled),
        (status = 401, description = "No token, or one that is malformed, badly signed, expired or for another audience", body = ErrorBody, headers(("WWW-Authenticate" = String))), (status = 404, description = "No such job, or another tenant's", body = ErrorBody), (status = 409, description = "The job has ended", body = ErrorBody), (status = 503, description = "The broker is unavailable or blocked, the index is catching up, or too many requests are in flight", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait")))))]
pub async fn cancel(
    State(app): State<AppState>,
    MyJob { caller, job }: MyJob,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    if job.status.is_terminal() {
        return Err(ended(job.status));
    }
    let mut watch = app.index.watch_job(job.id);
    ControlMessage::cancel(job.id, caller.tenant_id)
        .publish(&app.broker)
        .await
        .inspect_err(
            |e| tracing::warn!(job_id = %job.id, error = %e, "cancel not accepted by the broker"),
        )?;
    if job.status == Status::Running {
        tracing::info!(job_id = %job.id, "cancel of a running job requested");
        return Ok(running(&job.id.to_string()));
    }
    let event = StatusEvent::bare(
        job.id,
        job.tenant_id,
        job.client_id,
        Status::Cancelled,
        job.attempts.max(1),
    );
    app.events.publish(&event).await?;
    tracing::info!(job_id = %job.id, "job cancelled");
    let read_back = async {
        loop {
            match app.index.get(job.id).map(|j| j.status) {
                Some(s) if s.is_terminal() => return s,
                _ => watch.changed().await,
            }
        }
    };
    // Not read back in time (a lagging follower): the event is in the stream, after what
    // the replica had read, so CANCELLED is what it will show.
    let now = tokio::time::timeout(READ_BACK, read_back)
        .await
        .unwrap_or(Status::Cancelled);
    match now {
        Status::Cancelled => Ok((
            StatusCode::ACCEPTED,
            Json(Cancelled {
                id: job.id.to_string(),
                status: "CANCELLED".into(),
                cancel_requested: None,
            }),
        )),
        other => Err(ended(other)),
    }
}

fn running(id: &str) -> (StatusCode, Json<Cancelled>) {
    (
        StatusCode::ACCEPTED,
        Json(Cancelled {
            id: id.to_owned(),
            status: "RUNNING".into(),
            cancel_requested: Some(true),
        }),
    )
}

fn ended(status: Status) -> ApiError {
    ApiError::Conflict(format!(
        "the job has ended ({status}): there is nothing to cancel"
    ))
}
