//! `Idempotency-Key` handling: the same key from the same tenant yields the same job.
//!
//! The job id itself is derived from (tenant, key) (see `JobId::for_idempotency_key`), so
//! replicas and restarts agree on it; this cache makes one process publish a keyed job
//! once, even when the duplicates arrive concurrently: moka runs one initialisation per
//! key and the others wait for it. A failed publish is not remembered, so a retry of the
//! submit tries again. Entries live for a day and the cache is bounded in entries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use imagejobs_core::ids::TenantId;

/// Remembers which keyed submissions this process has already published.
pub struct IdempotencyCache {
    published: Cache<(TenantId, String), ()>,
}

impl IdempotencyCache {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        IdempotencyCache {
            published: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Runs `publish` unless (tenant, key) was published before; concurrent callers with
    /// the same key wait for the one that runs it, and all get its result.
    pub async fn publish_once<E: Send + Sync + 'static>(
        &self,
        tenant: TenantId,
        key: String,
        publish: impl Future<Output = Result<(), E>>,
    ) -> Result<(), Arc<E>> {
        self.published.try_get_with((tenant, key), publish).await
    }
}

/// Checks a client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn one_publish_per_key_and_tenant_and_failures_are_not_kept() {
        let cache = IdempotencyCache::new(Duration::from_secs(60), 100);
        let runs = AtomicU32::new(0);
        let publish = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<(), imagejobs_core::broker::PublishError>(())
        };
        let (a, b) = tokio::join!(
            cache.publish_once(TenantId(1), "k".into(), publish()),
            cache.publish_once(TenantId(1), "k".into(), publish()),
        );
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "concurrent duplicates coalesce"
        );
        cache
            .publish_once(TenantId(2), "k".into(), publish())
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "keys are per tenant");

        let failed = cache
            .publish_once(TenantId(3), "k".into(), async {
                Err(imagejobs_core::broker::PublishError::Nack)
            })
            .await;
        assert!(failed.is_err());
        cache
            .publish_once(TenantId(3), "k".into(), publish())
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "a failure is tried again");
        assert!(valid_key("order-42"));
        assert!(!valid_key(""));
        assert!(!valid_key("with space"));
    }
}
