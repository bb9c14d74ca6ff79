//! The (tenant, client) pairs of the index's jobs, kept once each: a job stores the pair's
//! number (4 bytes) instead of two `i64`s. Tenants and their clients are few against jobs.

use std::collections::HashMap;
use std::sync::RwLock;

use imagejobs_core::ids::{ClientId, TenantId};

type Pair = (TenantId, ClientId);

/// The pairs seen so far, both ways.
#[derive(Default)]
pub struct Owners {
    by_pair: RwLock<(HashMap<Pair, u32>, Vec<Pair>)>,
}

impl Owners {
    /// The number of the pair, registering it when new. Beyond `u32::MAX` pairs the last
    /// number is reused, which no deployment reaches.
    pub fn store(&self, tenant: TenantId, client: ClientId) -> u32 {
        let pair = (tenant, client);
        {
            let map = self.by_pair.read().unwrap_or_else(|p| p.into_inner());
            if let Some(&n) = map.0.get(&pair) {
                return n;
            }
        }
        let mut map = self.by_pair.write().unwrap_or_else(|p| p.into_inner());
        if let Some(&n) = map.0.get(&pair) {
            return n;
        }
        let n = u32::try_from(map.1.len()).unwrap_or(u32::MAX);
        map.1.push(pair);
        map.0.insert(pair, n);
        n
    }

    pub fn load(&self, n: u32) -> Option<Pair> {
        let map = self.by_pair.read().unwrap_or_else(|p| p.into_inner());
        map.1.get(n as usize).copied()
    }

    /// Every pair, by number.
    pub fn all(&self) -> Vec<Pair> {
        let map = self.by_pair.read().unwrap_or_else(|p| p.into_inner());
        map.1.clone()
    }

    pub fn tenant(&self, n: u32) -> Option<TenantId> {
        self.load(n).map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pair_once_both_ways() {
        let o = Owners::default();
        let a = o.store(TenantId(1), ClientId(2));
        let b = o.store(TenantId(1), ClientId(3));
        assert_ne!(a, b);
        assert_eq!(o.store(TenantId(1), ClientId(2)), a);
        assert_eq!(o.load(b), Some((TenantId(1), ClientId(3))));
        assert_eq!(o.tenant(a), Some(TenantId(1)));
        assert_eq!(o.load(99), None);
    }
}
