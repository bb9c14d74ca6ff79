//! The in-process retry tier (docs/consumer.md, tier 1): a bounded, jittered exponential backoff
//! around one service call, for blips shorter than a few seconds. What still fails goes to
//! the delayed-retry queues (tier 2, see `job`).

use std::future::Future;
use std::time::Duration;

use tokio_retry::strategy::{jitter, ExponentialBackoff};
use tokio_retry::RetryIf;

use crate::services::CallError;

/// Attempts, base and cap of the in-process tier.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included (RETRY_MAX_ATTEMPTS).
    pub max_attempts: u32,
    /// First delay (RETRY_BASE_DELAY_MS); each next one doubles, up to `max_delay`.
    pub base: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The delays between tries: base, 2 x base, 4 x base ... capped, each with full
    /// jitter. `from_millis(2).factor(base / 2)` grows as base x 2^n (tokio-retry's
    /// `from_millis(b)` alone would grow as b^n).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let half = (self.base.as_millis() as u64 / 2).max(1);
        ExponentialBackoff::from_millis(2)
            .factor(half)
            .max_delay(self.max_delay)
            .map(jitter)
            .take(self.max_attempts.saturating_sub(1) as usize)
    }

    /// Runs `call` until it succeeds, fails permanently, or the tries are used up.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        RetryIf::start(self.delays(), call, CallError::is_transient).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy(n: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: n,
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        }
    }

    #[test]
    fn delays_are_bounded_and_capped() {
        let d: Vec<_> = policy(6).delays().collect();
        assert_eq!(d.len(), 5);
        assert!(d.iter().all(|d| *d <= Duration::from_millis(300)));
        assert_eq!(policy(1).delays().count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_only() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(CallError::Transient("503".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), _> = policy(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(CallError::Permanent("422".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let r = policy(3)
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(CallError::Transient("blip".into()))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r, Ok(7));
    }
}
