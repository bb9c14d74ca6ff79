//! What every handler shares, and the one way a job is enqueued.

use std::sync::Arc;

use imagejobs_core::broker::{Broker, PublishError};
use imagejobs_core::events::EventSink;
use imagejobs_core::message::{with_trace, JobMeta};
use imagejobs_core::status::{Status, StatusEvent};
use imagejobs_core::topology::SUBMIT_KEY;
use imagejobs_core::trace::TraceContext;

use crate::auth::Verifier;
use crate::idempotency::IdempotencyCache;
use crate::index::JobIndex;
use crate::metrics::IngressMetrics;
use crate::outbox::Outbox;
use crate::ratelimit::TenantLimiter;

/// What every handler shares; a cheap clone of one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub broker: Broker,
    pub events: EventSink,
    pub verifier: Verifier,
    /// Largest image accepted, in bytes (`MAX_BODY_BYTES`).
    pub max_body: usize,
    /// How long a client may take to send a submit's body.
    pub body_timeout: std::time::Duration,
    pub limiter: Option<TenantLimiter>,
    pub idempotency: IdempotencyCache,
    pub index: JobIndex,
    pub outbox: Outbox,
    pub metrics: Arc<IngressMetrics>,
    /// The client of `GET /api/v1/job/{id}/result`.
    pub results: super::result::Results,
    /// How often an idle event stream gets a comment line.
    pub sse_heartbeat: std::time::Duration,
    /// One permit per event stream open (`MAX_WATCHERS`).
    pub watchers: Arc<tokio::sync::Semaphore>,
    /// The dashboard's cached queue depth.
    pub queue_depth: super::dashboard::QueueDepth,
    /// Cancelled at shutdown: event streams end so that their clients move on.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }

    /// Publishes a job, then its QUEUED event. `Ok` means the broker confirmed the job into
    /// the durable work queue and the QUEUED event is confirmed into the stream or kept in
    /// the outbox until it is (so that every replica learns of the job).
    pub async fn enqueue(
        &self,
        meta: &JobMeta,
        body: &[u8],
        trace: &TraceContext,
    ) -> Result<(), PublishError> {
        let topo = self.broker.topology();
        let started = std::time::Instant::now();
        self.broker
            .publish(
                &topo.jobs_exchange(),
                SUBMIT_KEY,
                body,
                with_trace(meta.to_properties(), trace),
            )
            .await
            .inspect_err(
                |e| tracing::warn!(job_id = %meta.id, error = %e, "job not accepted by the broker"),
            )?;
        self.metrics.confirmed("job", started);
        let event = StatusEvent::new(meta, Status::Queued);
        self.index.apply(&event);
        let started = std::time::Instant::now();
        // The 202 waits for this confirm too: a replica restarted right after the 202 must
        // find the job in the stream.
        let published = self.events.publish(&event).await;
        if published.is_ok() {
            self.metrics.confirmed("event", started);
        }
        if let Err(e) = published {
            let job_id = event.job_id;
            match self.outbox.push(event) {
                Ok(()) => {
                    tracing::warn!(%job_id, error = %e, "QUEUED event not confirmed; kept until the broker takes it")
                }
                Err(full) => {
                    tracing::error!(%job_id, error = %e, %full, "QUEUED event not confirmed and the outbox is full");
                    return Err(e);
                }
            }
        }
        tracing::debug!(job_id = %meta.id, tenant_id = meta.tenant_id.0, size = body.len(), "job queued");
        Ok(())
    }
}
