//! Status events the ingress owes the stream: a QUEUED whose publish failed after its job
//! was confirmed (the broker went away between the two publishes).
//!
//! The job is safe in the work queue and the 202 is sent, but every other replica (and a
//! restarted one) learns of the job only from the stream, so the event must get there.
//! The outbox keeps such events (bounded: beyond `capacity` a submit answers 503 instead)
//! and a task publishes them again, across reconnects, until each is confirmed. What it
//! holds is shown on `/readyz` and logged; what it still holds when the process stops is
//! logged as lost (consumers' RUNNING and outcome events then tell the replicas).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use imagejobs_core::backoff::Backoff;
use imagejobs_core::events::EventSink;
use imagejobs_core::status::StatusEvent;

/// Handle to the outbox; clone freely.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<StatusEvent>,
    pending: Arc<AtomicUsize>,
}

/// The outbox is full: the event could not be kept.
#[derive(Debug, thiserror::Error)]
#[error("{0} status events are already waiting for the broker")]
pub struct Full(pub usize);

impl Outbox {
    /// An outbox of at most `capacity` events, drained into `sink` until `shutdown`.
    pub fn start(sink: EventSink, capacity: usize, shutdown: CancellationToken) -> Outbox {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        tokio::spawn(drain(sink, rx, pending.clone(), shutdown));
        Outbox { tx, pending }
    }

    /// Keeps `event` until it is published.
    pub fn push(&self, event: StatusEvent) -> Result<(), Full> {
        // Counted before it is sent, so that the drain never sees a count below zero.
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(event).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            Full(self.pending())
        })
    }

    /// Events waiting for the broker.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// Events published at once when the broker is back.
const BATCH: usize = 256;

async fn drain(
    sink: EventSink,
    mut rx: mpsc::Receiver<StatusEvent>,
    pending: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut batch: Vec<StatusEvent> = Vec::with_capacity(BATCH);
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = rx.recv() => ev,
            };
            let Some(first) = first else { break };
            batch.push(first);
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let results = futures::future::join_all(batch.iter().map(|ev| sink.publish(ev))).await;
        let mut left = Vec::with_capacity(batch.len());
        for (ev, result) in batch.drain(..).zip(results) {
            match result {
                Ok(()) => {
                    pending.fetch_sub(1, Ordering::AcqRel);
                    tracing::info!(job_id = %ev.job_id, "a pending QUEUED event reached the stream");
                }
                Err(_) => left.push(ev),
            }
        }
        batch = left;
        if !batch.is_empty() {
            tracing::warn!(
                pending = pending.load(Ordering::Acquire),
                "status events wait for the broker"
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        } else {
            backoff.reset();
        }
    }
    let lost = pending.load(Ordering::Acquire);
    if lost > 0 {
        tracing::error!(
            lost,
            "stopping with QUEUED events never published; other replicas learn of those jobs from their consumers' events"
        );
    }
}
