//! Feeds the job index from the events stream: from its first offset at start-up, then
//! following it, resuming after the last offset seen whenever the connection is rebuilt.
//!
//! Catching up: after subscribing, the follower publishes a marker event of its own and
//! counts as caught up once it reads that marker back, since everything published before
//! the marker is then in the index.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio_util::sync::CancellationToken;

use super::JobIndex;
use crate::broker::Broker;
use crate::job::{now_rfc3339, ClientId, JobId, StatusEvent, TenantId};

/// Stream prefetch: enough to keep the broker streaming while acks go out in batches.
const PREFETCH: u16 = 2000;
/// Acknowledge every this many deliveries (with `multiple`) rather than each one.
const ACK_EVERY: u64 = 500;

/// Follows the stream until `shutdown`; also evicts jobs older than `max_age`.
pub async fn follow(
    broker: Broker,
    index: JobIndex,
    max_age: Option<Duration>,
    shutdown: CancellationToken,
) {
    if let Some(age) = max_age {
        let (index, shutdown) = (index.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        let n = index.evict_older_than(SystemTime::now() - age);
                        if n > 0 { tracing::info!(evicted = n, "evicted jobs past the stream's retention") }
                    }
                }
            }
        });
    }
    let mut next_offset: Option<i64> = None;
    loop {
        let live = tokio::select! {
            _ = shutdown.cancelled() => return,
            live = broker.wait_live() => live,
        };
        match follow_once(&broker, &live, &index, &mut next_offset, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "events stream subscription ended; resubscribing")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// One subscription; `Ok` only on shutdown.
async fn follow_once(
    broker: &Broker,
    live: &crate::broker::Live,
    index: &JobIndex,
    next_offset: &mut Option<i64>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let topo = broker.topology();
    let channel = live.open_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    let offset = match *next_offset {
        Some(n) => AMQPValue::LongLongInt(n),
        None => AMQPValue::LongString(LongString::from("first")),
    };
    args.insert("x-stream-offset".into(), offset);
    let mut consumer = channel
        .basic_consume(
            topo.events_stream().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;

    let marker = (!index.caught_up()).then(JobId::new);
    if let Some(marker) = marker {
        let ev = StatusEvent {
            job_id: marker,
            tenant_id: TenantId(0),
            client_id: ClientId(0),
            status: "MARKER".into(),
            attempt: 0,
            payload_location: None,
            payload_size: None,
            content_type: None,
            md5: None,
            error: None,
            next_attempt_at: None,
            at: now_rfc3339(),
        };
        broker.publish_event(&ev).await?;
    }

    let mut since_ack = 0u64;
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = live.closed() => anyhow::bail!("connection closed"),
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("stream consumer cancelled"),
        };
        if let Some(AMQPValue::LongLongInt(off)) = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset"))
        {
            *next_offset = Some(off + 1);
        }
        match serde_json::from_slice::<StatusEvent>(&delivery.data) {
            Ok(ev) if Some(ev.job_id) == marker => {
                index.set_caught_up();
                tracing::info!(
                    jobs = index.len(),
                    "job index caught up with the events stream"
                );
            }
            Ok(ev) => {
                index.apply(&ev);
            }
            Err(e) => tracing::debug!(error = %e, "skipping an event that is not a status event"),
        }
        since_ack += 1;
        if since_ack >= ACK_EVERY {
            since_ack = 0;
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
}
