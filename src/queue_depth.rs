//! The work queue's depth for the dashboard and `/api/v1/stats`: one figure over every
//! lane, asked of the broker at most once a second however many dashboards poll.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use imagejobs_core::broker::Broker;

/// The work queue's depth (over its lanes) and consumers, asked of the broker at most once a second
/// however many dashboards poll.
#[derive(Default)]
pub struct QueueDepth {
    /// When it was last asked, and the answer (ready messages, consumers).
    last: Mutex<Option<(Instant, Option<Depth>)>>,
}

/// Ready messages and consumers.
pub type Depth = (u32, u32);

const DEPTH_TTL: Duration = Duration::from_secs(1);

impl QueueDepth {
    pub async fn get(&self, broker: &Broker) -> Option<Depth> {
        let mut last = self.last.lock().await;
        if let Some((at, depth)) = *last {
            if at.elapsed() < DEPTH_TTL {
                return depth;
            }
        }
        // Every lane and the queue of last resort: one figure for the work queue.
        let queues = broker.topology().job_queues();
        let depth = tokio::time::timeout(DEPTH_TTL * 2, broker.queue_depths(&queues))
            .await
            .ok()
            .and_then(|lanes| Broker::work_depth(&lanes));
        *last = Some((Instant::now(), depth));
        depth
    }
}
