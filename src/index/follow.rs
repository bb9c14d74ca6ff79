//! Feeds the job index from the events stream: from its first offset at start-up, then
//! following it; the [`Feed`] resumes after the last offset seen whenever the connection
//! is rebuilt.
//!
//! Catching up: after subscribing, the follower publishes a marker event of its own and
//! counts as caught up once it reads that marker back, since everything published before
//! the marker is then in the index.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use imagejobs_core::events::{self, EventSink, Feed, FeedItem};
use imagejobs_core::ids::JobId;
use imagejobs_core::status::StatusEvent;

use super::JobIndex;
use crate::metrics::IngressMetrics;

/// Follows the stream until `shutdown`; also evicts jobs older than `max_age`.
pub async fn follow(
    mut feed: Feed,
    sink: EventSink,
    index: JobIndex,
    metrics: Arc<IngressMetrics>,
    max_age: Duration,
    shutdown: CancellationToken,
) {
    let evictor = {
        let (index, shutdown) = (index.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        let n = index.evict_older_than(SystemTime::now() - max_age);
                        if n > 0 { tracing::info!(evicted = n, "evicted jobs past the stream's retention") }
                    }
                }
            }
        }
    };
    tokio::spawn(evictor);

    let mut marker: Option<JobId> = None;
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = feed.next() => item,
        };
        match item {
            FeedItem::Subscribed if !index.caught_up() => {
                let ev = StatusEvent::marker();
                marker = Some(ev.job_id);
                // A marker that is not confirmed is never read back: the next subscription
                // publishes another.
                if let Err(e) = sink.publish(&ev).await {
                    tracing::warn!(error = %e, "could not publish the catch-up marker");
                }
            }
            FeedItem::Subscribed => {}
            FeedItem::Message { data, .. } => match events::decode::<StatusEvent>(&data) {
                Ok(evs) => {
                    let mut applied = 0;
                    for ev in &evs {
                        if Some(ev.job_id) == marker {
                            index.set_caught_up();
                            tracing::info!(
                                jobs = index.len(),
                                "job index caught up with the events stream"
                            );
                        } else {
                            index.apply(ev);
                            applied += 1;
                        }
                    }
                    metrics.applied(applied, evs.last());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a message of the events stream that holds no status events")
                }
            },
        }
    }
    feed.close().await;
}
