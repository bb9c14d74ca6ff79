//! Exponential backoff with jitter, for every wait that repeats until something comes back:
//! reconnecting to the broker, resubscribing to a queue or the events stream.
//!
//! The delay doubles from `base` on each failure up to `cap`, and each wait is drawn from
//! [cap/2, cap] of that step ("equal jitter"), so that many processes that lost the same
//! node do not come back in lock step, and none waits less than half its step. The loops
//! using it are bounded by shutdown, not by a count: a broker may be away for long.

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// Start again from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = step.min(self.cap);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(500), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
