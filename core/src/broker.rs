//! The broker connection: a supervisor that owns it, a pool of confirm channels on it,
//! and confirmed publishing.
//!
//! lapin's automatic recovery has had open bugs around broker restarts (connections and
//! channels reported open that the broker had closed, consumers not re-registered), so we
//! own recovery: a supervisor task connects, declares the topology, publishes the live
//! connection through a `watch` channel, waits for the connection to fail, and starts
//! over with backoff. Nothing is ever re-used from a dead connection: its pooled
//! channels go with it, and deliveries received on it are left for the broker to requeue.
//!
//! Publishing takes a channel from the pool only for the `basic.publish` itself and
//! awaits the confirm after handing the channel back, so many publishes are in flight on
//! each channel and concurrent callers never queue behind one another's confirms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::LongString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{AmqpUrl, AmqpUrls};
use crate::topology::Topology;

/// How to reach the broker and how to publish on it.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The nodes to connect to; the supervisor starts on a random one and moves to the
    /// next whenever a connection fails.
    pub urls: AmqpUrls,
    /// Shown in the broker's management UI and `rabbitmqctl list_connections`.
    pub connection_name: String,
    pub topology: Topology,
    /// Confirm channels kept open for publishing.
    pub channels: usize,
    /// How long a publish may wait for its confirm before it counts as failed.
    pub publish_timeout: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// What a publish does while the broker blocks the connection (resource alarm).
    pub when_blocked: WhenBlocked,
    /// CA certificates (PEM) trusted for `amqps://` nodes besides the system's roots.
    pub tls_ca: Option<String>,
    /// Declare the topology on every connection (the pipeline's processes). Off for an
    /// observer such as `imagejobs top`, whose settings may not be the deployment's.
    pub declare_topology: bool,
}

/// What a publish does while the broker blocks publishers (a memory or disk alarm):
/// publishes then neither fail nor confirm, so waiting for the confirm means waiting for
/// the alarm to clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenBlocked {
    /// Fail at once with [`PublishError::Blocked`] (the ingress: answer 503 now rather
    /// than hold the client for the confirm timeout).
    FailFast,
    /// Wait for the alarm to clear, up to the publish timeout (the consumers: a short
    /// alarm should not return their jobs to the queue).
    Wait,
}

impl BrokerConfig {
    pub fn new(urls: AmqpUrls, name: impl Into<String>, topology: Topology) -> Self {
        BrokerConfig {
            urls,
            connection_name: name.into(),
            topology,
            channels: 8,
            publish_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            when_blocked: WhenBlocked::Wait,
            tls_ca: None,
            declare_topology: true,
        }
    }
}

/// Why a publish did not get a positive confirm. Each case means the broker does *not*
/// hold the message, so the caller may report failure (HTTP 503) or try again. Cloned to
/// every waiter of a group of events.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable")]
    Unavailable,
    #[error("the broker blocks publishers: {0}")]
    Blocked(String),
    #[error("message returned as unroutable: {0}")]
    Returned(String),
    #[error("broker refused the message (queue full or internal error)")]
    Nack,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker channel error: {0}")]
    Channel(#[from] lapin::Error),
    #[error("could not encode the message: {0}")]
    Encode(String),
}

impl PublishError {
    /// Whether the same publish may be confirmed when tried again: the broker was away,
    /// blocked, slow or full. Not an unroutable message or one that cannot be encoded,
    /// which fail the same way every time.
    pub fn may_pass_again(&self) -> bool {
        !matches!(self, PublishError::Returned(_) | PublishError::Encode(_))
    }
}

/// A live connection with its channel pool. Cloned as `Arc`; dropped with the connection.
pub struct Live {
    pub connection: Arc<Connection>,
    /// The node this connection is to.
    pub node: AmqpUrl,
    pool: ChannelPool,
    closed: CancellationToken,
    /// Why the broker blocks this connection's publishes, while it does.
    blocked: watch::Receiver<Option<String>>,
}

impl Live {
    /// A new channel of its own (for consumers, which need their own QoS and must not
    /// share a channel with publishers).
    pub async fn open_channel(&self) -> Result<Channel, lapin::Error> {
        self.connection.create_channel().await
    }

    /// Resolves when this connection has failed or closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    pub fn is_open(&self) -> bool {
        !self.closed.is_cancelled() && self.connection.status().connected()
    }

    /// Why the broker blocks publishing on this connection, while it does.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.borrow().clone()
    }

    /// Resolves when the connection is not blocked (at once when it is not).
    async fn unblocked(&self) {
        let mut rx = self.blocked.clone();
        // An error means the watcher is gone with the connection: nothing will block it.
        let _ = rx.wait_for(Option::is_none).await;
    }

    /// Resolves when the broker blocks the connection.
    async fn blocked_now(&self) -> String {
        let mut rx = self.blocked.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

type ChannelPool = managed::Pool<ChannelManager>;

/// Makes confirm-mode channels on one connection; a channel is reused only while open.
struct ChannelManager {
    connection: Arc<Connection>,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = lapin::Error;

    async fn create(&self) -> Result<Channel, lapin::Error> {
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &Metrics) -> RecycleResult<lapin::Error> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel is closed"))
        }
    }
}

/// Cheap handle to the supervised connection; clone it freely.
#[derive(Clone)]
pub struct Broker {
    config: Arc<BrokerConfig>,
    live: watch::Receiver<Option<Arc<Live>>>,
    /// Connections the supervisor has made (for metrics: more than one means reconnects).
    connections: Arc<AtomicU64>,
}

impl Broker {
    /// Starts the supervisor and returns at once; the connection comes up in the
    /// background (see [`Broker::wait_live`]) and is rebuilt whenever it fails, until
    /// `shutdown` is cancelled.
    pub fn start(config: BrokerConfig, shutdown: CancellationToken) -> Broker {
        let config = Arc::new(config);
        let (tx, rx) = watch::channel(None);
        let connections = Arc::new(AtomicU64::new(0));
        tokio::spawn(supervise(config.clone(), tx, connections.clone(), shutdown));
        Broker {
            config,
            live: rx,
            connections,
        }
    }

    /// How many connections the supervisor has made so far.
    pub fn connections_made(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn topology(&self) -> &Topology {
        &self.config.topology
    }

    /// The current connection, if it is up.
    pub fn live(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone().filter(|l| l.is_open())
    }

    /// Waits until a connection is up (topology declared).
    pub async fn wait_live(&self) -> Arc<Live> {
        let mut rx = self.live.clone();
        loop {
            if let Some(live) = rx.borrow_and_update().clone().filter(|l| l.is_open()) {
                return live;
            }
            if rx.changed().await.is_err() {
                // The supervisor is gone (shutdown): nothing will ever come up.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.live().is_some()
    }

    /// Waits, after `shutdown` was cancelled, until the supervisor has closed the
    /// connection with the broker's handshake. A process that exits before then drops a
    /// socket that may still hold its last acks unread by the broker (an abortive close),
    /// and the broker redelivers jobs that were done.
    pub async fn stopped(&self) {
        let mut rx = self.live.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Why the broker blocks publishers on the current connection, while it does.
    pub fn blocked(&self) -> Option<String> {
        self.live().and_then(|l| l.blocked())
    }

    /// Ready messages and consumers of `queue`, by a passive declare on a channel of its
    /// own (a missing queue closes the channel it is asked on); `None` when unknown.
    pub async fn queue_depth(&self, queue: &str) -> Option<(u32, u32)> {
        self.queue_depths(&[queue.to_owned()]).await.pop().flatten()
    }

    /// The work queue as one figure from its queues' depths ([`Broker::queue_depths`] of
    /// `Topology::job_queues`): the ready messages of all, and the consumers of the first
    /// (each consumer serves every lane); `None` when any is unknown.
    pub fn work_depth(depths: &[Option<(u32, u32)>]) -> Option<(u32, u32)> {
        let known: Option<Vec<(u32, u32)>> = depths.iter().copied().collect();
        let known = known?;
        let ready = known.iter().map(|d| d.0).sum();
        Some((ready, known.first().map_or(0, |d| d.1)))
    }

    /// [`Broker::queue_depth`] of each of `queues` in turn on one channel (the lanes of
    /// the work queue); after a missing queue, the rest are unknown too.
    pub async fn queue_depths(&self, queues: &[String]) -> Vec<Option<(u32, u32)>> {
        use lapin::options::QueueDeclareOptions;
        let mut out = vec![None; queues.len()];
        let Some(channel) = (match self.live() {
            Some(live) => live.open_channel().await.ok(),
            None => None,
        }) else {
            return out;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        for (queue, slot) in queues.iter().zip(out.iter_mut()) {
            match channel
                .queue_declare(
                    queue.as_str().into(),
                    passive,
                    lapin::types::FieldTable::default(),
                )
                .await
            {
                Ok(q) => *slot = Some((q.message_count(), q.consumer_count())),
                Err(_) => break,
            }
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// Publishes one message with `mandatory` and waits for its own confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let live = self.live().ok_or(PublishError::Unavailable)?;
        let timeout = self.config.publish_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(reason) = live.blocked() {
            match self.config.when_blocked {
                WhenBlocked::FailFast => return Err(PublishError::Blocked(reason)),
                WhenBlocked::Wait => tokio::time::timeout_at(deadline, live.unblocked())
                    .await
                    .map_err(|_| PublishError::Blocked(reason))?,
            }
        }
        let confirm = {
            let channel = tokio::time::timeout(timeout, live.pool.get())
                .await
                .map_err(|_| PublishError::Timeout(timeout))?
                .map_err(|e| match e {
                    managed::PoolError::Backend(e) => PublishError::Channel(e),
                    _ => PublishError::Unavailable,
                })?;
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    opts,
                    payload,
                    properties,
                )
                .await?
            // The channel goes back to the pool here, before the confirm arrives.
        };
        let confirmed = async {
            match self.config.when_blocked {
                WhenBlocked::Wait => tokio::time::timeout_at(deadline, confirm).await.ok(),
                // A block that comes while the confirm is awaited ends the wait too.
                WhenBlocked::FailFast => tokio::select! {
                    c = tokio::time::timeout_at(deadline, confirm) => c.ok(),
                    reason = live.blocked_now() => return Err(PublishError::Blocked(reason)),
                },
            }
            .ok_or(PublishError::Timeout(timeout))
        };
        match confirmed.await {
            Err(e) => Err(e),
            Ok(Err(e)) => Err(PublishError::Channel(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(ret)))) => {
                Err(PublishError::Returned(ret.reply_text.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nack),
            // Every pooled channel is in confirm mode; this would be a bug in the pool.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable),
        }
    }
}

/// Connects, declares, publishes the live connection, waits for it to die; repeats.
async fn supervise(
    config: Arc<BrokerConfig>,
    tx: watch::Sender<Option<Arc<Live>>>,
    connections: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    // After every node of the list failed once, wait; never longer than a second, since a
    // node that is coming back (or the home node of a queue) usually is within seconds.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let urls = &config.urls.0;
    // Start on a random node of the list, so that the processes spread over the cluster.
    let mut next = rand::rng().random_range(0..urls.len().max(1));
    let mut failed_in_round = 0usize;
    loop {
        let Some(url) = urls.get(next % urls.len().max(1)) else {
            tracing::error!("no AMQP URL to connect to");
            break;
        };
        next += 1;
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(config.connect_timeout, connect(&config, url)) => r,
        };
        match attempt {
            Ok(Ok(live)) => {
                tracing::info!(name = %config.connection_name, node = %url, "connected to the broker");
                backoff.reset();
                failed_in_round = 0;
                connections.fetch_add(1, Ordering::Relaxed);
                tx.send_replace(Some(live.clone()));
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        tx.send_replace(None);
                        let _ = live.connection.close(200, "shutting down".into()).await;
                        break;
                    }
                    _ = live.closed() => {
                        tracing::warn!(name = %config.connection_name, node = %url, "lost the broker connection; reconnecting to the next node");
                        tx.send_replace(None);
                    }
                }
                // The next node at once: a cluster has others, and a single node that
                // closed the connection may well take it again.
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %url, error = %format!("{e:#}"), "broker connection failed")
            }
            Err(_) => tracing::warn!(node = %url, "broker connection attempt timed out"),
        }
        failed_in_round += 1;
        let delay = if failed_in_round < urls.len() {
            Duration::from_millis(20)
        } else {
            failed_in_round = 0;
            backoff.next_delay()
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tx.send_replace(None);
}

/// One connection to `url`: over TLS for `amqps://`, trusting `tls_ca` (PEM) besides the
/// system's roots. The supervisor's, and that of tools that need a plain connection.
pub async fn open(
    url: &AmqpUrl,
    tls_ca: Option<&str>,
    props: ConnectionProperties,
) -> Result<Connection, lapin::Error> {
    if url.expose().starts_with("amqps:") {
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: tls_ca.map(str::to_owned),
        };
        let runtime = async_rs::Runtime::tokio_current();
        Connection::connect_with_config(url.expose(), props, tls, runtime).await
    } else {
        Connection::connect(url.expose(), props).await
    }
}

async fn connect(config: &BrokerConfig, url: &AmqpUrl) -> anyhow::Result<Arc<Live>> {
    use anyhow::Context;
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(config.connection_name.as_str()));
    let connection = open(url, config.tls_ca.as_deref(), props)
        .await
        .context("connecting")?;
    let closed = CancellationToken::new();
    // A connection reports its failure as an error event; a fallback poll of its status
    // covers a close that comes without one.
    let mut events = connection.events_listener();
    let status = connection.status().clone();
    let watcher = closed.clone();
    let (blocked_tx, blocked) = watch::channel(None);
    let node = url.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Event::Error(e)) => { tracing::debug!(error = %e, "connection error event"); break }
                    Some(Event::ConnectionBlocked(reason)) => {
                        tracing::warn!(%node, %reason, "the broker blocks publishers (resource alarm)");
                        blocked_tx.send_replace(Some(reason));
                    }
                    Some(Event::ConnectionUnblocked) => {
                        tracing::info!(%node, "the broker unblocked publishers");
                        blocked_tx.send_replace(None);
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tick.tick() => if !status.connected() { break },
                _ = watcher.cancelled() => return,
            }
        }
        watcher.cancel();
    });

    let declared = async {
        let channel = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        if config.declare_topology {
            config.topology.declare(&channel).await?;
        }
        let _ = channel.close(200, "declared".into()).await;
        anyhow::Ok(())
    };
    if let Err(e) = declared.await {
        // Do not leave a half-set-up connection open on the broker.
        closed.cancel();
        let _ = connection.close(200, "topology not declared".into()).await;
        return Err(e);
    }

    let connection = Arc::new(connection);
    let pool = ChannelPool::builder(ChannelManager {
        connection: connection.clone(),
    })
    .max_size(config.channels.max(1))
    .build()
    .context("building the channel pool")?;
    Ok(Arc::new(Live {
        connection,
        node: url.clone(),
        pool,
        closed,
        blocked,
    }))
}
