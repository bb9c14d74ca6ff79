//! The bench's own side of the broker: its connection, the deployments (prefixes) it
//! creates and removes, pipelined confirmed publishing, and queue inspection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::time::Instant;

use imagejobs::config::TopologyArgs;
use imagejobs::job::{ClientId, JobId, JobMeta, TenantId};
use imagejobs::topology::{Topology, SUBMIT_KEY};

use crate::image::Image;

/// Delays of the delayed-retry tier given to every process of a deployment. Nothing is
/// expected to be retried in a benchmark; one queue keeps the topology complete.
pub const RETRY_DELAYS: &str = "5";

pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(url, props)
        .await
        .with_context(|| format!("connecting to the broker at {}", redact(url)))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// One scenario's share of the broker: a prefix no one else uses, its topology declared
/// as the processes declare it, and removed when the scenario ends.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub prefix: String,
    pub topology: Topology,
}

impl Deployment {
    /// A fresh prefix `bench-<label>-<random>`.
    pub fn new(label: &str) -> Deployment {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("bench-{label}-{}", &id[..10]);
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            topology: TopologyArgs,
        }
        let mut argv = vec!["bench".to_owned()];
        argv.extend(Self::flags_of(&prefix));
        let args = Args::parse_from(argv);
        Deployment {
            topology: Topology::new(&args.topology),
            prefix,
        }
    }

    fn flags_of(prefix: &str) -> Vec<String> {
        vec![
            "--amqp-prefix".into(),
            prefix.into(),
            "--retry-delays".into(),
            RETRY_DELAYS.into(),
        ]
    }

    /// The topology flags every process of this deployment gets.
    pub fn flags(&self) -> Vec<String> {
        Self::flags_of(&self.prefix)
    }

    pub async fn declare(&self, conn: &Connection) -> anyhow::Result<()> {
        let ch = conn.create_channel().await?;
        self.topology
            .declare(&ch)
            .await
            .with_context(|| format!("declaring the topology of {}", self.prefix))?;
        let _ = ch.close(200, "declared".into()).await;
        Ok(())
    }

    /// Deletes every queue and exchange of the prefix (best effort; stop the processes
    /// first, or they declare it all again).
    pub async fn remove(&self, conn: &Connection) {
        let t = &self.topology;
        let mut queues = vec![t.work_queue(), t.dead_queue(), t.events_stream()];
        queues.extend(t.retry_delays().iter().map(|d| t.retry_queue(*d)));
        let exchanges = [
            t.jobs_exchange(),
            t.dead_letter_exchange(),
            t.events_exchange(),
        ];
        let Ok(mut ch) = conn.create_channel().await else {
            return;
        };
        for q in queues {
            if ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .is_err()
            {
                // A failed operation closes the channel; go on with a new one.
                match conn.create_channel().await {
                    Ok(c) => ch = c,
                    Err(_) => return,
                }
            }
        }
        for e in exchanges {
            if ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .is_err()
            {
                match conn.create_channel().await {
                    Ok(c) => ch = c,
                    Err(_) => return,
                }
            }
        }
        let _ = ch.close(200, "removed".into()).await;
    }
}

/// Messages ready in `queue` and consumers subscribed to it.
pub async fn queue_counts(conn: &Connection, queue: &str) -> anyhow::Result<(u32, u32)> {
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("looking at queue {queue}"))?;
    let _ = ch.close(200, "looked".into()).await;
    Ok((q.message_count(), q.consumer_count()))
}

/// Waits until `queue` has `n` consumers, polling, up to `deadline`.
pub async fn wait_consumers(
    conn: &Connection,
    queue: &str,
    n: u32,
    deadline: Duration,
) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    loop {
        let (_, consumers) = queue_counts(conn, queue).await?;
        if consumers >= n {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{queue} has {consumers} consumers after {deadline:?}, not {n}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn purge(conn: &Connection, queue: &str) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    let _ = ch.close(200, "purged".into()).await;
    Ok(())
}

/// One message to publish.
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Bytes,
    pub properties: BasicProperties,
}

/// Makes message number `i` of a batch.
pub type MakeMessage = Arc<dyn Fn(usize) -> Outgoing + Send + Sync>;

/// Publishes `count` messages, each `mandatory` and persistent as the pipeline publishes,
/// on `channels` confirm channels with up to `window` publishes in flight on each, every
/// publish awaiting its own confirm. Returns the time from the first publish to the last
/// confirm.
pub async fn publish_confirmed(
    conn: &Connection,
    channels: usize,
    window: usize,
    count: usize,
    make: MakeMessage,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut chans = Vec::with_capacity(channels);
    for _ in 0..channels.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        chans.push(ch);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ch in chans {
        let (next, make) = (next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            let mut exhausted = false;
            loop {
                while !exhausted && inflight.len() < window.max(1) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        exhausted = true;
                        break;
                    }
                    let m = make(i);
                    let opts = BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    };
                    let confirm = ch
                        .basic_publish(
                            m.exchange.as_str().into(),
                            m.routing_key.as_str().into(),
                            opts,
                            &m.body,
                            m.properties,
                        )
                        .await?;
                    inflight.push(confirm);
                }
                match inflight.next().await {
                    None => break,
                    Some(confirmation) => match confirmation? {
                        Confirmation::Ack(None) => {}
                        Confirmation::Ack(Some(ret)) => {
                            bail!("message returned as unroutable: {}", ret.reply_text)
                        }
                        Confirmation::Nack(_) => bail!("the broker refused a message (nack)"),
                        Confirmation::NotRequested => bail!("channel not in confirm mode"),
                    },
                }
            }
            let _ = ch.close(200, "published".into()).await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("publisher task")??;
    }
    Ok(started.elapsed())
}

/// A job message exactly as DESIGN §4 says a direct publisher sends one: raw bytes, a UUID
/// `message_id`, integer `tenant_id`/`client_id` headers, the content type and the MD5.
pub fn job_message(deployment: &Deployment, image: &Image) -> MakeMessage {
    let exchange = deployment.topology.jobs_exchange();
    let image = image.clone();
    Arc::new(move |i| {
        let meta = JobMeta {
            id: JobId::new(),
            tenant_id: TenantId(1 + (i % 100) as i64),
            client_id: ClientId(1),
            content_type: Some("image/png".into()),
            md5: Some(image.md5),
            attempt: 1,
            payload_location: None,
            payload_size: Some(image.png.len() as u64),
        };
        Outgoing {
            exchange: exchange.clone(),
            routing_key: SUBMIT_KEY.into(),
            body: image.png.clone(),
            properties: meta.to_properties(),
        }
    })
}
