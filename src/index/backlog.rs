//! Each tenant's unfinished jobs by status: what a tenant has waiting, in the dashboard,
//! `/metrics` and `imagejobs top`. The work queue's lanes cannot say it (a lane holds
//! whichever tenants hash to it, and only the ready messages), the index can.
//!
//! Counted per shard under the shard's lock, by owner number, as records change status;
//! read by summing the shards. No scan, whatever the index holds.

use std::collections::HashMap;

use serde::Serialize;

use imagejobs_core::status::Status;

/// A tenant's jobs not finished yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Backlog {
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
}

impl Backlog {
    fn slot(&mut self, status: Status) -> Option<&mut u64> {
        match status {
            Status::Queued => Some(&mut self.queued),
            Status::Running => Some(&mut self.running),
            Status::Retrying => Some(&mut self.retrying),
            _ => None,
        }
    }

    pub fn add(&mut self, other: &Backlog) {
        self.queued += other.queued;
        self.running += other.running;
        self.retrying += other.retrying;
    }

    pub fn total(&self) -> u64 {
        self.queued + self.running + self.retrying
    }
}

/// One shard's counts, by owner number.
#[derive(Debug, Default)]
pub struct ShardBacklog(HashMap<u32, Backlog>);

impl ShardBacklog {
    /// A record of `owner` now has `status` (counted if unfinished).
    pub fn enter(&mut self, owner: u32, status: Status) {
        if !matches!(status, Status::Queued | Status::Running | Status::Retrying) {
            return;
        }
        if let Some(n) = self.0.entry(owner).or_default().slot(status) {
            *n += 1;
        }
    }

    /// A record of `owner` no longer has `status`.
    pub fn leave(&mut self, owner: u32, status: Status) {
        if let Some(b) = self.0.get_mut(&owner) {
            if let Some(n) = b.slot(status) {
                *n = n.saturating_sub(1);
            }
            if b.total() == 0 {
                self.0.remove(&owner);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Backlog)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_status_changes_and_finished_jobs_leave() {
        let mut s = ShardBacklog::default();
        s.enter(1, Status::Queued);
        s.enter(1, Status::Queued);
        s.leave(1, Status::Queued);
        s.enter(1, Status::Running);
        let b = s.iter().map(|(_, b)| *b).next().unwrap();
        assert_eq!(
            b,
            Backlog {
                queued: 1,
                running: 1,
                retrying: 0
            }
        );
        s.leave(1, Status::Queued);
        s.leave(1, Status::Running);
        s.enter(1, Status::Success);
        assert_eq!(
            s.iter().count(),
            0,
            "a tenant with nothing unfinished is gone"
        );
        s.leave(2, Status::Queued);
        assert_eq!(s.iter().count(), 0, "never below zero");
    }
}
