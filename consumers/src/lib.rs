//! imagejobs-consumer: takes jobs from the work queue and drives each through the blob
//! and worker services, reporting every status change as an event.
//!
//! # Layout
//! - [`config`] holds the settings.
//! - `consumer` (this file): the subscription loop, prefetch, reconnects and draining.
//! - `job`: one delivery from validation to ack, with the delayed-retry and dead-letter
//!   tiers.
//! - `pipeline`: the service calls of one attempt; `retry`: the in-process retry tier;
//!   `services`: the HTTP clients.

pub mod config;
mod job;
mod pipeline;
pub mod retry;
pub mod services;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use imagejobs::broker::{Broker, BrokerConfig, Live};
use imagejobs::topology::Topology;

pub use config::ConsumerConfig;
use retry::RetryPolicy;
use services::Services;

/// Counters of one consumer process, for tests and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries acked after their outcome was recorded.
    pub acked: AtomicU64,
    /// Deliveries returned to the queue because the outcome could not be recorded.
    pub requeued: AtomicU64,
}

/// What every job task shares.
pub struct Context {
    stats: Arc<Stats>,
    broker: Broker,
    services: Services,
    retry: RetryPolicy,
    job_timeout: Duration,
    delivery_limit: u32,
}

/// Consumes until `shutdown`, then stops taking deliveries, lets the jobs in flight
/// finish (up to the drain timeout) and returns.
pub async fn run(config: ConsumerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_stats(config, shutdown, Arc::default()).await
}

/// [`run`], counting into `stats`.
pub async fn run_with_stats(
    config: ConsumerConfig,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    let topology = Topology::new(&config.broker.topology);
    let mut broker_config =
        BrokerConfig::new(&config.broker.amqp_url, "imagejobs-consumer", topology);
    broker_config.channels = 4;
    // The connection must outlive the drain: acks of finishing jobs travel on it.
    let broker_stop = CancellationToken::new();
    let broker = Broker::start(broker_config, broker_stop.clone());
    let services = Services::new(
        &config.blob_service_url,
        &config.worker_service_url,
        Duration::from_secs(config.http_timeout_secs),
        usize::from(config.prefetch),
    )?;
    let ctx = Arc::new(Context {
        stats,
        broker: broker.clone(),
        services,
        retry: RetryPolicy {
            max_attempts: config.retry_max_attempts,
            base: Duration::from_millis(config.retry_base_delay_ms),
            max_delay: Duration::from_millis(config.retry_max_delay_ms),
        },
        job_timeout: config.job_timeout(),
        delivery_limit: config.broker.topology.queue_delivery_limit,
    });
    let tracker = TaskTracker::new();
    let mut held: Option<Channel> = None;
    loop {
        let live = tokio::select! {
            _ = shutdown.cancelled() => break,
            live = broker.wait_live() => live,
        };
        match consume(&ctx, &live, config.prefetch, &tracker, &shutdown).await {
            Ok(channel) => {
                held = Some(channel);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "job subscription ended; resubscribing")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    tracker.close();
    let drain = Duration::from_secs(config.drain_timeout_secs);
    tracing::info!(in_flight = tracker.len(), "draining jobs in flight");
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "drain timeout; the broker will redeliver what is left"
        );
    }
    drop(held);
    broker_stop.cancel();
    Ok(())
}

/// One subscription on one channel. Returns the channel (still open, so that jobs in
/// flight can ack) on shutdown, an error when the subscription or connection ends.
async fn consume(
    ctx: &Arc<Context>,
    live: &Live,
    prefetch: u16,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Channel> {
    let channel = live.open_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let queue = ctx.broker.topology().work_queue();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%queue, prefetch, "consuming");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                return Ok(channel);
            }
            _ = live.closed() => anyhow::bail!("broker connection lost"),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    tracker.spawn(async move { job::handle(&ctx, delivery).await });
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the broker cancelled the subscription"),
            },
        }
    }
}
