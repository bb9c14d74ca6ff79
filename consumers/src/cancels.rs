//! The cancels this consumer knows of, read from the control stream
//! (`imagejobs_core::control`), and the jobs it runs that a cancel must stop.
//!
//! The consumer subscribes to the work queue on a connection only once [`Cancels::synced`]
//! says the control stream has been read on that connection up to a marker of its own,
//! published after the stream's subscription: so a job cancelled before this consumer
//! started, or while it was cut off from the broker, never reaches its worker. [`follow`]
//! reads the stream from its first message, and after a lost subscription from the offset
//! after the last one read. The markers are the [`Feed`]'s (one policy for every stream
//! reader: one that does not come back, unconfirmed or the broker blocking publishers, is
//! sent again every few seconds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use imagejobs_core::broker::Broker;
use imagejobs_core::control::{ControlMarker, ControlMessage};
use imagejobs_core::events::{Feed, FeedConfig, FeedItem, Start};
use imagejobs_core::ids::JobId;

#[derive(Default)]
struct State {
    /// Cancelled jobs, with when the cancel was read (to forget them after the
    /// stream's retention).
    cancelled: HashMap<JobId, SystemTime>,
    /// Jobs being run: the token that stops them, and how many attempts hold it.
    running: HashMap<JobId, (CancellationToken, usize)>,
}

/// See the module docs.
pub struct Cancels {
    state: Mutex<State>,
    /// The broker connection (its number, `Broker::connections_made`) on which the stream
    /// was last read up to a marker; 0 before the first time.
    synced: watch::Sender<u64>,
}

impl Default for Cancels {
    fn default() -> Self {
        Cancels {
            state: Mutex::default(),
            synced: watch::Sender::new(0),
        }
    }
}

/// A job being run, registered with [`Cancels::track`]; unregistered when dropped.
pub struct Tracked<'a> {
    cancels: &'a Cancels,
    job: JobId,
    token: CancellationToken,
}

impl Tracked<'_> {
    /// Cancelled when a cancel of the job is read.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        let mut state = self.cancels.lock();
        if let Some((_, holders)) = state.running.get_mut(&self.job) {
            *holders -= 1;
            if *holders == 0 {
                state.running.remove(&self.job);
            }
        }
    }
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an attempt at `job`; `None` when the job is cancelled already. One lock
    /// for both, so a cancel read in between cannot be missed.
    pub fn track(&self, job: JobId) -> Option<Tracked<'_>> {
        let mut state = self.lock();
        if state.cancelled.contains_key(&job) {
            return None;
        }
        let entry = state
            .running
            .entry(job)
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        let token = entry.0.clone();
        Some(Tracked {
            cancels: self,
            job,
            token,
        })
    }

    /// Records a cancel, and stops the job if it runs here.
    pub fn cancel(&self, job: JobId) {
        let mut state = self.lock();
        state.cancelled.insert(job, SystemTime::now());
        if let Some((token, _)) = state.running.get(&job) {
            tracing::info!(job_id = %job, "cancel read while running the job: stopping it");
            token.cancel();
        }
    }

    /// Cancels known (for logs).
    pub fn len(&self) -> usize {
        self.lock().cancelled.len()
    }

    /// Forgets cancels read longer than `max_age` ago: the stream has dropped them too.
    fn forget_older_than(&self, max_age: Duration) {
        let cutoff = SystemTime::now() - max_age;
        self.lock().cancelled.retain(|_, at| *at > cutoff);
    }

    /// Returns once the stream has been read, on connection number `connection` or a
    /// later one, up to a marker published after subscribing on it.
    pub async fn synced(&self, connection: u64) {
        let mut rx = self.synced.subscribe();
        // Only an error if the sender is gone, which `self` prevents.
        let _ = rx.wait_for(|n| *n >= connection).await;
    }
}

/// Reads the control stream into `cancels` until `shutdown`, from its first message.
pub async fn follow(
    cancels: Arc<Cancels>,
    broker: Broker,
    max_age: Duration,
    shutdown: CancellationToken,
) {
    let stream = broker.topology().control_stream();
    let mut feed = Feed::of_stream(broker.clone(), stream, Start::First, FeedConfig::default())
        .with_marker(ControlMarker);
    let mut forget = tokio::time::interval(Duration::from_secs(3600));
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = forget.tick() => {
                cancels.forget_older_than(max_age);
                continue;
            }
            item = feed.next() => item,
        };
        match item {
            FeedItem::Subscribed => {}
            FeedItem::Synced { connection } => {
                cancels.synced.send_replace(connection);
                tracing::info!(
                    cancelled = cancels.len(),
                    "control stream read up to its end: taking jobs"
                );
            }
            FeedItem::Message { data, .. } => match ControlMessage::decode(&data) {
                Some(ControlMessage::Cancel { job_id, .. }) => cancels.cancel(job_id),
                Some(ControlMessage::Marker { .. }) => {}
                None => tracing::debug!("skipping a control message this version does not know"),
            },
        }
    }
    feed.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_stops_what_runs_and_refuses_what_comes() {
        let c = Cancels::default();
        let (a, b) = (JobId::new(), JobId::new());
        let run = c.track(a).expect("not cancelled");
        let again = c.track(a).expect("a second attempt");
        c.cancel(a);
        assert!(run.token().is_cancelled() && again.token().is_cancelled());
        assert!(c.track(a).is_none(), "a cancelled job is not run");
        drop((run, again));
        assert!(c.lock().running.is_empty());
        let other = c.track(b).expect("another job runs");
        assert!(!other.token().is_cancelled());
        assert_eq!(c.len(), 1);
        c.forget_older_than(Duration::ZERO);
        assert_eq!(c.len(), 0);
    }
}
