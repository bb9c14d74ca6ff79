//! The job index: what the ingress knows of every job, rebuilt from the events stream.
//!
//! Invariants: applying an event twice, or late, changes nothing it should not; a status
//! never moves backwards within an attempt (QUEUED < RUNNING < RETRYING < SUCCESS|FAILED,
//! and the first terminal status of an attempt stays); a higher attempt wins.
//! Records are kept compact (60 bytes with their key; texts and owners beside them)
//! because an ingress holds every job of the stream's retention window.

pub mod follow;
mod location;
mod owner;
mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use imagejobs_core::ids::{ClientId, JobId, Md5, TenantId};
use imagejobs_core::status::{Status, StatusEvent};

const SHARDS: usize = 32;

/// MIME types stored as a one-byte code; others are dropped (consumers only report these).
const CONTENT_TYPES: [&str; 6] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/tiff",
];

/// One job in 44 bytes (60 with its key): every job of the stream's retention window is
/// held, so each byte here is megabytes per replica. What most jobs do not have lives
/// beside the records: a text (an error, or a location of no known pattern) in the shard's
/// `texts`, the (tenant, client) pair as a number of [`owner::Owners`].
#[derive(Clone, Debug)]
struct Record {
    md5: [u8; 16],
    /// Creation time: seconds since the epoch, and the milliseconds within that second.
    created_s: u32,
    /// `updated - created`, in ms (saturating at about 49 days).
    updated_delta_ms: u32,
    /// 0 = unknown.
    payload_size: u32,
    /// The (tenant, client) pair, a number of `Owners`.
    owner: u32,
    created_sub_ms: u16,
    attempt: u16,
    /// 0 = none, else a pattern number of `location::Patterns`.
    location: u16,
    status: Status,
    /// 0 = unknown, else 1 + index into `CONTENT_TYPES`.
    content_type: u8,
    flags: u8,
}

const HAS_MD5: u8 = 1;
/// The shard's `texts` holds this job's error.
const TEXT_IS_ERROR: u8 = 2;
/// The shard's `texts` holds this job's location (of no known pattern).
const TEXT_IS_LOCATION: u8 = 4;

impl Record {
    fn created_ms(&self) -> u64 {
        u64::from(self.created_s) * 1000 + u64::from(self.created_sub_ms)
    }

    fn updated_ms(&self) -> u64 {
        self.created_ms() + u64::from(self.updated_delta_ms)
    }

    fn set_times(&mut self, created_ms: u64, updated_ms: u64) {
        self.created_s = u32::try_from(created_ms / 1000).unwrap_or(u32::MAX);
        self.created_sub_ms = (created_ms % 1000) as u16;
        self.updated_delta_ms =
            u32::try_from(updated_ms.saturating_sub(created_ms)).unwrap_or(u32::MAX);
    }
}

/// A job as the API shows it (DESIGN §3); absent values are omitted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub client_id: ClientId,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<Md5>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Shared handle to the index; clone freely.
#[derive(Clone)]
pub struct JobIndex {
    inner: Arc<Inner>,
}

/// One of the index's shards: the records and the rare texts of its jobs.
#[derive(Default)]
struct Shard {
    records: table::Table<Record>,
    texts: HashMap<JobId, Box<str>>,
}

struct Inner {
    shards: Vec<RwLock<Shard>>,
    locations: location::Patterns,
    owners: owner::Owners,
    caught_up: AtomicBool,
}

impl Default for JobIndex {
    fn default() -> Self {
        Self::new()
    }
}

fn ms_of(at: &str) -> u64 {
    let t = humantime::parse_rfc3339_weak(at).unwrap_or_else(|_| SystemTime::now());
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339_of(ms: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Whether `(attempt, status)` may replace `(cur_attempt, cur)`.
fn supersedes(attempt: u32, status: Status, cur_attempt: u32, cur: Status) -> bool {
    if attempt != cur_attempt {
        return attempt > cur_attempt;
    }
    !cur.is_terminal() && status > cur
}

impl JobIndex {
    pub fn new() -> Self {
        JobIndex {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
                locations: location::Patterns::default(),
                owners: owner::Owners::default(),
                caught_up: AtomicBool::new(false),
            }),
        }
    }

    fn shard(&self, id: JobId) -> &RwLock<Shard> {
        let n = (id.0.as_u128() as usize) % SHARDS;
        &self.inner.shards[n]
    }

    /// Applies one event. Returns whether it changed the index.
    pub fn apply(&self, ev: &StatusEvent) -> bool {
        let Some(status) = ev.known_status() else {
            return false;
        };
        let at = ms_of(&ev.at);
        let content_type = ev
            .content_type
            .as_deref()
            .and_then(|c| CONTENT_TYPES.iter().position(|k| *k == c))
            .map_or(0, |i| i as u8 + 1);
        // Patterns and owners are looked up before the shard is locked: never nested.
        let location = ev
            .payload_location
            .as_deref()
            .map(|l| self.inner.locations.store(ev.job_id, l));
        let owner = self.inner.owners.store(ev.tenant_id, ev.client_id);
        let mut guard = self
            .shard(ev.job_id)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let shard = &mut *guard;
        let made = shard.records.get_or_insert_with(ev.job_id, || {
            let mut r = Record {
                md5: [0; 16],
                created_s: 0,
                updated_delta_ms: 0,
                payload_size: 0,
                owner,
                created_sub_ms: 0,
                attempt: 0,
                location: 0,
                status,
                content_type: 0,
                flags: 0,
            };
            r.set_times(at, at);
            r
        });
        let Some(rec) = made else {
            return false;
        };
        if rec.owner != owner && self.inner.owners.tenant(rec.owner) != Some(ev.tenant_id) {
            // A job never changes tenant; such an event is not about this job.
            return false;
        }
        let mut changed = false;
        // Facts about the image: fill in whatever is still unknown, from any event.
        if rec.flags & HAS_MD5 == 0 {
            if let Some(md5) = ev.md5 {
                rec.md5 = md5.0;
                rec.flags |= HAS_MD5;
                changed = true;
            }
        }
        if rec.content_type == 0 && content_type != 0 {
            rec.content_type = content_type;
            changed = true;
        }
        if rec.payload_size == 0 {
            if let Some(size) = ev.payload_size.and_then(|s| u32::try_from(s).ok()) {
                rec.payload_size = size;
                changed |= size != 0;
            }
        }
        let updated = rec.updated_ms();
        let created = rec.created_ms().min(at);
        rec.set_times(created, updated);
        if rec.attempt == 0 || supersedes(ev.attempt, status, u32::from(rec.attempt), rec.status) {
            rec.attempt = u16::try_from(ev.attempt.max(1)).unwrap_or(u16::MAX);
            rec.status = status;
            rec.set_times(created, updated.max(at));
            // The error belongs to this status; a location stays until a new one comes.
            if rec.flags & TEXT_IS_ERROR != 0 {
                shard.texts.remove(&ev.job_id);
                rec.flags &= !TEXT_IS_ERROR;
            }
            match location {
                Some(location::Stored::Pattern(n)) => {
                    rec.location = n;
                    if rec.flags & TEXT_IS_LOCATION != 0 {
                        shard.texts.remove(&ev.job_id);
                        rec.flags &= !TEXT_IS_LOCATION;
                    }
                }
                Some(location::Stored::Text(t)) => {
                    rec.location = 0;
                    shard.texts.insert(ev.job_id, t);
                    rec.flags = (rec.flags & !TEXT_IS_ERROR) | TEXT_IS_LOCATION;
                }
                None => {}
            }
            if let Some(error) = ev.error.as_deref() {
                // One text per job: an error displaces a location of no known pattern.
                shard.texts.insert(ev.job_id, error.into());
                rec.flags = (rec.flags & !TEXT_IS_LOCATION) | TEXT_IS_ERROR;
            }
            changed = true;
        }
        changed
    }

    pub fn get(&self, id: JobId) -> Option<JobView> {
        let shard = self.shard(id).read().unwrap_or_else(|p| p.into_inner());
        let r = shard.records.get(&id)?;
        let text = |flag: u8| {
            (r.flags & flag != 0)
                .then(|| shard.texts.get(&id).map(|t| t.to_string()))
                .flatten()
        };
        let payload_location = match r.location {
            0 => text(TEXT_IS_LOCATION),
            n => self.inner.locations.load(id, n),
        };
        let (tenant_id, client_id) = self.inner.owners.load(r.owner)?;
        Some(JobView {
            id,
            tenant_id,
            client_id,
            status: r.status,
            payload_location,
            payload_size: (r.payload_size != 0).then_some(u64::from(r.payload_size)),
            content_type: r
                .content_type
                .checked_sub(1)
                .map(|i| CONTENT_TYPES[i as usize]),
            md5: (r.flags & HAS_MD5 != 0).then_some(Md5(r.md5)),
            attempts: u32::from(r.attempt),
            error: text(TEXT_IS_ERROR),
            created_at: rfc3339_of(r.created_ms()),
            updated_at: rfc3339_of(r.updated_ms()),
        })
    }

    /// Drops jobs not updated since `cutoff` (they have left the stream's retention).
    pub fn evict_older_than(&self, cutoff: SystemTime) -> usize {
        let cutoff_ms = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut evicted = 0;
        for shard in &self.inner.shards {
            let mut guard = shard.write().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *guard;
            let before = shard.records.len();
            let texts = &mut shard.texts;
            shard.records.retain(|id, r| {
                let keep = r.updated_ms() >= cutoff_ms;
                if !keep && r.flags & (TEXT_IS_ERROR | TEXT_IS_LOCATION) != 0 {
                    texts.remove(id);
                }
                keep
            });
            evicted += before - shard.records.len();
        }
        evicted
    }

    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).records.len())
            .sum()
    }

    /// About how many bytes the index holds: its records and texts (the `/metrics`
    /// figure; the allocator's own overhead is not in it).
    pub fn approx_bytes(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| {
                let s = s.read().unwrap_or_else(|p| p.into_inner());
                let texts: usize = s.texts.values().map(|t| t.len() + 40).sum();
                s.records.heap_bytes() + texts
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the index has read the stream up to where it stood at start-up.
    pub fn caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }

    pub(crate) fn set_caught_up(&self) {
        self.inner.caught_up.store(true, Ordering::Release);
    }

    /// Bytes of one record in its chunk, with its key (for the memory figures).
    pub const RECORD_BYTES: usize = std::mem::size_of::<(JobId, Option<Record>)>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagejobs_core::message::JobMeta;

    fn meta(id: JobId) -> JobMeta {
        JobMeta {
            id,
            tenant_id: TenantId(1),
            client_id: ClientId(2),
            content_type: Some("image/png".into()),
            md5: Some(Md5::of(b"x")),
            attempt: 1,
            payload_location: None,
            payload_size: Some(10),
        }
    }

    fn ev(id: JobId, status: Status, attempt: u32) -> StatusEvent {
        let mut m = meta(id);
        m.attempt = attempt;
        StatusEvent::new(&m, status)
    }

    #[test]
    fn never_backwards_and_idempotent() {
        let idx = JobIndex::new();
        let id = JobId::new();
        assert!(idx.apply(&ev(id, Status::Running, 1)));
        assert!(
            !idx.apply(&ev(id, Status::Queued, 1)),
            "late QUEUED is ignored"
        );
        let mut done = ev(id, Status::Success, 1);
        done.payload_location = Some("http://blob/x".into());
        assert!(idx.apply(&done));
        assert!(
            !idx.apply(&ev(id, Status::Failed, 1)),
            "first terminal status stays"
        );
        assert!(!idx.apply(&ev(id, Status::Running, 1)));
        let v = idx.get(id).unwrap();
        assert_eq!(v.status, Status::Success);
        assert_eq!(v.payload_location.as_deref(), Some("http://blob/x"));
        assert_eq!(v.content_type, Some("image/png"));
        assert_eq!(v.payload_size, Some(10));
    }

    #[test]
    fn errors_and_locations_share_one_slot_sensibly() {
        let idx = JobIndex::new();
        let id = JobId::new();
        let mut retry = ev(id, Status::Retrying, 1);
        retry.error = Some("blob upload: HTTP 503".into());
        idx.apply(&retry);
        assert_eq!(
            idx.get(id).unwrap().error.as_deref(),
            Some("blob upload: HTTP 503")
        );
        let mut done = ev(id, Status::Success, 2);
        done.payload_location = Some(format!("http://blob/api/v1/blob/{id}.thumb"));
        idx.apply(&done);
        let v = idx.get(id).unwrap();
        assert_eq!(v.error, None, "the error was the earlier attempt's");
        assert_eq!(v.payload_location, done.payload_location);
        let mut other = ev(id, Status::Running, 3);
        other.payload_location = Some("s3://bucket/key".into());
        idx.apply(&other);
        assert_eq!(
            idx.get(id).unwrap().payload_location.as_deref(),
            Some("s3://bucket/key")
        );
        let mut failed = ev(id, Status::Failed, 3);
        failed.error = Some("worker: FAILED".into());
        idx.apply(&failed);
        let v = idx.get(id).unwrap();
        assert_eq!(
            (v.status, v.error.as_deref()),
            (Status::Failed, Some("worker: FAILED"))
        );
        assert_eq!(v.md5, Some(Md5::of(b"x")));
        assert_eq!(v.attempts, 3);
    }

    #[test]
    fn higher_attempt_wins() {
        let idx = JobIndex::new();
        let id = JobId::new();
        idx.apply(&ev(id, Status::Failed, 1));
        idx.apply(&ev(id, Status::Running, 2));
        assert_eq!(idx.get(id).unwrap().status, Status::Running);
        assert_eq!(idx.get(id).unwrap().attempts, 2);
        idx.apply(&ev(id, Status::Retrying, 1));
        assert_eq!(idx.get(id).unwrap().status, Status::Running);
    }

    #[test]
    fn unknown_status_and_other_tenant_ignored() {
        let idx = JobIndex::new();
        let id = JobId::new();
        let mut e = ev(id, Status::Queued, 1);
        e.status = "MARKER".into();
        assert!(!idx.apply(&e));
        assert!(idx.get(id).is_none());
        idx.apply(&ev(id, Status::Queued, 1));
        let mut other = ev(id, Status::Success, 1);
        other.tenant_id = TenantId(99);
        assert!(!idx.apply(&other));
        assert_eq!(idx.get(id).unwrap().status, Status::Queued);
    }

    #[test]
    fn eviction_and_sizes() {
        let idx = JobIndex::new();
        let id = JobId::new();
        let mut e = ev(id, Status::Queued, 1);
        e.at = "2000-01-01T00:00:00.000Z".into();
        idx.apply(&e);
        idx.apply(&ev(JobId::new(), Status::Queued, 1));
        assert_eq!(
            idx.evict_older_than(SystemTime::now() - Duration::from_secs(3600)),
            1
        );
        assert_eq!(idx.len(), 1);
        let record = JobIndex::RECORD_BYTES;
        assert!(record <= 60, "record is {record} bytes");
    }
}
