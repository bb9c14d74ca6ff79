//! Feeds the job index from the events stream: from the newest valid snapshot's offset
//! (or the stream's first) at start-up, then following it; the [`Feed`] resumes after the
//! last offset seen whenever the connection is rebuilt.
//!
//! Catching up: the [`Feed`] publishes a marker event of its own after subscribing and says
//! `Synced` once it reads it back (`imagejobs_core::events::feed`, the same policy as the
//! consumers' control stream); the index then counts as caught up, since everything
//! published before the marker is in it.
//!
//! Snapshots (`crate::snapshots`): every `INDEX_SNAPSHOT_INTERVAL` and at shutdown the
//! follower writes one between two stream messages, applying nothing meanwhile, so the
//! snapshot is exactly the index as of the last offset applied (a consistent cut; requests
//! go on under read locks). A snapshot whose next offset the stream no longer holds (the
//! ingress was away longer than the stream's retention) would leave out the events lost
//! in between: it is dropped, with a warning, for a full replay, whose answers are the
//! stream's.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use imagejobs_core::broker::Broker;
use imagejobs_core::events::{self, EventSink, Feed, FeedItem, Start, StatusMarker};
use imagejobs_core::status::{StatusEvent, MARKER};

use super::JobIndex;
use crate::metrics::IngressMetrics;
use crate::snapshots::Snapshots;

/// What the follower is doing, for `/readyz` and the metrics; shared, lock-free.
#[derive(Default)]
pub struct Progress {
    phase: AtomicU8,
    /// Events applied since start.
    applied: AtomicU64,
    /// How far behind the newest event applied is, in ms.
    behind_ms: AtomicU64,
    /// The offset the loaded snapshot covered, or -1.
    loaded_offset: AtomicI64,
}

const STARTING: u8 = 0;
const LOADING: u8 = 1;
const REPLAYING: u8 = 2;
const FOLLOWING: u8 = 3;

impl Progress {
    pub fn new() -> Self {
        Progress {
            loaded_offset: AtomicI64::new(-1),
            ..Default::default()
        }
    }

    /// One line for `/readyz`: what the index is doing.
    pub fn describe(&self) -> String {
        let applied = self.applied.load(Ordering::Relaxed);
        let behind = Duration::from_millis(self.behind_ms.load(Ordering::Relaxed));
        let from = match self.loaded_offset.load(Ordering::Relaxed) {
            -1 => "the stream's start".to_owned(),
            o => format!("snapshot offset {o}"),
        };
        match self.phase.load(Ordering::Relaxed) {
            STARTING => "job index starting".to_owned(),
            LOADING => "job index loading a snapshot".to_owned(),
            REPLAYING => format!(
                "job index replaying the events stream from {from}: {applied} events applied, \
                 the newest {}s old",
                behind.as_secs()
            ),
            _ => format!("job index following the stream (from {from}, {applied} events applied)"),
        }
    }

    fn set(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }
}

/// What the follower needs besides the stream.
pub struct Follower {
    pub broker: Broker,
    pub sink: EventSink,
    pub index: JobIndex,
    pub metrics: Arc<IngressMetrics>,
    pub snapshots: Snapshots,
    pub progress: Arc<Progress>,
    /// Finished jobs leave the index this long after their final status.
    pub retention: Duration,
}

impl Follower {
    /// Loads a snapshot, then follows the stream until `shutdown`, snapshotting on the way
    /// and once more at the end; also evicts finished jobs past the retention.
    pub async fn run(self, shutdown: CancellationToken) {
        let evictor = {
            let (index, shutdown, retention) =
                (self.index.clone(), shutdown.clone(), self.retention);
            async move {
                // A minute, or sooner for a short retention (tests, demos).
                let every =
                    (retention / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {
                            let n = index.evict_finished_before(SystemTime::now() - retention);
                            if n > 0 { tracing::info!(evicted = n, "finished jobs past INDEX_RETENTION left the index") }
                        }
                    }
                }
            }
        };
        tokio::spawn(evictor);

        let mut start = Start::First;
        if self.snapshots.enabled() {
            self.progress.set(LOADING);
            let started = Instant::now();
            if let Some((info, source)) = self.snapshots.load_newest(&self.index).await {
                tracing::info!(
                    %source,
                    offset = info.offset,
                    jobs = info.jobs,
                    took_ms = started.elapsed().as_millis() as u64,
                    "index snapshot loaded; replaying the stream after it"
                );
                self.metrics
                    .snapshot_loaded(&info, started.elapsed().as_secs_f64());
                self.progress
                    .loaded_offset
                    .store(info.offset, Ordering::Relaxed);
                start = Start::Offset(info.offset + 1);
            }
        }
        loop {
            match self.follow(start, &shutdown).await {
                Ended::Stopped => break,
                Ended::Gap { expected, found } => {
                    tracing::warn!(
                        expected,
                        found,
                        "the events stream no longer holds the offsets after the index snapshot \
                         (the ingress was away longer than its retention): dropping the snapshot \
                         for a full replay"
                    );
                    self.index.clear();
                    self.progress.loaded_offset.store(-1, Ordering::Relaxed);
                    start = Start::First;
                }
            }
        }
    }

    async fn follow(&self, start: Start, shutdown: &CancellationToken) -> Ended {
        let expected = match start {
            Start::Offset(o) => Some(o),
            _ => None,
        };
        self.progress.set(REPLAYING);
        let mut feed = Feed::new(self.broker.clone(), start).with_marker(StatusMarker);
        let mut first = true;
        let mut last_offset: Option<i64> = expected.map(|o| o - 1);
        let mut snapshotted = last_offset;
        let interval = self.snapshots.interval().max(Duration::from_secs(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let ended = loop {
            // From a snapshot's offset, the feed's marker must come back: a stream that
            // ends before that offset (deleted and made anew) would otherwise be waited on
            // for ever. Timed from the first marker the broker confirmed.
            let due = feed.marker_confirmed_at().map(|t| t + MARKER_WAIT);
            let overdue = async {
                match due {
                    Some(due) if first => tokio::time::sleep_until(due).await,
                    _ => std::future::pending().await,
                }
            };
            let item = tokio::select! {
                _ = shutdown.cancelled() => break Ended::Stopped,
                _ = overdue, if expected.is_some() => {
                    feed.close().await;
                    return Ended::Gap { expected: expected.unwrap_or(0), found: -1 };
                }
                // Until a marker is confirmed, look again each second for when it was.
                _ = tokio::time::sleep(Duration::from_secs(1)), if first && expected.is_some() && due.is_none() => continue,
                _ = tick.tick(), if self.snapshots.enabled() => {
                    if last_offset != snapshotted {
                        snapshotted = self.snapshot(last_offset).await.or(snapshotted);
                    }
                    continue;
                }
                item = feed.next() => item,
            };
            match item {
                FeedItem::Subscribed => {}
                FeedItem::Synced { .. } if !self.index.caught_up() => {
                    self.index.set_caught_up();
                    self.progress.set(FOLLOWING);
                    tracing::info!(
                        jobs = self.index.len(),
                        "job index caught up with the events stream"
                    );
                }
                FeedItem::Synced { .. } => {}
                FeedItem::Message { offset, data } => {
                    if first {
                        first = false;
                        if let (Some(want), Some(got)) = (expected, offset) {
                            if got != want {
                                feed.close().await;
                                return Ended::Gap {
                                    expected: want,
                                    found: got,
                                };
                            }
                        }
                    }
                    if offset.is_some() {
                        last_offset = offset;
                    }
                    self.apply(&data);
                }
            }
        };
        if self.snapshots.enabled() && last_offset != snapshotted {
            self.snapshot(last_offset).await;
        }
        // A stopping ingress's last snapshot is shared before it exits.
        self.snapshots.finish().await;
        feed.close().await;
        ended
    }

    fn apply(&self, data: &[u8]) {
        match events::decode::<StatusEvent>(data) {
            Ok(evs) => {
                let mut applied = 0;
                // Markers (ours among them) are events of a status the index skips.
                for ev in evs.iter().filter(|ev| ev.status != MARKER) {
                    self.index.apply(ev);
                    applied += 1;
                }
                self.progress.applied.fetch_add(applied, Ordering::Relaxed);
                if let Some(age) = evs.last().and_then(age_of) {
                    self.progress
                        .behind_ms
                        .store(age.as_millis() as u64, Ordering::Relaxed);
                }
                self.metrics.applied(applied, evs.last());
            }
            Err(e) => {
                tracing::warn!(error = %e, "skipping a message of the events stream that holds no status events")
            }
        }
    }

    /// Writes a snapshot as of `offset`; the offset it covers when it was written.
    async fn snapshot(&self, offset: Option<i64>) -> Option<i64> {
        let offset = offset?;
        let started = Instant::now();
        match self.snapshots.write(&self.index, offset).await {
            Ok(info) => {
                self.metrics
                    .snapshot_written(&info, started.elapsed().as_secs_f64());
                Some(offset)
            }
            Err(e) => {
                tracing::warn!(offset, error = %format!("{e:#}"), "could not write an index snapshot");
                None
            }
        }
    }
}

/// How long a marker published after subscribing from a snapshot's offset may take to come
/// back before the stream counts as not reaching that offset.
const MARKER_WAIT: Duration = Duration::from_secs(10);

/// Why [`Follower::follow`] returned.
enum Ended {
    Stopped,
    /// The stream began past the snapshot's next offset (`found`), or never reached it
    /// (`found` = -1).
    Gap {
        expected: i64,
        found: i64,
    },
}

fn age_of(ev: &StatusEvent) -> Option<Duration> {
    let at = humantime::parse_rfc3339_weak(&ev.at).ok()?;
    SystemTime::now().duration_since(at).ok()
}
