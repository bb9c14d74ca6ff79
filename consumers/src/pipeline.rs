//! The work of one attempt: store the image, hand it to the worker, follow it to its end.
//! Every call goes through the in-process retry tier; what still fails becomes an
//! [`Outcome`] for `outcome::settle`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use imagejobs_core::message::JobMessage;
use imagejobs_core::trace::TraceContext;

use crate::metrics::{ConsumerMetrics, Stage};
use crate::outcome::Outcome;
use crate::retry::RetryPolicy;
use crate::services::{CallError, Services, Submitted, WorkerRequest, WorkerState, WorkerStatus};

/// The services and the limits of an attempt.
pub struct Pipeline {
    pub services: Services,
    pub retry: RetryPolicy,
    /// How long a worker job may run before the attempt counts as failed (transient).
    pub job_timeout: Duration,
    pub metrics: Arc<ConsumerMetrics>,
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
    /// Runs one attempt of `job`; `abandon` ends it early with [`Outcome::Abandoned`],
    /// `cancel` (the job's cancel read from the control stream) with
    /// [`Outcome::Cancelled`]: the worker's job is no longer followed.
    pub async fn run(
        &self,
        job: &JobMessage,
        abandon: &CancellationToken,
        cancel: &CancellationToken,
        trace: &TraceContext,
    ) -> Outcome {
        tokio::select! {
            _ = abandon.cancelled() => Outcome::Abandoned,
            _ = cancel.cancelled() => Outcome::Cancelled,
            r = self.attempt(job, trace) => r.unwrap_or_else(Outcome::from),
        }
    }

    async fn attempt(&self, job: &JobMessage, trace: &TraceContext) -> Result<Outcome, CallError> {
        let meta = &job.meta;
        let content_type = meta
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let location = match &meta.payload_location {
            Some(loc) => loc.clone(),
            None => {
                let started = std::time::Instant::now();
                let put = self
                    .call(|| {
                        self.services
                            .put_blob(meta.id, job.body.clone(), content_type, trace)
                    })
                    .await;
                self.metrics.stage(Stage::Blob, started);
                put?
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
        let started = std::time::Instant::now();
        let submitted = self.call(|| self.services.submit(&request, trace)).await;
        self.metrics.stage(Stage::WorkerSubmit, started);
        let submitted = submitted?;
        let started = std::time::Instant::now();
        let ended = self.follow(submitted, &location, trace).await;
        self.metrics.stage(Stage::WorkerRun, started);
        ended
    }

    /// Follows the worker's job from its answer to the submit until it ends.
    async fn follow(
        &self,
        submitted: Submitted,
        location: &str,
        trace: &TraceContext,
    ) -> Result<Outcome, CallError> {
        if let Some(result) = submitted.result {
            return Ok(finished(result, location));
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
                .call(|| self.services.status(&submitted.worker_id, trace))
                .await?;
            if status.state != WorkerState::Running {
                return Ok(finished(status, location));
            }
        }
    }

    /// One service call through the in-process retry tier, its retries counted.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let tries = AtomicU64::new(0);
        let result = self
            .retry
            .run(|| {
                tries.fetch_add(1, Ordering::Relaxed);
                call()
            })
            .await;
        self.metrics
            .call_retries(tries.load(Ordering::Relaxed).saturating_sub(1));
        result
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
