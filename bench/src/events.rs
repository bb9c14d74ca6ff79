//! A reader of a deployment's events stream that timestamps each job's SUCCESS as it
//! arrives, as the ingress's index follower sees it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Connection;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PREFETCH: u16 = 1000;
const ACK_EVERY: u64 = 200;

#[derive(Deserialize)]
struct Event<'a> {
    job_id: Uuid,
    #[serde(borrow)]
    status: Cow<'a, str>,
}

#[derive(Default)]
struct Seen {
    /// First SUCCESS of each job, by job id.
    success: HashMap<Uuid, Instant>,
    /// The same instants in arrival order.
    order: Vec<Instant>,
    failed: usize,
}

/// Follows `{p}.events` from its first offset until stopped.
pub struct EventWatch {
    seen: Arc<Mutex<Seen>>,
    count: watch::Receiver<usize>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl EventWatch {
    pub async fn start(conn: &Connection, stream: &str) -> anyhow::Result<EventWatch> {
        let ch = conn.create_channel().await?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString(LongString::from("first")),
        );
        let mut consumer = ch
            .basic_consume(
                stream.into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .with_context(|| format!("subscribing to {stream}"))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, count) = watch::channel(0usize);
        let stop = CancellationToken::new();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut since_ack = 0u64;
            loop {
                let delivery = tokio::select! {
                    _ = stop2.cancelled() => break,
                    d = consumer.next() => d,
                };
                let delivery = match delivery {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("the events stream subscription ended"),
                };
                let now = Instant::now();
                if let Ok(ev) = serde_json::from_slice::<Event<'_>>(&delivery.data) {
                    let mut seen = seen2.lock().unwrap_or_else(|p| p.into_inner());
                    match ev.status.as_ref() {
                        "SUCCESS" if seen.success.insert(ev.job_id, now).is_none() => {
                            seen.order.push(now);
                            tx.send_replace(seen.order.len());
                        }
                        "FAILED" => seen.failed += 1,
                        _ => {}
                    }
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
            let _ = ch.close(200, "done".into()).await;
            Ok(())
        });
        Ok(EventWatch {
            seen,
            count,
            stop,
            task,
        })
    }

    /// Waits until `n` jobs have a SUCCESS, up to `deadline`.
    pub async fn wait_for(&mut self, n: usize, deadline: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let have = *self.count.borrow_and_update();
            if have >= n {
                return Ok(());
            }
            if self.task.is_finished() {
                bail!("the events reader stopped after {have} SUCCESS events");
            }
            let failed = self.failed();
            if failed > 0 {
                bail!("{failed} jobs FAILED (see the consumer logs); {have} succeeded");
            }
            match tokio::time::timeout_at(end, self.count.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the events reader stopped after {have} SUCCESS events"),
                Err(_) => bail!("{have} of {n} jobs succeeded within {deadline:?}"),
            }
        }
    }

    pub fn failed(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).failed
    }

    /// SUCCESS arrival instants, in arrival order.
    pub fn success_times(&self) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order
            .clone()
    }

    /// When the SUCCESS of each job arrived.
    pub fn success_by_job(&self) -> HashMap<Uuid, Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .success
            .clone()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
