//! A reader of a deployment's events stream, over `imagejobs_core::events::Feed` (the same
//! follower the ingress's index uses): it records every event with the instant it arrived.
//! Tests ask for all events so far; the benchmarks for the arrival times of SUCCESS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use imagejobs_core::broker::{Broker, BrokerConfig};
use imagejobs_core::events::{self, EventSink, Feed, FeedItem, Start};
use imagejobs_core::ids::JobId;
use imagejobs_core::status::{StatusEvent, MARKER};

use crate::deployment::Deployment;

#[derive(Default)]
struct Log {
    /// Every event, markers included, in stream order, with its arrival.
    events: Vec<(Instant, StatusEvent)>,
    /// First SUCCESS of each job.
    success: HashMap<JobId, Instant>,
    /// The same instants in arrival order.
    success_order: Vec<Instant>,
    failed: usize,
}

/// Follows `{p}.events` in the background until stopped (or dropped).
pub struct EventReader {
    log: Arc<Mutex<Log>>,
    successes: watch::Receiver<usize>,
    seen: watch::Receiver<usize>,
    broker: Broker,
    sink: EventSink,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl EventReader {
    /// Starts reading `deployment`'s stream at `start`.
    pub async fn start(deployment: &Deployment, start: Start) -> EventReader {
        let stop = CancellationToken::new();
        let config = BrokerConfig::new(
            deployment.urls.clone(),
            "imagejobs-testkit-events",
            deployment.topology.clone(),
        );
        let broker = Broker::start(config, stop.clone());
        let mut feed = Feed::new(broker.clone(), start);
        let log = Arc::new(Mutex::new(Log::default()));
        let (success_tx, successes) = watch::channel(0usize);
        let (seen_tx, seen) = watch::channel(0usize);
        let (log2, stop2) = (log.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = stop2.cancelled() => break,
                    item = feed.next() => item,
                };
                let FeedItem::Message { data, .. } = item else {
                    continue;
                };
                let now = Instant::now();
                let Ok(evs) = events::decode::<StatusEvent>(&data) else {
                    continue;
                };
                let mut log = log2.lock().unwrap_or_else(|p| p.into_inner());
                for ev in evs {
                    match ev.status.as_str() {
                        "SUCCESS" if !log.success.contains_key(&ev.job_id) => {
                            log.success.insert(ev.job_id, now);
                            log.success_order.push(now);
                            success_tx.send_replace(log.success_order.len());
                        }
                        "FAILED" => log.failed += 1,
                        _ => {}
                    }
                    log.events.push((now, ev));
                }
                seen_tx.send_replace(log.events.len());
            }
            feed.close().await;
        });
        EventReader {
            log,
            successes,
            seen,
            sink: EventSink::new(broker.clone()),
            broker,
            stop,
            task,
        }
    }

    /// Waits until `n` jobs have a SUCCESS, up to `deadline`; fails early when a job
    /// FAILED.
    pub async fn wait_success(&mut self, n: usize, deadline: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let have = *self.successes.borrow_and_update();
            if have >= n {
                return Ok(());
            }
            let failed = self.failed();
            if failed > 0 {
                bail!("{failed} jobs FAILED (see the consumer logs); {have} succeeded");
            }
            match tokio::time::timeout_at(end, self.successes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the events reader stopped after {have} SUCCESS events"),
                Err(_) => bail!("{have} of {n} jobs succeeded within {deadline:?}"),
            }
        }
    }

    /// Every event read so far and before a marker published now: what the stream held
    /// at this moment. Markers are left out.
    pub async fn caught_up(&mut self, deadline: Duration) -> Vec<StatusEvent> {
        let marker = StatusEvent::marker();
        tokio::time::timeout(deadline, self.broker.wait_live())
            .await
            .expect("the events reader connects to the broker");
        self.sink
            .publish(&marker)
            .await
            .expect("publish a marker on the events stream");
        let end = Instant::now() + deadline;
        loop {
            {
                let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = log
                    .events
                    .iter()
                    .position(|(_, e)| e.job_id == marker.job_id)
                {
                    return log.events[..at]
                        .iter()
                        .filter(|(_, e)| e.status != MARKER)
                        .map(|(_, e)| e.clone())
                        .collect();
                }
            }
            if tokio::time::timeout_at(end, self.seen.changed())
                .await
                .is_err()
            {
                panic!("the events stream was not read up to a marker within {deadline:?}");
            }
        }
    }

    pub fn failed(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).failed
    }

    /// SUCCESS arrival instants, in arrival order.
    pub fn success_times(&self) -> Vec<Instant> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .success_order
            .clone()
    }

    /// When the first SUCCESS of each job arrived.
    pub fn success_by_job(&self) -> HashMap<JobId, Instant> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .success
            .clone()
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every status event of `deployment`'s stream so far, in stream order.
pub async fn all_events(deployment: &Deployment) -> Vec<StatusEvent> {
    let mut reader = EventReader::start(deployment, Start::First).await;
    let events = reader.caught_up(Duration::from_secs(10)).await;
    reader.stop().await;
    events
}

/// The statuses of job `id`, in stream order.
pub async fn statuses_of(deployment: &Deployment, id: &str) -> Vec<String> {
    all_events(deployment)
        .await
        .into_iter()
        .filter(|e| e.job_id.to_string() == id)
        .map(|e| e.status)
        .collect()
}
