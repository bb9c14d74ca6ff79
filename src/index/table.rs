//! The records of one shard of the index, laid out for memory.
//!
//! A `HashMap<JobId, Record>` costs its bucket size for every slot of a table that is up
//! to half empty after it doubles, and glibc keeps the freed half-size table as garbage
//! (its mmap threshold rises with every large free): at a million jobs that was 190 bytes
//! a job for 60-byte records. Here the records live in fixed-size chunks that are never
//! moved, and the hash table holds only a 4-byte slot number per bucket (found by the id
//! in the slot), so doubling costs 5 bytes a bucket and leaves little behind.

use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;

use imagejobs_core::ids::JobId;

/// Records per chunk: 4096 × 60 bytes, allocated once each.
const CHUNK: usize = 4096;

pub struct Table<R> {
    slots: HashTable<u32>,
    chunks: Vec<Vec<(JobId, Option<R>)>>,
    /// Slots emptied by `retain`, to fill first.
    free: Vec<u32>,
    hasher: DefaultHashBuilder,
    len: usize,
}

impl<R> Default for Table<R> {
    fn default() -> Self {
        Table {
            slots: HashTable::new(),
            chunks: Vec::new(),
            free: Vec::new(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }
}

impl<R> Table<R> {
    fn slot(&self, n: u32) -> &(JobId, Option<R>) {
        let n = n as usize;
        &self.chunks[n / CHUNK][n % CHUNK]
    }

    fn slot_mut(&mut self, n: u32) -> &mut (JobId, Option<R>) {
        let n = n as usize;
        &mut self.chunks[n / CHUNK][n % CHUNK]
    }

    pub fn get(&self, id: &JobId) -> Option<&R> {
        let hash = self.hasher.hash_one(id);
        let n = *self.slots.find(hash, |&n| self.slot(n).0 == *id)?;
        self.slot(n).1.as_ref()
    }

    /// The record of `id`, inserted with `make` when there is none. (`None` only if the
    /// table broke its own rule that an indexed slot holds a record.)
    pub fn get_or_insert_with(&mut self, id: JobId, make: impl FnOnce() -> R) -> Option<&mut R> {
        let hash = self.hasher.hash_one(id);
        let Table {
            slots,
            chunks,
            free,
            hasher,
            len,
        } = self;
        let at = |n: u32| &chunks[n as usize / CHUNK][n as usize % CHUNK];
        let n = match slots.entry(hash, |&n| at(n).0 == id, |&n| hasher.hash_one(at(n).0)) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                let n = match free.pop() {
                    Some(n) => {
                        chunks[n as usize / CHUNK][n as usize % CHUNK] = (id, Some(make()));
                        n
                    }
                    None => {
                        if chunks.last().is_none_or(|c| c.len() == CHUNK) {
                            chunks.push(Vec::with_capacity(CHUNK));
                        }
                        let last = chunks.len() - 1;
                        let chunk = &mut chunks[last];
                        chunk.push((id, Some(make())));
                        u32::try_from(last * CHUNK + chunk.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                e.insert(n);
                *len += 1;
                n
            }
        };
        self.slot_mut(n).1.as_mut()
    }

    /// Keeps the records for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&JobId, &R) -> bool) {
        let Table {
            slots,
            chunks,
            free,
            len,
            ..
        } = self;
        slots.retain(|n| {
            let (id, rec) = &mut chunks[*n as usize / CHUNK][*n as usize % CHUNK];
            let stays = rec.as_ref().is_some_and(|r| keep(id, r));
            if !stays {
                *rec = None;
                free.push(*n);
                *len -= 1;
            }
            stays
        });
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Room for `more` records without growing the hash table on the way.
    pub fn reserve(&mut self, more: usize) {
        let Table {
            slots,
            chunks,
            hasher,
            ..
        } = self;
        slots.reserve(more, |&n| {
            let n = n as usize;
            hasher.hash_one(chunks[n / CHUNK][n % CHUNK].0)
        });
    }

    /// Adds a record whose key the table does not hold (a snapshot's, written from a table
    /// where each key has one slot): no search for it first.
    pub fn insert_new(&mut self, id: JobId, record: R) {
        let Table {
            slots,
            chunks,
            hasher,
            len,
            ..
        } = self;
        if chunks.last().is_none_or(|c| c.len() == CHUNK) {
            chunks.push(Vec::with_capacity(CHUNK));
        }
        let last = chunks.len() - 1;
        let chunk = &mut chunks[last];
        chunk.push((id, Some(record)));
        let n = u32::try_from(last * CHUNK + chunk.len() - 1).unwrap_or(u32::MAX);
        let hash = hasher.hash_one(id);
        slots.insert_unique(hash, n, |&n| {
            let n = n as usize;
            hasher.hash_one(chunks[n / CHUNK][n % CHUNK].0)
        });
        *len += 1;
    }

    /// Every record with its key, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&JobId, &R)> {
        self.chunks
            .iter()
            .flatten()
            .filter_map(|(id, r)| r.as_ref().map(|r| (id, r)))
    }

    /// Bytes this table holds on the heap: its chunks, slot table and free list.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<(JobId, Option<R>)>()
            + self.slots.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.free.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_finds_and_reuses_slots() {
        let mut t: Table<u64> = Table::default();
        let ids: Vec<JobId> = (0..10_000).map(|_| JobId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            *t.get_or_insert_with(*id, || 0).unwrap() = i as u64;
        }
        assert_eq!(t.len(), ids.len());
        assert_eq!(t.get(&ids[1234]), Some(&1234));
        assert_eq!(
            *t.get_or_insert_with(ids[7], || 99).unwrap(),
            7,
            "an existing record"
        );
        t.retain(|_, v| v % 2 == 0);
        assert_eq!(t.len(), 5_000);
        assert_eq!(t.get(&ids[3]), None);
        assert_eq!(t.get(&ids[4]), Some(&4));
        let chunks = t.chunks.len();
        for _ in 0..5_000 {
            t.get_or_insert_with(JobId::new(), || 1);
        }
        assert_eq!(t.chunks.len(), chunks, "emptied slots are filled first");
        assert_eq!(t.len(), 10_000);
    }
}
