//! A deployment of the pipeline on the test broker: a prefix no one else uses, its
//! topology, and what a test or benchmark needs to look into its queues and remove it.

use std::time::Duration;

use anyhow::{bail, Context};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::time::Instant;

use imagejobs_core::config::{AmqpUrls, BrokerArgs, RetryDelays, TopologyArgs};
use imagejobs_core::topology::Topology;

use crate::poll::eventually;

/// The broker `make test` started (`AMQP_URL`, one node or a list).
pub fn amqp_urls() -> AmqpUrls {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| {
        panic!("AMQP_URL is not set: run the tests with `make test`, which starts a RabbitMQ node")
    });
    url.parse()
        .unwrap_or_else(|e| panic!("AMQP_URL is not a list of AMQP URLs: {e}"))
}

/// Connects to the first node of `urls` that answers.
pub async fn connect(urls: &AmqpUrls, name: &str) -> anyhow::Result<Connection> {
    let mut last = None;
    for url in &urls.0 {
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        match imagejobs_core::broker::open(url, None, props).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(anyhow::Error::from(e).context(format!("connecting to {url}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no AMQP URL")))
}

/// One prefix's share of the broker.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub prefix: String,
    pub urls: AmqpUrls,
    /// The topology settings every process of the deployment gets.
    pub topology_args: TopologyArgs,
    pub topology: Topology,
}

impl Deployment {
    /// A fresh prefix `<label>-<random>` on the test broker, with delayed retries of 1 and
    /// 2 s (short, so that tests of the delay queues are quick).
    pub fn new(label: &str) -> Deployment {
        Self::on(amqp_urls(), label, &[1, 2])
    }

    /// A fresh prefix on `urls`, with these retry delays (seconds).
    pub fn on(urls: AmqpUrls, label: &str, retry_delays: &[u64]) -> Deployment {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("{label}-{}", &id[..10]);
        let mut topology_args = TopologyArgs::with_prefix(prefix.clone());
        topology_args.retry_delays = RetryDelays(
            retry_delays
                .iter()
                .copied()
                .map(Duration::from_secs)
                .collect(),
        );
        Self::with_args(urls, topology_args)
    }

    pub fn with_args(urls: AmqpUrls, topology_args: TopologyArgs) -> Deployment {
        Deployment {
            prefix: topology_args.amqp_prefix.clone(),
            topology: Topology::new(&topology_args),
            topology_args,
            urls,
        }
    }

    /// Broker settings for a process of this deployment.
    pub fn broker_args(&self) -> BrokerArgs {
        BrokerArgs {
            amqp_url: self.urls.clone(),
            topology: self.topology_args.clone(),
            ..BrokerArgs::default()
        }
    }

    /// A plain connection and channel, for looking into queues.
    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = connect(&self.urls, "imagejobs-testkit")
            .await
            .expect("connect to the test broker");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
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
        let mut queues = t.job_queues();
        queues.extend([t.dead_queue(), t.events_stream(), t.control_stream()]);
        queues.extend(t.retry_delays().iter().map(|d| t.retry_queue(*d)));
        let exchanges = [
            t.jobs_exchange(),
            t.lanes_exchange(),
            t.unrouted_exchange(),
            t.dead_letter_exchange(),
            t.events_exchange(),
            t.control_exchange(),
        ];
        let Ok(mut ch) = conn.create_channel().await else {
            return;
        };
        let deletes = queues
            .iter()
            .map(|q| (q, true))
            .chain(exchanges.iter().map(|e| (e, false)));
        for (name, is_queue) in deletes {
            let done = if is_queue {
                ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map(drop)
            } else {
                ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            };
            if done.is_err() {
                // A failed operation closes the channel; go on with a new one.
                match conn.create_channel().await {
                    Ok(c) => ch = c,
                    Err(_) => return,
                }
            }
        }
        let _ = ch.close(200, "removed".into()).await;
    }

    /// [`Deployment::remove`] on a connection of its own.
    pub async fn cleanup(&self) {
        if let Ok(conn) = connect(&self.urls, "imagejobs-testkit-cleanup").await {
            self.remove(&conn).await;
            let _ = conn.close(200, "bye".into()).await;
        }
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

/// Messages ready in `queue`, on a channel the caller holds.
pub async fn queue_len(ch: &Channel, queue: &str) -> u32 {
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
        .expect("queue exists");
    q.message_count()
}

/// Ready jobs over the work queue's lanes and its queue of last resort.
pub async fn jobs_len(ch: &Channel, topo: &Topology) -> u32 {
    let mut n = 0;
    for q in topo.job_queues() {
        n += queue_len(ch, &q).await;
    }
    n
}

/// One job message from whichever lane of the work queue has one (a tenant's lane is the
/// broker's hash to choose), polling up to `deadline`; taken without an ack.
pub async fn get_job(ch: &Channel, topo: &Topology, deadline: Duration) -> BasicGetMessage {
    let queues = topo.job_queues();
    eventually(deadline, "a job in the work queue's lanes", || async {
        for q in &queues {
            let got = ch
                .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .ok()
                .flatten();
            if got.is_some() {
                return got;
            }
        }
        None
    })
    .await
}

/// Waits until `queue` has at least `n` consumers, polling, up to `deadline`.
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

/// Takes one message from `queue` (acked), waiting for it up to `deadline`.
pub async fn get_one(ch: &Channel, queue: &str, deadline: Duration) -> BasicGetMessage {
    eventually(deadline, &format!("a message in {queue}"), || async {
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .ok()
            .flatten()
    })
    .await
}
