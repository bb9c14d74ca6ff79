//! The subscription to the work queue's lanes on one live connection: a consumer per
//! lane, and the turn-taking that gives each lane with work an equal share of the jobs in
//! flight (fair share between tenants, ARCHITECTURE.md, "Fair share").
//!
//! Each lane's consumer may hold `prefetch` deliveries, so that a lane alone can fill
//! every slot (a tenant alone runs as fast as on one queue); at most `prefetch` jobs run
//! at once, and a free slot goes to the next lane in turn that has a delivery waiting.
//! So a lane with 5,000 jobs queued and a lane with one take turns, instead of the one
//! waiting behind the 5,000. Deliveries waiting for a slot are returned to their lane at
//! shutdown; a lost connection returns them by itself.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::SelectAll;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use imagejobs_core::broker::Live;

use crate::delivery::Handler;

/// What the subscription needs beyond the connection.
pub struct Subscription<'a> {
    pub handler: &'a Arc<Handler>,
    /// Jobs run at once, and deliveries each lane's consumer may hold.
    pub prefetch: u16,
    /// Where the delivery tasks are spawned, so that the consumer can wait for them.
    pub tracker: &'a TaskTracker,
    /// Cancelled when the consumer stops waiting for its jobs.
    pub abandon: &'a CancellationToken,
}

/// Deliveries received and not started yet, one queue per lane, taken in turn.
#[derive(Debug)]
pub struct Turns<T> {
    lanes: Vec<VecDeque<T>>,
    /// The lane whose turn is next.
    next: usize,
    waiting: usize,
}

impl<T> Turns<T> {
    pub fn new(lanes: usize) -> Self {
        Turns {
            lanes: (0..lanes.max(1)).map(|_| VecDeque::new()).collect(),
            next: 0,
            waiting: 0,
        }
    }

    pub fn push(&mut self, lane: usize, item: T) {
        if let Some(q) = self.lanes.get_mut(lane) {
            q.push_back(item);
            self.waiting += 1;
        }
    }

    /// The oldest delivery of the next lane in turn that has one; that lane's turn is
    /// then over.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        if self.waiting == 0 {
            return None;
        }
        let n = self.lanes.len();
        for step in 0..n {
            let lane = (self.next + step) % n;
            if let Some(item) = self.lanes[lane].pop_front() {
                self.next = (lane + 1) % n;
                self.waiting -= 1;
                return Some((lane, item));
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Everything still waiting, lane by lane.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.waiting = 0;
        self.lanes.iter_mut().flat_map(|q| q.drain(..))
    }
}

impl Subscription<'_> {
    /// Consumes on a channel of its own until `shutdown` (then returns the channel, still
    /// open, so that jobs in flight can ack on it), or fails when a subscription or the
    /// connection ends (the caller subscribes again).
    pub async fn run(&self, live: &Live, shutdown: &CancellationToken) -> anyhow::Result<Channel> {
        let channel = live.open_channel().await?;
        // Not global: each lane's consumer gets the whole window (see the module's doc).
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let queues = self.handler.broker.topology().job_queues();
        let mut tags = Vec::with_capacity(queues.len());
        let mut deliveries = SelectAll::new();
        for (lane, queue) in queues.iter().enumerate() {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tags.push(consumer.tag());
            deliveries.push(consumer.map(move |d| (lane, d)).boxed());
        }
        tracing::info!(lanes = queues.len(), prefetch = self.prefetch, "consuming");
        let slots = Arc::new(Semaphore::new(usize::from(self.prefetch.max(1))));
        let mut turns: Turns<lapin::message::Delivery> = Turns::new(queues.len());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    for tag in &tags {
                        let _ = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
                    }
                    let requeue = BasicNackOptions { requeue: true, ..Default::default() };
                    for delivery in turns.drain() {
                        let _ = delivery.acker.nack(requeue).await;
                    }
                    return Ok(channel);
                }
                _ = live.closed() => anyhow::bail!("broker connection lost"),
                next = deliveries.next() => match next {
                    Some((lane, Ok(delivery))) => turns.push(lane, delivery),
                    Some((lane, Err(e))) => {
                        return Err(anyhow::Error::new(e).context(format!("consuming {}", queues[lane])))
                    }
                    None => anyhow::bail!("the broker cancelled the subscriptions"),
                },
                slot = slots.clone().acquire_owned(), if !turns.is_empty() => {
                    let slot = slot?;
                    if let Some((_, delivery)) = turns.pop() {
                        let (handler, abandon) = (self.handler.clone(), self.abandon.clone());
                        self.tracker.spawn(async move {
                            handler.handle(delivery, &abandon).await;
                            drop(slot);
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_take_turns_and_a_lone_lane_takes_every_turn() {
        let mut t = Turns::new(3);
        for i in 0..5 {
            t.push(0, ('a', i));
        }
        t.push(2, ('b', 0));
        t.push(2, ('b', 1));
        let order: Vec<_> = std::iter::from_fn(|| t.pop()).map(|(_, x)| x).collect();
        assert_eq!(
            order,
            [
                ('a', 0),
                ('b', 0),
                ('a', 1),
                ('b', 1),
                ('a', 2),
                ('a', 3),
                ('a', 4)
            ]
        );
        assert!(t.is_empty());
        t.push(1, ('c', 0));
        assert_eq!(
            t.pop(),
            Some((1, ('c', 0))),
            "work conserving: any lane with work"
        );
        assert_eq!(t.pop(), None);
    }

    #[test]
    fn drain_returns_everything_waiting() {
        let mut t = Turns::new(2);
        t.push(0, 1);
        t.push(1, 2);
        t.push(7, 3); // no such lane: ignored
        assert_eq!(t.drain().collect::<Vec<_>>(), [1, 2]);
        assert!(t.is_empty() && t.pop().is_none());
    }
}
