//! Accepting a job: the one domain operation behind `POST /api/v1/job`.
//!
//! The HTTP handler reads and checks the request into an [`Image`] and a caller; the
//! [`Submitter`] decides how the image travels, stores it when it travels by reference,
//! publishes the job with a confirm, records its QUEUED event, and says `Ok` only when all
//! of that is durable. It knows nothing of HTTP: its errors are [`SubmitError`], which the
//! API maps to 502 and 503.
//!
//! The claim check (docs/http-api.md, "Images by reference"): an image of at least
//! `CLAIM_CHECK_MIN_BYTES` is PUT to the blob service first, and the job message carries an
//! empty body with
//! `payload_location`, `payload_size` and `md5` headers. RabbitMQ writes every byte of a
//! message to a quorum queue's log on a majority of nodes; a reference keeps the broker's
//! work per job at a few hundred bytes whatever the image.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use imagejobs_core::broker::{Broker, PublishError};
use imagejobs_core::events::EventSink;
use imagejobs_core::ids::{JobId, Md5};
use imagejobs_core::message::{with_trace, JobMeta};
use imagejobs_core::status::{Status, StatusEvent};
use imagejobs_core::topology::SUBMIT_KEY;
use imagejobs_core::trace::TraceContext;

use crate::auth::Caller;
use crate::blob::{BlobError, BlobService};
use crate::idempotency::IdempotencyCache;
use crate::index::JobIndex;
use crate::metrics::IngressMetrics;
use crate::outbox::Outbox;

/// A checked image, ready to submit.
#[derive(Debug)]
pub struct Image {
    pub bytes: Bytes,
    /// What the bytes are, sniffed.
    pub mime: &'static str,
    /// The digest the client sent, checked against the bytes; it goes in the job message.
    pub md5: Option<Md5>,
    /// The digest of the bytes when it was computed already (while the body streamed in),
    /// so that a reference's `md5` header costs no second pass.
    pub digest: Option<Md5>,
}

/// One submit: who asks, what, and under which key and trace.
pub struct Submission {
    pub caller: Caller,
    pub image: Image,
    pub key: Option<String>,
    pub trace: TraceContext,
}

/// How an accepted job travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carriage {
    /// The bytes are the job message's body.
    Body,
    /// The bytes are in the blob service; the message holds their location.
    Reference,
}

/// Why a submit was not accepted. Nothing was published for it (a stored blob may remain:
/// the blob store's lifecycle rule expires it).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// The claim-check threshold: images of at least `min_bytes` go by reference; `0` sends
/// every image by reference, a value above the largest image none.
#[derive(Clone, Copy, Debug)]
pub struct ClaimCheck {
    pub min_bytes: u64,
    pub max_image: u64,
}

impl ClaimCheck {
    pub fn carriage(self, size: usize) -> Carriage {
        if self.min_bytes <= self.max_image && size as u64 >= self.min_bytes {
            Carriage::Reference
        } else {
            Carriage::Body
        }
    }
}

/// What a submit needs; one per process, shared by the handlers.
pub struct Submitter {
    pub broker: Broker,
    pub events: EventSink,
    pub index: JobIndex,
    pub outbox: Outbox,
    pub idempotency: IdempotencyCache,
    pub metrics: Arc<IngressMetrics>,
    pub blobs: BlobService,
    pub claim_check: ClaimCheck,
}

impl Submitter {
    /// Accepts one job: `Ok` only once its image is stored (by reference), the broker
    /// confirmed its message into the durable work queue, and its QUEUED event is
    /// confirmed or kept in the outbox. A keyed submission runs once per (tenant, key) in
    /// this process; one the index knows already (here or on another replica) is not run
    /// again.
    pub async fn submit(&self, s: Submission) -> Result<(JobId, Carriage), Arc<SubmitError>> {
        let id = match &s.key {
            Some(k) => JobId::for_idempotency_key(s.caller.tenant_id, k),
            None => JobId::new(),
        };
        let carriage = self.claim_check.carriage(s.image.bytes.len());
        match s.key {
            Some(_) if self.index.get(id).is_some() => self.metrics.idempotency_hit(),
            Some(key) => {
                let ran = AtomicBool::new(false);
                let accept = async {
                    ran.store(true, Ordering::Relaxed);
                    self.accept(id, &s.caller, &s.image, carriage, &s.trace)
                        .await
                };
                self.idempotency
                    .publish_once(s.caller.tenant_id, key, accept)
                    .await?;
                if !ran.load(Ordering::Relaxed) {
                    self.metrics.idempotency_hit();
                }
            }
            None => self
                .accept(id, &s.caller, &s.image, carriage, &s.trace)
                .await
                .map_err(Arc::new)?,
        }
        Ok((id, carriage))
    }

    async fn accept(
        &self,
        id: JobId,
        caller: &Caller,
        image: &Image,
        carriage: Carriage,
        trace: &TraceContext,
    ) -> Result<(), SubmitError> {
        let mut meta = JobMeta {
            id,
            tenant_id: caller.tenant_id,
            client_id: caller.client_id,
            content_type: Some(image.mime.to_owned()),
            md5: image.md5,
            attempt: 1,
            payload_location: None,
            payload_size: Some(image.bytes.len() as u64),
        };
        let body = match carriage {
            Carriage::Body => image.bytes.clone(),
            Carriage::Reference => {
                let started = std::time::Instant::now();
                let stored = self
                    .blobs
                    .put(id, image.bytes.clone(), image.mime, trace)
                    .await;
                self.metrics.blob_put(started);
                let location = stored.inspect_err(
                    |e| tracing::warn!(job_id = %id, error = %e, "image not stored; job not published"),
                )?;
                meta.payload_location = Some(location);
                meta.md5 = Some(
                    image
                        .md5
                        .or(image.digest)
                        .unwrap_or_else(|| Md5::of(&image.bytes)),
                );
                Bytes::new()
            }
        };
        self.enqueue(&meta, &body, trace).await?;
        Ok(())
    }

    /// Publishes a job, then its QUEUED event. `Ok` means the broker confirmed the job into
    /// the durable work queue and the QUEUED event is confirmed into the stream or kept in
    /// the outbox until it is (so that every replica learns of the job).
    async fn enqueue(
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
        // Known here at once, so that a GET right after the 202 finds it. Not while the
        // index is still loading or replaying: it then answers 503 for ids it does not know,
        // and a snapshot loads only into an index nothing was applied to.
        if self.index.caught_up() {
            self.index.apply(&event);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_decides_how_an_image_travels() {
        let max = 3 * 1024 * 1024;
        let at = |min_bytes| ClaimCheck {
            min_bytes,
            max_image: max,
        };
        assert_eq!(at(65536).carriage(65535), Carriage::Body);
        assert_eq!(at(65536).carriage(65536), Carriage::Reference);
        assert_eq!(at(0).carriage(1), Carriage::Reference);
        assert_eq!(at(max).carriage(max as usize), Carriage::Reference);
        assert_eq!(at(max + 1).carriage(max as usize), Carriage::Body);
        assert_eq!(at(u64::MAX).carriage(max as usize), Carriage::Body);
    }
}
