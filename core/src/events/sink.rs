//! [`EventSink`]: status events published with group commit, in one place for the ingress
//! and the consumers.
//!
//! A caller hands its event to the sink and awaits the confirm of the publish that carried
//! it. One task (the batcher) does the publishing: an event that arrives while nothing is
//! in flight goes out at once, alone, so light load sees no added latency; events that
//! arrive while a publish awaits its confirm fill the next group, which goes out when that
//! confirm comes (or at once when the group reaches its cap of events or bytes). A group
//! of several events is one message holding a JSON array (docs/amqp.md). Every waiter of a
//! group gets the group's result: a nack, a timeout or a lost connection fails them all,
//! exactly as a failed single publish would.
//!
//! A RUNNING still waiting when the outcome of the same attempt of the same job joins the
//! group is dropped from it (the outcome carries the job's facts as well), and its waiter
//! is released by the outcome's publish.
//!
//! After a slow confirm or a failed publish, the groups confirmed around it are published
//! again ([`super::replay`]): a stream that fails over can lose confirmed messages.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::BasicProperties;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::replay::Replay;

use crate::broker::{Broker, PublishError};
use crate::ids::JobId;
use crate::status::{Status, StatusEvent};

/// How large a group may grow before it is published without waiting for the confirm of
/// the one in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    /// Publish again what was confirmed while the stream failed over (`EVENTS_REPLAY`).
    pub replay: bool,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            max_events: 256,
            max_bytes: 1 << 20,
            replay: true,
        }
    }
}

/// Events waiting in the sink's queue before the batcher takes them; beyond it, callers
/// wait to hand theirs over.
const QUEUE: usize = 16_384;

type Waiter = oneshot::Sender<Result<(), PublishError>>;

struct Pending {
    job: JobId,
    attempt: u32,
    status: Option<Status>,
    json: Vec<u8>,
    waiters: Vec<Waiter>,
}

/// Publishes status events with group commit. A cheap clone; the batcher stops when the
/// last clone is dropped, after publishing what it holds.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Pending>,
}

impl EventSink {
    pub fn new(broker: Broker) -> Self {
        Self::with_limits(broker, GroupLimits::default())
    }

    pub fn with_limits(broker: Broker, limits: GroupLimits) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(batch(broker, limits, rx));
        EventSink { tx }
    }

    /// Publishes `event` (JSON, persistent) and waits for the broker's confirm of the
    /// message that carried it. `Ok` means the stream holds it.
    pub async fn publish(&self, event: &StatusEvent) -> Result<(), PublishError> {
        // Serialised here, in the caller's task, so that the batcher only concatenates.
        let json = serde_json::to_vec(event).map_err(|e| PublishError::Encode(e.to_string()))?;
        let (done, result) = oneshot::channel();
        let pending = Pending {
            job: event.job_id,
            attempt: event.attempt,
            status: event.known_status(),
            json,
            waiters: vec![done],
        };
        self.tx
            .send(pending)
            .await
            .map_err(|_| PublishError::Unavailable)?;
        result.await.unwrap_or(Err(PublishError::Unavailable))
    }
}

/// The group that is filling.
#[derive(Default)]
struct Group {
    /// `None` where a RUNNING was dropped for its job's outcome.
    entries: Vec<Option<Pending>>,
    /// Where the RUNNING of each (job, attempt) is in `entries`.
    running: HashMap<(JobId, u32), usize>,
    events: usize,
    bytes: usize,
}

impl Group {
    fn push(&mut self, mut p: Pending) {
        let key = (p.job, p.attempt);
        match p.status {
            Some(Status::Running) => {
                self.running.insert(key, self.entries.len());
            }
            Some(Status::Retrying | Status::Success | Status::Failed | Status::Cancelled) => {
                if let Some(i) = self.running.remove(&key) {
                    if let Some(running) = self.entries.get_mut(i).and_then(Option::take) {
                        p.waiters.extend(running.waiters);
                        self.events -= 1;
                        self.bytes -= running.json.len() + 1;
                    }
                }
            }
            _ => {}
        }
        self.events += 1;
        self.bytes += p.json.len() + 1;
        self.entries.push(Some(p));
    }

    fn is_empty(&self) -> bool {
        self.events == 0
    }

    fn is_full(&self, limits: &GroupLimits) -> bool {
        self.events >= limits.max_events || self.bytes >= limits.max_bytes
    }

    /// The message body (one object, or an array) and the waiters to release.
    fn into_message(self) -> (Vec<u8>, Vec<Waiter>) {
        let mut entries = self.entries.into_iter().flatten();
        let mut waiters = Vec::with_capacity(self.events);
        if self.events == 1 {
            if let Some(p) = entries.next() {
                return (p.json, p.waiters);
            }
        }
        let mut body = Vec::with_capacity(self.bytes + 2);
        body.push(b'[');
        for (i, p) in entries.enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&p.json);
            waiters.extend(p.waiters);
        }
        body.push(b']');
        (body, waiters)
    }
}

/// What a publish in flight resolves to: its waiters (none for a replay), its result, its
/// body, when it started, and whether it was a replay.
type Done = (
    Vec<Waiter>,
    Result<(), PublishError>,
    Arc<[u8]>,
    Instant,
    bool,
);
type InFlight = Pin<Box<dyn Future<Output = Done> + Send>>;

fn publish(
    broker: &Broker,
    exchange: &Arc<str>,
    body: Arc<[u8]>,
    waiters: Vec<Waiter>,
    replay: bool,
) -> InFlight {
    let (broker, exchange) = (broker.clone(), exchange.clone());
    Box::pin(async move {
        let started = Instant::now();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let result = broker.publish(&exchange, "", &body, props).await;
        (waiters, result, body, started, replay)
    })
}

async fn batch(broker: Broker, limits: GroupLimits, mut rx: mpsc::Receiver<Pending>) {
    let exchange: Arc<str> = broker.topology().events_exchange().into();
    let mut inflight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut group = Group::default();
    let mut replay = Replay::default();
    let mut open = true;
    loop {
        // Take whatever else is waiting, up to the cap.
        while open && !group.is_full(&limits) {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !group.is_empty() && (inflight.is_empty() || group.is_full(&limits)) {
            let (body, waiters) = std::mem::take(&mut group).into_message();
            inflight.push(publish(&broker, &exchange, body.into(), waiters, false));
            continue;
        }
        if !open && group.is_empty() && inflight.is_empty() {
            break;
        }
        let due = replay.due_at();
        tokio::select! {
            Some((waiters, result, body, started, again)) = inflight.next(), if !inflight.is_empty() => {
                let now = Instant::now();
                match &result {
                    Ok(()) if !again && limits.replay => replay.confirmed(started, body, now),
                    Ok(()) => {}
                    Err(_) if limits.replay => replay.failed(started, now),
                    Err(_) => {}
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let groups = replay.take_due(Instant::now());
                if !groups.is_empty() {
                    tracing::warn!(groups = groups.len(), "publishing again the status events confirmed while the stream was failing over");
                }
                for body in groups {
                    inflight.push(publish(&broker, &exchange, body, Vec::new(), true));
                }
            }
            p = rx.recv(), if open => match p {
                Some(p) => group.push(p),
                None => open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(
        job: JobId,
        attempt: u32,
        status: Status,
    ) -> (Pending, oneshot::Receiver<Result<(), PublishError>>) {
        let (tx, rx) = oneshot::channel();
        let json =
            format!(r#"{{"job_id":"{job}","status":"{status}","attempt":{attempt}}}"#).into_bytes();
        (
            Pending {
                job,
                attempt,
                status: Some(status),
                json,
                waiters: vec![tx],
            },
            rx,
        )
    }

    #[test]
    fn one_event_goes_out_as_an_object_and_several_as_an_array() {
        let mut g = Group::default();
        let (a, _ra) = pending(JobId::new(), 1, Status::Queued);
        g.push(a);
        let (body, waiters) = g.into_message();
        assert_eq!(body.first(), Some(&b'{'));
        assert_eq!(waiters.len(), 1);

        let mut g = Group::default();
        for _ in 0..3 {
            g.push(pending(JobId::new(), 1, Status::Queued).0);
        }
        let (body, waiters) = g.into_message();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!((v.len(), waiters.len()), (3, 3));
    }

    #[test]
    fn an_outcome_drops_the_running_of_its_attempt_and_takes_its_waiter() {
        let job = JobId::new();
        let other = JobId::new();
        let mut g = Group::default();
        g.push(pending(job, 1, Status::Running).0);
        g.push(pending(other, 1, Status::Running).0);
        g.push(pending(job, 2, Status::Running).0);
        g.push(pending(job, 1, Status::Success).0);
        assert_eq!(g.events, 3);
        let (body, waiters) = g.into_message();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let statuses: Vec<(&str, u64)> = v
            .iter()
            .map(|e| {
                (
                    e["status"].as_str().unwrap(),
                    e["attempt"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            statuses,
            vec![("RUNNING", 1), ("RUNNING", 2), ("SUCCESS", 1)],
            "the other job's RUNNING and another attempt's stay"
        );
        assert_eq!(waiters.len(), 4, "every caller is released");
    }

    #[test]
    fn caps_by_count_and_bytes() {
        let limits = GroupLimits {
            max_events: 2,
            ..GroupLimits::default()
        };
        let mut g = Group::default();
        g.push(pending(JobId::new(), 1, Status::Queued).0);
        assert!(!g.is_full(&limits));
        g.push(pending(JobId::new(), 1, Status::Queued).0);
        assert!(g.is_full(&limits));
        let small = GroupLimits {
            max_events: 100,
            max_bytes: 10,
            replay: true,
        };
        assert!(g.is_full(&small));
    }
}
