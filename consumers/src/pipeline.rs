//! The work of one attempt: store the image, hand it to the worker, follow it to its end.
//! Every call goes through the in-process retry tier; what still fails becomes an
//! [`Outcome`] for `outcome::settle`.

use std::time::Duration;

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use imagejobs_core::message::JobMessage;

use crate::outcome::Outcome;
use crate::retry::RetryPolicy;
use crate::services::{CallError, Services, WorkerRequest, WorkerState, WorkerStatus};

/// The services and the limits of an attempt.
pub struct Pipeline {
    pub services: Services,
    pub retry: RetryPolicy,
    /// How long a worker job may run before the attempt counts as failed (transient).
    pub job_timeout: Duration,
}

impl From<CallError> for Outcome {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Transient(m) => Outcome::Transient(m),
            CallError::Permanent(m) => Outcome::Permanent(m),
        }
    }
}

impl Pipeline {
    /// Runs one attempt of `job`; `abandon` ends it early with [`Outcome::Abandoned`].
    pub async fn run(&self, job: &JobMessage, abandon: &CancellationToken) -> Outcome {
        tokio::select! {
            _ = abandon.cancelled() => Outcome::Abandoned,
            r = self.attempt(job) => r.unwrap_or_else(Outcome::from),
        }
    }

    async fn attempt(&self, job: &JobMessage) -> Result<Outcome, CallError> {
        let meta = &job.meta;
        let content_type = meta
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let location = match &meta.payload_location {
            Some(loc) => loc.clone(),
            None => {
                self.retry
                    .run(|| {
                        self.services
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
        let submitted = self.retry.run(|| self.services.submit(&request)).await?;
        if let Some(result) = submitted.result {
            return Ok(finished(result, &location));
        }
        let deadline = Instant::now() + self.job_timeout;
        let mut polls = 0;
        loop {
            let wait = poll_interval(polls);
            if Instant::now() + wait > deadline {
                return Ok(Outcome::Transient(format!(
                    "worker job {} did not finish within {:?}",
                    submitted.worker_id, self.job_timeout
                )));
            }
            sleep(wait).await;
            polls += 1;
            let status = self
                .retry
                .run(|| self.services.status(&submitted.worker_id))
                .await?;
            if status.state != WorkerState::Running {
                return Ok(finished(status, &location));
            }
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

/// How long to wait between status polls: short at first, for fast jobs, then longer.
pub fn poll_interval(polls: u32) -> Duration {
    Duration::from_millis((10u64 << polls.min(7)).min(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_start_fast_and_settle_at_a_second() {
        assert_eq!(poll_interval(0), Duration::from_millis(10));
        assert!(poll_interval(3) > poll_interval(2));
        assert_eq!(poll_interval(50), Duration::from_secs(1));
    }
}
