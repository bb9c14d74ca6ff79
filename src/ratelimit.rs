//! Per-tenant request rate limits (HTTP 429), a keyed GCRA limiter from `governor`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use imagejobs_core::ids::TenantId;

pub struct TenantLimiter {
    limiter: DefaultKeyedRateLimiter<TenantId>,
    clock: DefaultClock,
}

impl TenantLimiter {
    /// `per_second` submits per tenant with bursts of `burst`; `None` when the rate is 0
    /// (no limit).
    pub fn new(per_second: u32, burst: Option<u32>) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(TenantLimiter {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        })
    }

    /// `Err(wait)` when the tenant must wait before its next request.
    pub fn check(&self, tenant: TenantId) -> Result<(), Duration> {
        self.limiter
            .check_key(&tenant)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_tenant_separately() {
        assert!(TenantLimiter::new(0, None).is_none());
        let l = TenantLimiter::new(1, Some(2)).unwrap();
        assert!(l.check(TenantId(1)).is_ok());
        assert!(l.check(TenantId(1)).is_ok());
        assert!(l.check(TenantId(1)).is_err());
        assert!(l.check(TenantId(2)).is_ok());
    }
}
