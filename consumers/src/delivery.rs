//! One delivery, from validation to ack: decides its [`Outcome`] (validation, the
//! delivery limit, or an attempt through the [`Pipeline`]), asks `outcome::settle` what
//! that means, and carries the [`Settlement`] out.
//!
//! Every path ends in exactly one of: ack after the copy (if any) and the event are
//! confirmed by the broker; or nack with requeue when they are not, or when the attempt
//! was abandoned, so that nothing is lost.
//!
//! Once an attempt is decided, its copy and event are published again while their
//! confirm does not come (for up to [`OUTCOME_HOLD`]), holding the delivery, rather than
//! returned to the queue at the first failure. A publish whose confirm timed out may still
//! land (one sent just as an alarm blocks the connection waits in the socket, and is
//! confirmed once the alarm clears): a requeue would then run the job again beside an
//! outcome already recorded, and that second run may end otherwise (a retry, the delivery
//! limit). Publishing the same outcome twice only repeats an event, which readers take
//! once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use imagejobs_core::backoff::Backoff;
use imagejobs_core::broker::{Broker, PublishError};
use imagejobs_core::events::EventSink;
use imagejobs_core::message::{
    copied_headers, delivery_count, header, trace_of, JobMessage, JobMeta,
};
use imagejobs_core::status::{Status, StatusEvent};
use imagejobs_core::trace::TraceContext;

use crate::cancels::Cancels;
use crate::metrics::{ConsumerMetrics, DeadReason, Stage};
use crate::outcome::{self, Copy, Mark, Outcome, Route, Settlement, Then};
use crate::pipeline::Pipeline;

/// How long a decided outcome's copy and event are published again while their confirm
/// does not come, before the delivery is returned to the queue: longer than a resource
/// alarm or a node's restart usually lasts, far shorter than the broker's consumer timeout.
pub const OUTCOME_HOLD: Duration = Duration::from_secs(60);

/// Counters of one consumer process, for tests and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries acked after their outcome was recorded.
    pub acked: AtomicU64,
    /// Deliveries returned to the queue (outcome not recorded, or attempt abandoned).
    pub requeued: AtomicU64,
}

/// What every delivery task shares.
pub struct Handler {
    pub broker: Broker,
    pub events: EventSink,
    pub pipeline: Pipeline,
    pub stats: Arc<Stats>,
    /// Cancels read from the control stream.
    pub cancels: Arc<Cancels>,
    pub metrics: Arc<ConsumerMetrics>,
    /// Largest image a job may carry (`MAX_BODY_BYTES`).
    pub max_body: usize,
}

impl Handler {
    /// Processes one delivery and settles it. `abandon` is cancelled when the consumer
    /// stops waiting for its jobs (drain timeout).
    pub async fn handle(&self, delivery: Delivery, abandon: &CancellationToken) {
        let Delivery {
            properties,
            data,
            acker,
            redelivered,
            ..
        } = delivery;
        let _in_flight = self.metrics.delivered(redelivered);
        let body = Bytes::from(data);
        // The submit's trace, or a new one for a direct publish that carries none.
        let trace = trace_of(&properties)
            .map(|t| t.child())
            .unwrap_or_else(|| TraceContext::continue_or_start(None, None));
        let span = tracing::info_span!(
            "job",
            trace_id = %trace.parent.trace_hex(),
            job_id = properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str())
                .unwrap_or("-"),
            tenant_id = header_int(&properties, header::TENANT_ID),
        );
        imagejobs_core::telemetry::link(&span, &trace.parent);
        let then = async {
            let (settlement, dead) = self
                .decide(&properties, body.clone(), abandon, &trace)
                .await;
            let status = settlement
                .event
                .as_ref()
                .map(|e| ConsumerMetrics::status_label(&e.status));
            let delayed = matches!(
                settlement.copy,
                Some(Copy {
                    route: Route::Retry(_),
                    ..
                })
            );
            let then = self
                .carry_out(&properties, &body, settlement, abandon)
                .await;
            if then == Then::Ack {
                self.metrics.settled(status, dead, delayed);
                tracing::info!(status = status.unwrap_or("-"), "job settled");
            }
            then
        }
        .instrument(span)
        .await;
        let (result, counter) = match then {
            Then::Ack => (
                acker.ack(BasicAckOptions::default()).await,
                &self.stats.acked,
            ),
            Then::Requeue => {
                let nack = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                (acker.nack(nack).await, &self.stats.requeued)
            }
        };
        match result {
            Ok(_) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // The channel is gone; the broker requeues the delivery by itself.
            Err(e) => tracing::debug!(error = %e, "could not settle a delivery"),
        }
    }

    async fn decide(
        &self,
        props: &BasicProperties,
        body: Bytes,
        abandon: &CancellationToken,
        trace: &TraceContext,
    ) -> (Settlement, Option<DeadReason>) {
        let delays = self.broker.topology().retry_delays();
        if body.len() > self.max_body {
            let why = format!(
                "body of {} bytes is over MAX_BODY_BYTES ({})",
                body.len(),
                self.max_body
            );
            let meta = JobMeta::parse(props).ok();
            return settled(meta.as_ref(), Outcome::Invalid(why), delays);
        }
        let job = match JobMessage::validate(props, body) {
            Ok(job) => job,
            Err((why, meta)) => {
                let outcome = Outcome::Invalid(why.to_string());
                return settled(meta.as_deref(), outcome, delays);
            }
        };
        let meta = &job.meta;
        // A stored image is bounded as a body is: the worker would fetch all of it.
        if job.body.is_empty() {
            if let Some(size) = meta.payload_size.filter(|&n| n > self.max_body as u64) {
                let why = format!(
                    "payload_size of {size} bytes is over MAX_BODY_BYTES ({})",
                    self.max_body
                );
                return settled(Some(meta), Outcome::Invalid(why), delays);
            }
        }
        // A cancelled job never reaches the worker; one cancelled while it runs is dropped.
        let Some(tracked) = self.cancels.track(meta.id) else {
            tracing::info!(job_id = %meta.id, "job cancelled before it ran");
            return settled(Some(meta), Outcome::Cancelled, delays);
        };
        let redeliveries = delivery_count(props);
        let limit = self.broker.topology().delivery_limit();
        if redeliveries > 0 && redeliveries + 1 >= limit {
            let outcome = Outcome::DeliveryLimit {
                deliveries: redeliveries + 1,
            };
            return settled(Some(meta), outcome, delays);
        }
        // RUNNING is informative: it goes out first, and its confirm is awaited alongside
        // the work rather than before it; if it is lost the index moves on with the outcome.
        let running = StatusEvent::new(meta, Status::Running);
        let running = self.events.publish(&running);
        let attempt = self.pipeline.run(&job, abandon, tracked.token(), trace);
        let (running, outcome) = tokio::join!(running, attempt);
        if let Err(e) = running {
            tracing::debug!(job_id = %meta.id, error = %e, "RUNNING event not confirmed");
        }
        settled(Some(meta), outcome, delays)
    }

    /// Publishes the copy, then the event, each until it is confirmed; `Requeue` when
    /// either is not confirmed within [`OUTCOME_HOLD`] or before `abandon`.
    async fn carry_out(
        &self,
        props: &BasicProperties,
        body: &[u8],
        s: Settlement,
        abandon: &CancellationToken,
    ) -> Then {
        let job_id = s.event.as_ref().map(|e| e.job_id);
        let until = tokio::time::Instant::now() + OUTCOME_HOLD;
        if let Some(copy) = &s.copy {
            log_copy(copy, s.event.as_ref());
            let published = self
                .until_confirmed(until, abandon, || self.publish_copy(props, body, copy))
                .await;
            if let Err(e) = published {
                tracing::warn!(?job_id, error = %e, "could not publish the job's copy; returning it to the queue");
                return Then::Requeue;
            }
        }
        if let Some(event) = &s.event {
            let started = std::time::Instant::now();
            let published = self
                .until_confirmed(until, abandon, || self.events.publish(event))
                .await;
            self.metrics.stage(Stage::Event, started);
            if let Err(e) = published {
                tracing::warn!(?job_id, error = %e, "could not record the job's outcome; returning it to the queue");
                return Then::Requeue;
            }
        }
        s.then
    }

    /// Runs `publish` until it is confirmed, it fails in a way that would fail again, or
    /// `until` or `abandon` comes; with a backoff between tries.
    async fn until_confirmed<F, Fut>(
        &self,
        until: tokio::time::Instant,
        abandon: &CancellationToken,
        mut publish: F,
    ) -> Result<(), PublishError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), PublishError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            let e = match publish().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let wait = backoff.next_delay();
            if !e.may_pass_again() || tokio::time::Instant::now() + wait >= until {
                return Err(e);
            }
            tracing::info!(error = %e, "the outcome was not confirmed; publishing it again");
            tokio::select! {
                _ = abandon.cancelled() => return Err(e),
                _ = tokio::time::sleep(wait) => {}
            }
            self.metrics.outcome_retry();
        }
    }

    async fn publish_copy(
        &self,
        props: &BasicProperties,
        body: &[u8],
        copy: &Copy,
    ) -> Result<(), PublishError> {
        let topo = self.broker.topology();
        let (exchange, key) = match copy.route {
            Route::Retry(delay) => (String::new(), topo.retry_queue(delay)),
            Route::DeadLetter => (topo.dead_letter_exchange(), String::new()),
        };
        let mark = match &copy.mark {
            Mark::Attempt(n) => (header::ATTEMPT, AMQPValue::LongLongInt(i64::from(*n))),
            Mark::Error(why) => (
                header::ERROR,
                AMQPValue::LongString(LongString::from(why.as_str())),
            ),
        };
        let headers = copied_headers(props, |_| true, mark);
        self.broker
            .publish(&exchange, &key, body, props.clone().with_headers(headers))
            .await
    }
}

/// The settlement of `outcome`, and why it dead-letters the job when it does.
fn settled(
    job: Option<&JobMeta>,
    outcome: Outcome,
    delays: &[std::time::Duration],
) -> (Settlement, Option<DeadReason>) {
    let reason = match &outcome {
        Outcome::Invalid(_) => Some(DeadReason::Invalid),
        Outcome::Permanent(_) => Some(DeadReason::Permanent),
        Outcome::Transient(_) => Some(DeadReason::Exhausted),
        Outcome::DeliveryLimit { .. } => Some(DeadReason::DeliveryLimit),
        _ => None,
    };
    let s = outcome::settle(job, outcome, delays, SystemTime::now());
    let dead = matches!(
        s.copy,
        Some(Copy {
            route: Route::DeadLetter,
            ..
        })
    );
    (s, reason.filter(|_| dead))
}

/// An integer header for the span (`tracing` records `None` as absent).
fn header_int(props: &BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn log_copy(copy: &Copy, event: Option<&StatusEvent>) {
    let job_id = event.map(|e| e.job_id);
    match (&copy.route, &copy.mark) {
        (Route::Retry(delay), _) => {
            let error = event.and_then(|e| e.error.as_deref()).unwrap_or_default();
            tracing::info!(?job_id, %error, delay_s = delay.as_secs(), "retrying later");
        }
        (Route::DeadLetter, Mark::Error(why)) => {
            tracing::warn!(?job_id, %why, "dead-lettering");
        }
        (Route::DeadLetter, _) => tracing::warn!(?job_id, "dead-lettering"),
    }
}
