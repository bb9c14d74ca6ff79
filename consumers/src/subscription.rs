//! The subscription to the work queue on one live connection: prefetch, one task per
//! delivery, and what ends it (shutdown, a lost connection, a cancelled consumer).

use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use imagejobs_core::broker::Live;

use crate::delivery::Handler;

/// What the subscription needs beyond the connection.
pub struct Subscription<'a> {
    pub handler: &'a Arc<Handler>,
    pub prefetch: u16,
    /// Where the delivery tasks are spawned, so that the consumer can wait for them.
    pub tracker: &'a TaskTracker,
    /// Cancelled when the consumer stops waiting for its jobs.
    pub abandon: &'a CancellationToken,
}

impl Subscription<'_> {
    /// Consumes on a channel of its own until `shutdown` (then returns the channel, still
    /// open, so that jobs in flight can ack on it), or fails when the subscription or the
    /// connection ends (the caller subscribes again).
    pub async fn run(&self, live: &Live, shutdown: &CancellationToken) -> anyhow::Result<Channel> {
        let channel = live.open_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let queue = self.handler.broker.topology().work_queue();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(%queue, prefetch = self.prefetch, "consuming");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                    return Ok(channel);
                }
                _ = live.closed() => anyhow::bail!("broker connection lost"),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let (handler, abandon) = (self.handler.clone(), self.abandon.clone());
                        self.tracker.spawn(async move { handler.handle(delivery, &abandon).await });
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the broker cancelled the subscription"),
                },
            }
        }
    }
}
