//! `Idempotency-Key` handling: the same key from the same tenant yields the same job.
//!
//! The job id itself is derived from (tenant, key) (see [`JobId::for_idempotency_key`]),
//! so replicas and restarts agree on it; this cache makes one process publish a keyed
//! job once, even when the duplicates arrive concurrently: they all wait on one cell.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::job::TenantId;

/// Remembers which keyed submissions this process has already published.
pub struct IdempotencyCache {
    entries: Mutex<HashMap<(TenantId, String), Entry>>,
    ttl: Duration,
    capacity: usize,
}

struct Entry {
    cell: Arc<OnceCell<()>>,
    created: Instant,
}

impl IdempotencyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        IdempotencyCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    /// The cell for (tenant, key): initialised once the job has been published.
    pub fn cell(&self, tenant: TenantId, key: &str) -> Arc<OnceCell<()>> {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, e| e.created.elapsed() < ttl || !e.cell.initialized());
            if map.len() >= self.capacity {
                // Still full of fresh keys: forget the published ones rather than grow.
                map.retain(|_, e| !e.cell.initialized());
            }
        }
        map.entry((tenant, key.to_owned()))
            .or_insert_with(|| Entry {
                cell: Arc::new(OnceCell::new()),
                created: Instant::now(),
            })
            .cell
            .clone()
    }
}

/// Checks a client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_same_cell_and_bounded() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 2);
        let a = cache.cell(TenantId(1), "k");
        assert!(Arc::ptr_eq(&a, &cache.cell(TenantId(1), "k")));
        assert!(!Arc::ptr_eq(&a, &cache.cell(TenantId(2), "k")));
        a.get_or_init(|| async {}).await;
        cache.cell(TenantId(3), "k");
        assert!(cache.entries.lock().unwrap().len() <= 3);
        assert!(valid_key("order-42"));
        assert!(!valid_key(""));
        assert!(!valid_key("with space"));
    }
}
