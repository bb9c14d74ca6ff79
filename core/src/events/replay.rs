//! Publishing again what the events stream may have lost while it failed over.
//!
//! RabbitMQ's streams can lose a message that was confirmed while the stream changed
//! leader (rabbitmq-server#9457, open; 3.10 also lacks the fix of #9165). The chaos run saw
//! it on three nodes: groups published while the stream had no leader, confirmed seconds
//! later when a new one was elected, were read by no reader ever after. A status event
//! is idempotent (docs/amqp.md: events may come twice; the index never moves backwards), so
//! the sink keeps what it published in the last [`KEEP`] and, when a confirm was slow or a
//! publish failed (the sign of a failover), publishes every group confirmed since a little
//! before that again, once the stream has had [`SETTLE`] to recover.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How long confirmed groups are kept for a replay.
pub const KEEP: Duration = Duration::from_secs(30);
/// Most bytes kept; beyond them the oldest groups are dropped (at full load that is
/// less than [`KEEP`]).
pub const MAX_BYTES: usize = 16 << 20;
/// A confirm slower than this is taken for a failover (a loaded broker confirms within
/// about a second, see BENCHMARKS.md; a stream without a leader holds confirms for
/// seconds).
pub const SLOW: Duration = Duration::from_secs(2);
/// How long after the last sign of trouble the replay waits.
pub const SETTLE: Duration = Duration::from_secs(10);
/// How far before the trouble's start the replay reaches back.
pub const LOOKBACK: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Replay {
    /// Confirmed groups: when their publish started, and their body. Oldest first.
    kept: VecDeque<(Instant, Arc<[u8]>)>,
    bytes: usize,
    /// Publish again the groups started since `.0`, at `.1`.
    due: Option<(Instant, Instant)>,
}

impl Replay {
    /// A group whose publish started at `started` was confirmed `now`.
    pub fn confirmed(&mut self, started: Instant, body: Arc<[u8]>, now: Instant) {
        if now.saturating_duration_since(started) > SLOW {
            self.trouble(started, now);
        }
        self.bytes += body.len();
        self.kept.push_back((started, body));
        while let Some((at, b)) = self.kept.front() {
            if self.bytes <= MAX_BYTES && now.saturating_duration_since(*at) <= KEEP {
                break;
            }
            self.bytes -= b.len();
            self.kept.pop_front();
        }
    }

    /// A publish started at `started` failed.
    pub fn failed(&mut self, started: Instant, now: Instant) {
        self.trouble(started, now);
    }

    fn trouble(&mut self, started: Instant, now: Instant) {
        let from = started.checked_sub(LOOKBACK).unwrap_or(started);
        let from = self.due.map_or(from, |(f, _)| f.min(from));
        self.due = Some((from, now + SETTLE));
    }

    /// When the next replay is due.
    pub fn due_at(&self) -> Option<Instant> {
        self.due.map(|(_, at)| at)
    }

    /// The groups to publish again, when a replay is due by `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Arc<[u8]>> {
        match self.due {
            Some((from, at)) if at <= now => {
                self.due = None;
                self.kept
                    .iter()
                    .filter(|(started, _)| *started >= from)
                    .map(|(_, b)| b.clone())
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_confirm_replays_what_was_confirmed_around_it_once() {
        let mut r = Replay::default();
        let t0 = Instant::now();
        r.confirmed(t0, body("old"), t0 + Duration::from_millis(5));
        tokio::time::advance(Duration::from_secs(20)).await;
        let t1 = Instant::now();
        r.confirmed(t1, body("before"), t1 + Duration::from_millis(5));
        assert_eq!(r.due_at(), None, "fast confirms are no trouble");
        tokio::time::advance(Duration::from_secs(2)).await;
        // Published at t1 + 1 s, confirmed 5 s later: the stream was failing over.
        let slow = t1 + Duration::from_secs(1);
        r.confirmed(slow, body("slow"), slow + Duration::from_secs(5));
        let due = r.due_at().expect("a replay is due");
        assert!(
            r.take_due(due - Duration::from_millis(1)).is_empty(),
            "not yet"
        );
        let again = r.take_due(due);
        let names: Vec<&[u8]> = again.iter().map(|b| &b[..]).collect();
        assert_eq!(
            names,
            vec![&b"before"[..], &b"slow"[..]],
            "not what came long before"
        );
        assert!(r.take_due(due + SETTLE).is_empty(), "once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_extends_the_wait_and_old_groups_are_dropped() {
        let mut r = Replay::default();
        let t0 = Instant::now();
        r.failed(t0, t0);
        let first = r.due_at().unwrap();
        r.failed(t0 + Duration::from_secs(3), t0 + Duration::from_secs(3));
        assert!(r.due_at().unwrap() > first, "more trouble, a later replay");
        r.confirmed(t0, body("x"), t0);
        r.confirmed(t0 + KEEP * 2, body("y"), t0 + KEEP * 2);
        assert_eq!(r.kept.len(), 1, "older than KEEP is dropped");
    }
}
