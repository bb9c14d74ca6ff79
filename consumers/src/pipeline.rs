//! The work of one job: store the image, hand it to the worker, follow it to its end.

use tokio::time::{sleep, Instant};

use imagejobs::job::JobMessage;

use crate::services::{CallError, WorkerRequest, WorkerState, WorkerStatus};
use crate::Context;

/// How an attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The worker finished; its result lives at `payload_location`.
    Success { payload_location: String },
    /// The worker ran the job and reports FAILED: a result, not an error.
    WorkerFailed(String),
    /// A service refused the job; retrying will not help.
    Permanent(String),
    /// Services were unreachable or overloaded past the in-process retries.
    Transient(String),
}

impl From<CallError> for Outcome {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Transient(m) => Outcome::Transient(m),
            CallError::Permanent(m) => Outcome::Permanent(m),
        }
    }
}

pub async fn run(ctx: &Context, job: &JobMessage) -> Outcome {
    match attempt(ctx, job).await {
        Ok(outcome) => outcome,
        Err(e) => e.into(),
    }
}

async fn attempt(ctx: &Context, job: &JobMessage) -> Result<Outcome, CallError> {
    let meta = &job.meta;
    let content_type = meta
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let location = match &meta.payload_location {
        Some(loc) => loc.clone(),
        None => {
            ctx.retry
                .run(|| {
                    ctx.services
                        .put_blob(meta.id, job.body.clone(), content_type)
                })
                .await?
        }
    };
    let request = WorkerRequest {
        id: meta.id,
        tenant_id: meta.tenant_id.0,
        client_id: meta.client_id.0,
        payload_location: &location,
        md5: meta.md5,
        mime_type: meta.content_type.as_deref(),
    };
    let submitted = ctx.retry.run(|| ctx.services.submit(&request)).await?;
    if let Some(result) = submitted.result {
        return Ok(finished(result, &location));
    }
    let deadline = Instant::now() + ctx.job_timeout;
    let mut polls = 0;
    loop {
        let wait = crate::job::poll_interval(polls);
        if Instant::now() + wait > deadline {
            return Ok(Outcome::Transient(format!(
                "worker job {} did not finish within {:?}",
                submitted.worker_id, ctx.job_timeout
            )));
        }
        sleep(wait).await;
        polls += 1;
        let status = ctx
            .retry
            .run(|| ctx.services.status(&submitted.worker_id))
            .await?;
        if status.state != WorkerState::Running {
            return Ok(finished(status, &location));
        }
    }
}

fn finished(status: WorkerStatus, image_location: &str) -> Outcome {
    match status.state {
        WorkerState::Failed => Outcome::WorkerFailed(
            status
                .error
                .unwrap_or_else(|| "the worker reported FAILED".into()),
        ),
        _ => Outcome::Success {
            payload_location: status
                .payload_location
                .unwrap_or_else(|| image_location.to_owned()),
        },
    }
}
