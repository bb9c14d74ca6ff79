//! [`Feed`]: a follower of the `{p}.events` stream over the supervised connection of a
//! [`Broker`]. It subscribes, yields each message with its offset, acknowledges in
//! batches (a stream consumer needs acks to get more credit), and after a lost connection
//! or subscription it subscribes again from the offset after the last message it yielded,
//! so a reader misses nothing and reads little twice.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Consumer};

use crate::backoff::Backoff;
use crate::broker::{Broker, Live};
use crate::message::stream_offset;

/// Where a [`Feed`] starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The first message the stream still holds.
    First,
    /// What is published after subscribing.
    Next,
    /// The message at this offset (and what follows).
    Offset(i64),
    /// The messages published since this time (seconds since the epoch; the stream
    /// finds the chunk that holds it, so a few earlier messages may come too).
    Since(u64),
}

/// What [`Feed::next`] yields.
#[derive(Debug)]
pub enum FeedItem {
    /// A subscription is in place (the first, or a new one after a reconnect): whatever is
    /// published from now on will be read.
    Subscribed,
    /// One stream message: its offset and its body (see [`decode`]).
    Message { offset: Option<i64>, data: Vec<u8> },
}

/// Settings of a [`Feed`].
#[derive(Clone, Copy, Debug)]
pub struct FeedConfig {
    /// Unacknowledged messages the broker may send ahead.
    pub prefetch: u16,
    /// Acknowledge (with `multiple`) every this many messages; below `prefetch`.
    pub ack_every: u32,
}

impl Default for FeedConfig {
    /// Enough to keep the broker streaming; not more, since a message may be a group of
    /// hundreds of events (tens of KiB) and every unacknowledged one is held in memory.
    fn default() -> Self {
        FeedConfig {
            prefetch: 400,
            ack_every: 100,
        }
    }
}

struct Subscription {
    live: Arc<Live>,
    channel: Channel,
    consumer: Consumer,
    since_ack: u32,
}

/// A follower of the events stream; see the module docs.
pub struct Feed {
    broker: Broker,
    /// The stream read: the events stream, or another (the control stream).
    stream: String,
    config: FeedConfig,
    start: Start,
    subscription: Option<Subscription>,
    backoff: Backoff,
}

impl Feed {
    pub fn new(broker: Broker, start: Start) -> Self {
        Self::with_config(broker, start, FeedConfig::default())
    }

    pub fn with_config(broker: Broker, start: Start, config: FeedConfig) -> Self {
        let stream = broker.topology().events_stream();
        Self::of_stream(broker, stream, start, config)
    }

    /// A follower of another stream of the deployment (the control stream).
    pub fn of_stream(broker: Broker, stream: String, start: Start, config: FeedConfig) -> Self {
        Feed {
            broker,
            stream,
            config: FeedConfig {
                prefetch: config.prefetch.max(2),
                ack_every: config
                    .ack_every
                    .clamp(1, u32::from(config.prefetch.max(2)) - 1),
            },
            start,
            subscription: None,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
        }
    }

    /// The next item. Waits for the broker when it is away, and subscribes again after
    /// any failure, so it only returns with something to read. Cancel-safe between
    /// messages: callers `select!` it against their shutdown.
    pub async fn next(&mut self) -> FeedItem {
        loop {
            let Some(sub) = self.subscription.as_mut() else {
                let live = self.broker.wait_live().await;
                match self.subscribe(live).await {
                    Ok(sub) => {
                        self.subscription = Some(sub);
                        return FeedItem::Subscribed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, start = ?self.start, stream = %self.stream, "could not subscribe to a stream; trying again");
                        tokio::time::sleep(self.backoff.next_delay()).await;
                        continue;
                    }
                }
            };
            let next = tokio::select! {
                _ = sub.live.closed() => None,
                next = sub.consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, stream = %self.stream, "stream subscription failed; resubscribing");
                    self.subscription = None;
                    continue;
                }
                None => {
                    tracing::warn!(stream = %self.stream, "stream subscription ended; resubscribing");
                    self.subscription = None;
                    continue;
                }
            };
            self.backoff.reset();
            let offset = stream_offset(&delivery.properties);
            if let Some(off) = offset {
                self.start = Start::Offset(off.saturating_add(1));
            }
            sub.since_ack += 1;
            if sub.since_ack >= self.config.ack_every {
                sub.since_ack = 0;
                if let Err(e) = delivery.acker.ack(BasicAckOptions { multiple: true }).await {
                    tracing::debug!(error = %e, "could not acknowledge stream messages; resubscribing");
                    self.subscription = None;
                }
            }
            return FeedItem::Message {
                offset,
                data: delivery.data,
            };
        }
    }

    /// Where a new subscription would start: after the last message yielded.
    pub fn position(&self) -> Start {
        self.start
    }

    async fn subscribe(&self, live: Arc<Live>) -> Result<Subscription, lapin::Error> {
        let channel = live.open_channel().await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let offset = match self.start {
            Start::First => AMQPValue::LongString(LongString::from("first")),
            Start::Next => AMQPValue::LongString(LongString::from("next")),
            Start::Offset(n) => AMQPValue::LongLongInt(n),
            Start::Since(secs) => AMQPValue::Timestamp(secs),
        };
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), offset);
        let consumer = channel
            .basic_consume(
                self.stream.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        Ok(Subscription {
            live,
            channel,
            consumer,
            since_ack: 0,
        })
    }

    /// Closes the subscription's channel (the connection stays with its broker).
    pub async fn close(mut self) {
        if let Some(sub) = self.subscription.take() {
            let _ = sub.channel.close(200, "done".into()).await;
        }
    }
}
