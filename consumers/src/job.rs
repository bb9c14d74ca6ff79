//! One delivery, from validation to ack (DESIGN §5).
//!
//! Every path ends in exactly one of: ack after the outcome event (and, where there is
//! one, the retry or dead-letter message) is confirmed by the broker; or nack with
//! requeue when the broker would not confirm them, so that nothing is lost.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use tracing::Instrument;

use imagejobs::broker::PublishError;
use imagejobs::job::{header, JobMessage, JobMeta, Status, StatusEvent};

use crate::pipeline::Outcome;
use crate::Context;

/// Processes one delivery and settles it.
pub async fn handle(ctx: &Context, delivery: Delivery) {
    let Delivery {
        properties,
        data,
        acker,
        ..
    } = delivery;
    let body = Bytes::from(data);
    let span = tracing::info_span!(
        "job",
        message_id = properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str())
            .unwrap_or("-"),
    );
    let settled = settle(ctx, &properties, body).instrument(span).await;
    let (result, counter) = match settled {
        Ok(()) => (
            acker.ack(BasicAckOptions::default()).await,
            &ctx.stats.acked,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not record the job's outcome; returning it to the queue");
            let nack = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            (acker.nack(nack).await, &ctx.stats.requeued)
        }
    };
    match result {
        Ok(_) => {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // The channel is gone; the broker requeues the delivery by itself.
        Err(e) => tracing::debug!(error = %e, "could not settle a delivery"),
    }
}

/// Everything up to the ack. `Err` means: do not ack, requeue.
async fn settle(ctx: &Context, props: &BasicProperties, body: Bytes) -> Result<(), PublishError> {
    let job = match JobMessage::validate(props, body.clone()) {
        Ok(job) => job,
        Err((why, meta)) => {
            tracing::warn!(reason = %why, "invalid job message; dead-lettering it");
            return dead_letter(ctx, props, &body, meta.as_deref(), &why.to_string()).await;
        }
    };
    let meta = &job.meta;

    let redeliveries = delivery_count(props);
    if redeliveries > 0 && redeliveries + 1 >= ctx.delivery_limit {
        let why = format!(
            "delivered {} times without an outcome (consumers crashed or lost the broker while holding it)",
            redeliveries + 1
        );
        return dead_letter(ctx, props, &body, Some(meta), &why).await;
    }

    // RUNNING is informative: it goes out first, and its confirm is awaited alongside the
    // work rather than before it; if it is lost the index moves on with the outcome.
    let running = publish_event(ctx, StatusEvent::new(meta, Status::Running));
    let (running, outcome) = tokio::join!(running, crate::pipeline::run(ctx, &job));
    if let Err(e) = running {
        tracing::debug!(job_id = %meta.id, error = %e, "RUNNING event not confirmed");
    }

    match outcome {
        Outcome::Success { payload_location } => {
            let mut ev = StatusEvent::new(meta, Status::Success);
            ev.payload_location = Some(payload_location);
            tracing::debug!(job_id = %meta.id, "job succeeded");
            publish_event(ctx, ev).await
        }
        Outcome::WorkerFailed(error) => {
            tracing::info!(job_id = %meta.id, %error, "worker reports the job FAILED");
            publish_event(
                ctx,
                StatusEvent::new(meta, Status::Failed).with_error(error),
            )
            .await
        }
        Outcome::Permanent(error) => {
            tracing::warn!(job_id = %meta.id, %error, "permanent failure; dead-lettering");
            dead_letter(ctx, props, &body, Some(meta), &error).await
        }
        Outcome::Transient(error) => retry_later(ctx, props, &body, meta, &error).await,
    }
}

/// Tier 2 of the retries: the next delay queue, or the dead queue after the last one.
async fn retry_later(
    ctx: &Context,
    props: &BasicProperties,
    body: &[u8],
    meta: &JobMeta,
    error: &str,
) -> Result<(), PublishError> {
    let topo = ctx.broker.topology();
    let Some(delay) = topo.retry_delays().get(meta.attempt as usize - 1).copied() else {
        let why = format!("gave up after {} attempts: {error}", meta.attempt);
        tracing::warn!(job_id = %meta.id, %why, "dead-lettering");
        return dead_letter(ctx, props, body, Some(meta), &why).await;
    };
    let next = props.clone().with_headers(with_header(
        props,
        header::ATTEMPT,
        AMQPValue::LongLongInt(i64::from(meta.attempt) + 1),
    ));
    ctx.broker
        .publish("", &topo.retry_queue(delay), body, next)
        .await?;
    let mut ev = StatusEvent::new(meta, Status::Retrying).with_error(error);
    ev.next_attempt_at =
        Some(humantime::format_rfc3339_millis(SystemTime::now() + delay).to_string());
    tracing::info!(job_id = %meta.id, %error, delay_s = delay.as_secs(), "retrying later");
    publish_event(ctx, ev).await
}

/// Publishes the message, reason added in `x-error`, to the dead-letter exchange, then
/// the FAILED event when there is a job to report on.
async fn dead_letter(
    ctx: &Context,
    props: &BasicProperties,
    body: &[u8],
    meta: Option<&JobMeta>,
    why: &str,
) -> Result<(), PublishError> {
    let topo = ctx.broker.topology();
    let dead = props.clone().with_headers(with_header(
        props,
        header::ERROR,
        AMQPValue::LongString(LongString::from(why)),
    ));
    ctx.broker
        .publish(&topo.dead_letter_exchange(), "", body, dead)
        .await?;
    match meta {
        Some(meta) => {
            publish_event(ctx, StatusEvent::new(meta, Status::Failed).with_error(why)).await
        }
        None => Ok(()),
    }
}

async fn publish_event(ctx: &Context, event: StatusEvent) -> Result<(), PublishError> {
    ctx.broker.publish_event(&event).await
}

/// The message's headers with `name` set, and without the broker's delivery count (a
/// copy is a new message: a stale count would make it look redelivered).
fn with_header(props: &BasicProperties, name: &str, value: AMQPValue) -> FieldTable {
    let mut headers = FieldTable::default();
    for (k, v) in props
        .headers()
        .as_ref()
        .map(|h| h.inner().iter())
        .into_iter()
        .flatten()
    {
        if k.as_str() != "x-delivery-count" {
            headers.insert(k.clone(), v.clone());
        }
    }
    headers.insert(name.into(), value);
    headers
}

/// How often the broker has delivered this message before (quorum queues count it).
fn delivery_count(props: &BasicProperties) -> u32 {
    match props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
    {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        _ => 0,
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
    fn copies_drop_the_delivery_count_and_keep_the_rest() {
        let mut h = FieldTable::default();
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(4));
        h.insert("tenant_id".into(), AMQPValue::LongLongInt(1));
        let props = BasicProperties::default().with_headers(h);
        assert_eq!(delivery_count(&props), 4);
        let copy = with_header(&props, header::ATTEMPT, AMQPValue::LongLongInt(2));
        assert!(copy.inner().get("x-delivery-count").is_none());
        assert_eq!(
            copy.inner().get("tenant_id"),
            Some(&AMQPValue::LongLongInt(1))
        );
        assert_eq!(
            copy.inner().get("x-attempt"),
            Some(&AMQPValue::LongLongInt(2))
        );
    }

    #[test]
    fn polls_start_fast_and_settle_at_a_second() {
        assert_eq!(poll_interval(0), Duration::from_millis(10));
        assert!(poll_interval(3) > poll_interval(2));
        assert_eq!(poll_interval(50), Duration::from_secs(1));
    }
}
