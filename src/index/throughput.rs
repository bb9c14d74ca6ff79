//! Each tenant's finished jobs per 10 s over the last 5 minutes, for the dashboard
//! (`GET /api/v1/stats`). Counted from the events' own times, so a replica that rebuilds
//! its index from the stream draws the same chart.

use std::collections::HashMap;
use std::sync::Mutex;

use imagejobs_core::ids::TenantId;

pub const BUCKET_MS: u64 = 10_000;
pub const BUCKETS: usize = 30;

/// One bucket: its number (ms / BUCKET_MS), jobs that succeeded, jobs that failed.
type Bucket = (u64, u32, u32);

#[derive(Default)]
pub struct Throughput {
    tenants: Mutex<HashMap<TenantId, [Bucket; BUCKETS]>>,
}

impl Throughput {
    /// A job of `tenant` ended at `at_ms`, successfully or not. A time ahead of `now_ms`
    /// (the consumer's clock ahead of this one) counts now: in a bucket ahead it would be
    /// missing from the series until this clock got there, and would take the ring slot
    /// of the oldest bucket shown.
    pub fn ended(&self, tenant: TenantId, at_ms: u64, success: bool, now_ms: u64) {
        let n = at_ms.min(now_ms) / BUCKET_MS;
        if n + (BUCKETS as u64) <= now_ms / BUCKET_MS {
            return; // older than the window
        }
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let ring = map.entry(tenant).or_insert([(0, 0, 0); BUCKETS]);
        let slot = &mut ring[(n % BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        if success {
            slot.1 += 1;
        } else {
            slot.2 += 1;
        }
    }

    /// (succeeded, failed) per bucket, oldest first, the last one holding `now_ms`.
    pub fn series(&self, tenant: TenantId, now_ms: u64) -> (Vec<u32>, Vec<u32>) {
        let map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let ring = map.get(&tenant);
        let current = now_ms / BUCKET_MS;
        (0..BUCKETS as u64)
            .map(|i| {
                let n = (current + 1 + i).saturating_sub(BUCKETS as u64);
                match ring.map(|r| r[(n % BUCKETS as u64) as usize]) {
                    Some((m, ok, failed)) if m == n => (ok, failed),
                    _ => (0, 0),
                }
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_and_age_out() {
        let t = Throughput::default();
        let now = 1_000_000 * BUCKET_MS + 5;
        t.ended(TenantId(1), now, true, now);
        t.ended(TenantId(1), now - BUCKET_MS, false, now);
        t.ended(TenantId(1), now - 40 * BUCKET_MS, true, now);
        let (ok, failed) = t.series(TenantId(1), now);
        assert_eq!(ok.len(), BUCKETS);
        assert_eq!((ok[BUCKETS - 1], failed[BUCKETS - 2]), (1, 1));
        assert_eq!(
            ok.iter().sum::<u32>(),
            1,
            "older than the window is not counted"
        );
        let (later, _) = t.series(TenantId(1), now + 29 * BUCKET_MS);
        assert_eq!(later[0], 1);
        let (gone, _) = t.series(TenantId(1), now + 30 * BUCKET_MS);
        assert_eq!(gone.iter().sum::<u32>(), 0);
        assert_eq!(t.series(TenantId(2), now).0.iter().sum::<u32>(), 0);
    }

    /// The dashboard says "done in 5 min" of the whole series.
    #[test]
    fn the_series_spans_five_minutes() {
        assert_eq!(BUCKET_MS * BUCKETS as u64, 5 * 60 * 1000);
    }

    #[test]
    fn a_job_stamped_ahead_of_this_clock_counts_now_and_evicts_nothing() {
        let t = Throughput::default();
        let now = 1_000_000 * BUCKET_MS + 9_000; // late in its bucket
        t.ended(TenantId(1), now - 29 * BUCKET_MS, true, now); // the oldest bucket shown
        t.ended(TenantId(1), now + 2_000, true, now); // a consumer's clock 2 s ahead
        t.ended(TenantId(1), now, false, now);
        let (ok, failed) = t.series(TenantId(1), now);
        assert_eq!(ok[0], 1, "the oldest bucket keeps its job");
        assert_eq!((ok[BUCKETS - 1], failed[BUCKETS - 1]), (1, 1), "{ok:?}");
        assert_eq!(ok.iter().sum::<u32>(), 2);
    }
}
