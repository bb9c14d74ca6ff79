//! The bench's own publishing: pipelined confirmed publishes of job messages, as the raw
//! ceiling and the pre-filled work queues need them. Deployments, connections and queue
//! inspection come from `imagejobs-testkit`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection};
use tokio::time::Instant;

use imagejobs_core::ids::{ClientId, JobId, TenantId};
use imagejobs_core::message::JobMeta;
use imagejobs_core::topology::SUBMIT_KEY;
use imagejobs_testkit::Deployment;

use crate::image::Image;

/// Delays (s) of the delayed-retry tier given to every process of a deployment. Nothing
/// is expected to be retried in a benchmark; one queue keeps the topology complete.
pub const RETRY_DELAYS: &[u64] = &[5];

/// One message to publish.
#[derive(Clone)]
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
    publish_confirmed_on(&[conn], channels, window, count, make).await
}

/// [`publish_confirmed`] with the channels spread over several connections.
pub async fn publish_confirmed_on(
    conns: &[&Connection],
    channels: usize,
    window: usize,
    count: usize,
    make: MakeMessage,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut chans = Vec::with_capacity(channels);
    for i in 0..channels.max(1) {
        let conn = conns
            .get(i % conns.len().max(1))
            .context("no connection to publish on")?;
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

/// A job message exactly as docs/amqp.md says a direct publisher sends one: raw bytes, a UUID
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
