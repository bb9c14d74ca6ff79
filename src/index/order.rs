//! Each tenant's jobs in creation order, for `GET /api/v1/jobs` (newest first, ties by
//! id, cursor-paginated).
//!
//! A sorted `Vec` of (created ms, id) per tenant: 24 bytes a job plus the vector's slack,
//! where a B-tree would cost about twice that. Jobs arrive roughly in creation order, so
//! an insert lands at or near the end; the few that come late (a replica reading an older
//! event after a newer one) shift a short tail.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use imagejobs_core::ids::{JobId, TenantId};

/// A position in a tenant's list: a job's creation time (ms) and id.
pub type Key = (u64, JobId);

#[derive(Default)]
pub struct Order {
    tenants: RwLock<HashMap<TenantId, Vec<Key>>>,
}

impl Order {
    pub fn insert(&self, tenant: TenantId, key: Key) {
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        insert_sorted(map.entry(tenant).or_default(), key);
    }

    /// A job's creation time moved (an earlier event of it came late).
    pub fn moved(&self, tenant: TenantId, from: Key, to: Key) {
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(tenant).or_default();
        if let Ok(at) = list.binary_search(&from) {
            list.remove(at);
        }
        insert_sorted(list, to);
    }

    /// Drops evicted jobs.
    /// Gives back each list's spare capacity (a replay grows them by doubling: up to half
    /// of a list can be slack, 12 B a job on average).
    pub fn shrink_to_fit(&self) {
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        for list in map.values_mut() {
            list.shrink_to_fit();
        }
    }

    /// Forgets every tenant's list.
    pub fn clear(&self) {
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Replaces every list with `lists` of (tenant, created ms, id), each already sorted
    /// (a snapshot's loaders sort their share): merged as they are, for an index loaded
    /// from a snapshot, instead of a sorted insert each.
    pub fn rebuild_sorted(&self, lists: Vec<Vec<(TenantId, u64, JobId)>>) {
        let mut map: HashMap<TenantId, Vec<Key>> = HashMap::new();
        // Each list is sorted by tenant first: a tenant's entries are one run in each.
        let mut at = vec![0usize; lists.len()];
        loop {
            let tenant = lists
                .iter()
                .zip(&at)
                .filter_map(|(l, &i)| l.get(i).map(|k| k.0))
                .min();
            let Some(tenant) = tenant else { break };
            let runs: Vec<&[(TenantId, u64, JobId)]> = lists
                .iter()
                .zip(at.iter_mut())
                .map(|(l, i)| {
                    let end = *i + l[*i..].partition_point(|k| k.0 == tenant);
                    let run = &l[*i..end];
                    *i = end;
                    run
                })
                .collect();
            let mut merged: Vec<Key> = Vec::with_capacity(runs.iter().map(|r| r.len()).sum());
            let mut heads = vec![0usize; runs.len()];
            loop {
                let next = runs
                    .iter()
                    .zip(&heads)
                    .enumerate()
                    .filter_map(|(r, (run, &h))| run.get(h).map(|k| ((k.1, k.2), r)))
                    .min();
                let Some((key, r)) = next else { break };
                heads[r] += 1;
                if merged.last() != Some(&key) {
                    merged.push(key);
                }
            }
            map.insert(tenant, merged);
        }
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    pub fn remove(&self, gone: &HashSet<JobId>) {
        if gone.is_empty() {
            return;
        }
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        for list in map.values_mut() {
            list.retain(|(_, id)| !gone.contains(id));
        }
        map.retain(|_, list| !list.is_empty());
    }

    /// Walks `tenant`'s jobs newest first, starting below `before` (exclusive), calling
    /// `visit` until it returns false; at most `scan` entries are visited. Returns the
    /// key of the last entry visited, and whether older entries remain below it.
    pub fn walk(
        &self,
        tenant: TenantId,
        before: Option<Key>,
        scan: usize,
        mut visit: impl FnMut(&Key) -> bool,
    ) -> (Option<Key>, bool) {
        let map = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get(&tenant) else {
            return (None, false);
        };
        let end = before.map_or(list.len(), |b| list.partition_point(|k| *k < b));
        let mut last = None;
        let mut visited = 0;
        for i in (0..end).rev() {
            let key = &list[i];
            last = Some((*key, i));
            visited += 1;
            if !visit(key) || visited >= scan {
                break;
            }
        }
        match last {
            Some((key, i)) => (Some(key), i > 0),
            None => (None, false),
        }
    }

    /// Bytes held (for the index's figure).
    pub fn heap_bytes(&self) -> usize {
        let map = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .map(|l| l.capacity() * std::mem::size_of::<Key>() + 48)
            .sum()
    }
}

/// Puts `key` in its place in `list` (sorted, no duplicates).
fn insert_sorted(list: &mut Vec<Key>, key: Key) {
    // The usual cases, a job newer than all or than all but the last few (same
    // millisecond, another id): no search through the whole list, whose far end is out
    // of the cache.
    if list.last().is_none_or(|last| *last < key) {
        list.push(key);
        return;
    }
    let tail = list.len().saturating_sub(32);
    let at = if tail > 0 && list[tail] < key {
        tail + list[tail..].partition_point(|k| *k < key)
    } else {
        list.partition_point(|k| *k < key)
    };
    if list.get(at) != Some(&key) {
        list.insert(at, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(o: &Order, t: TenantId, before: Option<Key>, n: usize) -> (Vec<Key>, bool) {
        let mut out = vec![];
        let (_, more) = o.walk(t, before, usize::MAX, |k| {
            out.push(*k);
            out.len() < n
        });
        (out, more)
    }

    #[test]
    fn newest_first_with_ties_by_id_and_a_cursor() {
        let o = Order::default();
        let t = TenantId(1);
        let ids: Vec<JobId> = (0..5).map(|_| JobId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            o.insert(t, (100 + (i as u64 / 2), *id));
        }
        o.insert(t, (100, ids[0]));
        let (first, more) = keys(&o, t, None, 2);
        assert_eq!(first.len(), 2);
        assert!(more);
        assert!(first[0] > first[1]);
        let (rest, more) = keys(&o, t, Some(first[1]), 10);
        assert_eq!(rest.len(), 3, "no gaps, no repeats");
        assert!(!more);
        assert!(rest.iter().all(|k| *k < first[1]));
        o.moved(t, (104, ids[4]), (1, ids[4]));
        let (all, _) = keys(&o, t, None, 10);
        assert_eq!(all.last(), Some(&(1, ids[4])));
        o.remove(&[ids[4]].into_iter().collect());
        assert_eq!(keys(&o, t, None, 10).0.len(), 4);
        assert_eq!(keys(&o, TenantId(2), None, 10).0.len(), 0);
    }
}
