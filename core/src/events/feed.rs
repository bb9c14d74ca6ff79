//! [`Feed`]: a follower of the `{p}.events` stream over the supervised connection of a
//! [`Broker`]. It subscribes, yields each message with its offset, acknowledges in
//! batches (a stream consumer needs acks to get more credit), and after a lost connection
//! or subscription it subscribes again from the offset after the last message it yielded,
//! so a reader misses nothing and reads little twice.
//!
//! A feed given a [`Marker`] also tells its reader when it has caught up: after each
//! subscription it publishes a marker of its own to the stream it reads, and once it reads
//! one back it yields [`FeedItem::Synced`] (everything published before the marker has
//! been read). One policy for every reader: a marker that is not confirmed, or not read
//! back within [`MARKER_AGAIN`], is published again (a new one; any of them counts).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Consumer};

use crate::backoff::Backoff;
use crate::broker::{Broker, Live, PublishError};
use crate::ids::JobId;
use crate::message::stream_offset;

/// How long a marker may take to come back before another is published.
pub const MARKER_AGAIN: Duration = Duration::from_secs(5);

/// How a feed's reader marks its place in the stream it reads: publishes a marker of its
/// own, and knows one when it reads it.
pub trait Marker: Send + Sync {
    /// Publishes a marker with this id to the stream, confirmed.
    fn publish<'a>(
        &'a self,
        broker: &'a Broker,
        id: JobId,
    ) -> BoxFuture<'a, Result<(), PublishError>>;
    /// Whether a message of the stream holds the marker with this id.
    fn holds(&self, data: &[u8], id: JobId) -> bool;
}

/// The markers published since the last subscription, until one comes back.
struct Pending {
    ids: Vec<JobId>,
    /// The broker connection the subscription was made on (`Broker::connections_made`).
    connection: u64,
    /// When the last marker was published, and whether the broker confirmed it.
    sent: Instant,
    confirmed: bool,
    /// When the first confirmed marker was published (see [`Feed::marker_confirmed_at`]).
    first_confirmed: Option<Instant>,
}

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
    /// With a [`Marker`]: the stream has been read up to a marker published after the
    /// subscription made on broker connection number `connection`, so everything published
    /// before that has been yielded. Follows the message that held the marker.
    Synced { connection: u64 },
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
    marker: Option<Box<dyn Marker>>,
    pending: Option<Pending>,
    /// A marker came back in the last message yielded: `Synced` comes next.
    synced: Option<u64>,
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
            marker: None,
            pending: None,
            synced: None,
        }
    }

    /// Publishes markers with `marker` and yields [`FeedItem::Synced`] when one is back.
    pub fn with_marker(mut self, marker: impl Marker + 'static) -> Self {
        self.marker = Some(Box::new(marker));
        self
    }

    /// When the first marker since the last subscription that the broker confirmed was
    /// published, until one comes back: a reader that must see it within a bound (the
    /// stream may not reach the offset it subscribed at) times it from here.
    pub fn marker_confirmed_at(&self) -> Option<Instant> {
        self.pending.as_ref().and_then(|p| p.first_confirmed)
    }

    /// Publishes another marker for the pending subscription.
    async fn send_marker(&mut self) {
        let (Some(marker), Some(pending)) = (self.marker.as_ref(), self.pending.as_mut()) else {
            return;
        };
        let id = JobId::new();
        pending.ids.push(id);
        pending.sent = Instant::now();
        match marker.publish(&self.broker, id).await {
            Ok(()) => {
                pending.confirmed = true;
                pending.first_confirmed.get_or_insert(pending.sent);
            }
            Err(e) => {
                pending.confirmed = false;
                tracing::warn!(error = %e, stream = %self.stream, "could not publish a marker; publishing another soon");
            }
        }
    }

    /// The next item. Waits for the broker when it is away, and subscribes again after
    /// any failure, so it only returns with something to read. Cancel-safe between
    /// messages: callers `select!` it against their shutdown.
    pub async fn next(&mut self) -> FeedItem {
        if let Some(connection) = self.synced.take() {
            return FeedItem::Synced { connection };
        }
        loop {
            let Some(sub) = self.subscription.as_mut() else {
                let live = self.broker.wait_live().await;
                match self.subscribe(live).await {
                    Ok(sub) => {
                        self.subscription = Some(sub);
                        if self.marker.is_some() {
                            self.pending = Some(Pending {
                                ids: Vec::new(),
                                connection: self.broker.connections_made(),
                                sent: Instant::now(),
                                confirmed: false,
                                first_confirmed: None,
                            });
                            self.send_marker().await;
                        }
                        return FeedItem::Subscribed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, start = ?self.start, stream = %self.stream, "could not subscribe to a stream; trying again");
                        tokio::time::sleep(self.backoff.next_delay()).await;
                        continue;
                    }
                }
            };
            let again = match &self.pending {
                Some(p) if p.confirmed => p.sent + MARKER_AGAIN,
                Some(p) => p.sent + Duration::from_secs(1).min(MARKER_AGAIN),
                None => Instant::now() + Duration::from_secs(3600),
            };
            let next = tokio::select! {
                _ = sub.live.closed() => None,
                next = sub.consumer.next() => next,
                _ = tokio::time::sleep_until(again), if self.pending.is_some() => {
                    self.send_marker().await;
                    continue;
                }
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
            if let (Some(marker), Some(p)) = (self.marker.as_ref(), self.pending.as_ref()) {
                if p.ids.iter().any(|id| marker.holds(&delivery.data, *id)) {
                    self.synced = Some(p.connection);
                    self.pending = None;
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
