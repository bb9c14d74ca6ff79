//! The job index: what the ingress knows of every job, rebuilt from the events stream.
//!
//! Invariants: applying an event twice, or late, changes nothing it should not; a status
//! never moves backwards within an attempt (QUEUED < RUNNING < RETRYING < SUCCESS|FAILED|
//! CANCELLED, and the first terminal status of an attempt stays); a higher attempt wins;
//! CANCELLED is final over every attempt, and replaces any status not yet terminal (the
//! tenant asked; a consumer that missed the cancel reports an outcome nobody reads).
//! These depend only on the order of the events stream, so every replica agrees.
//!
//! Beside the records: each tenant's jobs in creation order ([`order`], for listing),
//! the watchers of jobs and tenants ([`watch`], for server-sent events) and each tenant's
//! recent throughput ([`throughput`], for the dashboard).
//! Records are kept compact (60 bytes with their key; texts and owners beside them)
//! because an ingress holds every job of the stream's retention window.

mod backlog;
pub mod follow;
mod location;
mod order;
mod owner;
pub mod snapshot;
mod table;
mod throughput;
pub mod watch;

/// Width of a bucket of [`JobIndex::throughput`], in seconds.
pub const BUCKET_SECS: u64 = throughput::BUCKET_MS / 1000;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use imagejobs_core::ids::{ClientId, JobId, Md5, TenantId};
use imagejobs_core::status::{Status, StatusEvent};

pub use backlog::Backlog;

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

/// A job's status.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum StatusName {
    Queued,
    Running,
    Retrying,
    Success,
    Failed,
    Cancelled,
}

/// A job as the API shows it (docs/http-api.md); absent values are omitted.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    #[schema(value_type = i64)]
    pub tenant_id: TenantId,
    #[schema(value_type = i64)]
    pub client_id: ClientId,
    #[schema(value_type = StatusName)]
    pub status: Status,
    /// Where the result is (after SUCCESS), or the input image (a job by reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub content_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{32}$")]
    pub md5: Option<Md5>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub created_at: String,
    pub updated_at: String,
}

impl JobView {
    /// Where the job stands, as one number that grows with every change of its status
    /// (attempt, then status): the `id:` of its server-sent events, equal on every replica.
    pub fn seq(&self) -> u64 {
        u64::from(self.attempts) * 8 + self.status as u64 + 1
    }
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
    /// Its unfinished jobs by owner and status, kept with every change of a record.
    backlog: backlog::ShardBacklog,
}

struct Inner {
    shards: Vec<RwLock<Shard>>,
    locations: location::Patterns,
    owners: owner::Owners,
    order: order::Order,
    watchers: Arc<watch::Watchers>,
    throughput: throughput::Throughput,
    caught_up: AtomicBool,
}

/// One page of a tenant's jobs, newest first.
#[derive(Debug)]
pub struct Page {
    pub jobs: Vec<JobView>,
    /// Where the next page starts, when there is one.
    pub next: Option<Cursor>,
}

/// A position in a tenant's job list: after the job created at `ms` with id `id`.
/// Written `{ms}_{id}` in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    ms: u64,
    id: JobId,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.ms, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, id) = s.split_once('_').ok_or(())?;
        Ok(Cursor {
            ms: ms.parse().map_err(|_| ())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

/// Entries a listing looks at, at most, to fill a page with a status filter: a page may
/// come back short, with a `next` that goes on from where it stopped.
const LIST_SCAN: usize = 100_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    if cur == Status::Cancelled {
        return false;
    }
    if status == Status::Cancelled {
        return !cur.is_terminal() || attempt > cur_attempt;
    }
    if attempt != cur_attempt {
        return attempt > cur_attempt;
    }
    !cur.is_terminal() && status > cur
}

/// One event as [`merge`] takes it: parsed, its owner and location interned.
struct Incoming<'a> {
    status: Status,
    attempt: u32,
    /// The event's time, ms since the epoch.
    at: u64,
    /// The (tenant, client) pair's number, and its tenant.
    owner: u32,
    tenant: TenantId,
    md5: Option<Md5>,
    /// 0 = unknown, else 1 + index into `CONTENT_TYPES`.
    content_type: u8,
    payload_size: Option<u32>,
    location: Option<&'a location::Stored>,
    error: Option<&'a str>,
}

/// What happens to the job's one text (an error, or a location of no known pattern).
#[derive(Debug, PartialEq)]
enum TextChange {
    Keep,
    Remove,
    Set(Box<str>),
}

/// The outcome of merging one event into one record.
#[derive(Debug)]
struct Merged {
    record: Record,
    text: TextChange,
    /// Whether anything a reader sees changed.
    changed: bool,
    /// The status the record took from this event, if it took one.
    became: Option<Status>,
    /// Whether the record was already final before the event.
    was_terminal: bool,
    /// The creation time before the event (the order moves when it changes).
    created_before: u64,
}

/// Merges one event into a job's record (`None`: the job is new): the index's rules, with
/// no lock, no shared state and no side effect. Facts about the image fill in whatever is
/// still unknown, from any event; the creation time is the earliest seen; the status, its
/// attempt, time, error and location change only when [`supersedes`] says the event wins.
/// An event of another tenant than the job's is not about this job: `None`
/// (`tenant_of` gives an owner number's tenant; asked only when the owners differ).
fn merge(
    current: Option<&Record>,
    ev: &Incoming<'_>,
    tenant_of: impl FnOnce(u32) -> Option<TenantId>,
) -> Option<Merged> {
    if let Some(rec) = current {
        if rec.owner != ev.owner && tenant_of(rec.owner) != Some(ev.tenant) {
            return None;
        }
    }
    let mut rec = current.cloned().unwrap_or_else(|| {
        let mut r = Record {
            md5: [0; 16],
            created_s: 0,
            updated_delta_ms: 0,
            payload_size: 0,
            owner: ev.owner,
            created_sub_ms: 0,
            attempt: 0,
            location: 0,
            status: ev.status,
            content_type: 0,
            flags: 0,
        };
        r.set_times(ev.at, ev.at);
        r
    });
    let mut changed = false;
    if rec.flags & HAS_MD5 == 0 {
        if let Some(md5) = ev.md5 {
            rec.md5 = md5.0;
            rec.flags |= HAS_MD5;
            changed = true;
        }
    }
    if rec.content_type == 0 && ev.content_type != 0 {
        rec.content_type = ev.content_type;
        changed = true;
    }
    if rec.payload_size == 0 {
        if let Some(size) = ev.payload_size {
            rec.payload_size = size;
            changed |= size != 0;
        }
    }
    let updated = rec.updated_ms();
    let created_before = rec.created_ms();
    let created = created_before.min(ev.at);
    rec.set_times(created, updated);
    let was_terminal = rec.status.is_terminal() && rec.attempt != 0;
    let mut became = None;
    let mut text = TextChange::Keep;
    if rec.attempt == 0 || supersedes(ev.attempt, ev.status, u32::from(rec.attempt), rec.status) {
        // A cancel may come with the attempt the ingress last saw: the count stays.
        let attempt = match ev.status {
            Status::Cancelled => ev.attempt.max(u32::from(rec.attempt)),
            _ => ev.attempt,
        };
        rec.attempt = u16::try_from(attempt.max(1)).unwrap_or(u16::MAX);
        became = Some(ev.status);
        rec.status = ev.status;
        rec.set_times(created, updated.max(ev.at));
        // The error belongs to the status it came with; a location stays until a new one
        // comes.
        if rec.flags & TEXT_IS_ERROR != 0 {
            text = TextChange::Remove;
            rec.flags &= !TEXT_IS_ERROR;
        }
        match ev.location {
            Some(location::Stored::Pattern(n)) => {
                rec.location = *n;
                if rec.flags & TEXT_IS_LOCATION != 0 {
                    text = TextChange::Remove;
                    rec.flags &= !TEXT_IS_LOCATION;
                }
            }
            Some(location::Stored::Text(t)) => {
                rec.location = 0;
                text = TextChange::Set(t.clone());
                rec.flags = (rec.flags & !TEXT_IS_ERROR) | TEXT_IS_LOCATION;
            }
            None => {}
        }
        if let Some(error) = ev.error {
            // One text per job: an error displaces a location of no known pattern.
            text = TextChange::Set(error.into());
            rec.flags = (rec.flags & !TEXT_IS_LOCATION) | TEXT_IS_ERROR;
        }
        changed = true;
    }
    Some(Merged {
        record: rec,
        text,
        changed,
        became,
        was_terminal,
        created_before,
    })
}

impl JobIndex {
    pub fn new() -> Self {
        JobIndex {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
                locations: location::Patterns::default(),
                owners: owner::Owners::default(),
                order: order::Order::default(),
                watchers: Arc::default(),
                throughput: throughput::Throughput::default(),
                caught_up: AtomicBool::new(false),
            }),
        }
    }

    fn shard_no(&self, id: JobId) -> usize {
        (id.0.as_u128() as usize) % SHARDS
    }

    fn shard(&self, id: JobId) -> &RwLock<Shard> {
        &self.inner.shards[self.shard_no(id)]
    }

    /// Whether nothing at all was stored yet: no job, no owner, no location pattern (what
    /// a snapshot loads into).
    fn is_pristine(&self) -> bool {
        self.is_empty()
            && self.inner.owners.all().is_empty()
            && self.inner.locations.all().is_empty()
    }

    /// Applies one event: interns its owner and location, merges it into its record under
    /// the shard's lock ([`merge`]), then, unlocked, moves the job in its tenant's order,
    /// counts a finished job and wakes watchers. Returns whether it changed the index.
    pub fn apply(&self, ev: &StatusEvent) -> bool {
        let Some(status) = ev.known_status() else {
            return false;
        };
        // Patterns and owners are looked up before the shard is locked.
        let location = ev
            .payload_location
            .as_deref()
            .map(|l| self.inner.locations.store(ev.job_id, l));
        let incoming = Incoming {
            status,
            attempt: ev.attempt,
            at: ms_of(&ev.at),
            owner: self.inner.owners.store(ev.tenant_id, ev.client_id),
            tenant: ev.tenant_id,
            md5: ev.md5,
            content_type: ev
                .content_type
                .as_deref()
                .and_then(|c| CONTENT_TYPES.iter().position(|k| *k == c))
                .map_or(0, |i| i as u8 + 1),
            payload_size: ev.payload_size.and_then(|s| u32::try_from(s).ok()),
            location: location.as_ref(),
            error: ev.error.as_deref(),
        };
        let mut guard = self
            .shard(ev.job_id)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let shard = &mut *guard;
        let current = shard.records.get(&ev.job_id);
        let owners = &self.inner.owners;
        // A job never changes tenant: another tenant's event is not about this job.
        let Some(merged) = merge(current, &incoming, |n| owners.tenant(n)) else {
            return false;
        };
        let created_now = current.is_none();
        if let Some(was) = current.map(|r| (r.owner, r.status)) {
            shard.backlog.leave(was.0, was.1);
        }
        shard
            .backlog
            .enter(merged.record.owner, merged.record.status);
        if let Some(rec) = shard
            .records
            .get_or_insert_with(ev.job_id, || merged.record.clone())
        {
            *rec = merged.record.clone();
        }
        match merged.text {
            TextChange::Keep => {}
            TextChange::Remove => {
                shard.texts.remove(&ev.job_id);
            }
            TextChange::Set(t) => {
                shard.texts.insert(ev.job_id, t);
            }
        }
        drop(guard);
        // The other structures, with the shard unlocked (a listing holds the order's lock
        // while it reads shards).
        let created = merged.record.created_ms();
        let key = |ms: u64| (ms, ev.job_id);
        if created_now {
            self.inner.order.insert(ev.tenant_id, key(created));
        } else if created != merged.created_before {
            self.inner
                .order
                .moved(ev.tenant_id, key(merged.created_before), key(created));
        }
        if let Some(s @ (Status::Success | Status::Failed)) = merged.became {
            if !merged.was_terminal {
                let success = s == Status::Success;
                let ended = &self.inner.throughput;
                ended.ended(ev.tenant_id, incoming.at, success, now_ms());
            }
        }
        if merged.changed {
            self.inner.watchers.notify(ev.tenant_id, ev.job_id);
        }
        merged.changed
    }

    /// One page of `tenant`'s jobs, newest first (by creation, ties by id), with `status`
    /// only when given, starting after `after`.
    pub fn list(
        &self,
        tenant: TenantId,
        status: Option<Status>,
        limit: usize,
        after: Option<Cursor>,
    ) -> Page {
        let mut jobs = Vec::with_capacity(limit.min(1000));
        let before = after.map(|c| (c.ms, c.id));
        let (last, more) = self
            .inner
            .order
            .walk(tenant, before, LIST_SCAN, |&(_, id)| {
                if let Some(job) = self.get(id) {
                    if status.is_none_or(|s| s == job.status) {
                        jobs.push(job);
                    }
                }
                jobs.len() < limit
            });
        let next = match last {
            Some((ms, id)) if more => Some(Cursor { ms, id }),
            _ => None,
        };
        Page { jobs, next }
    }

    /// A watcher of one job's changes.
    pub fn watch_job(&self, id: JobId) -> watch::JobWatch {
        self.inner.watchers.watch_job(id)
    }

    /// A watcher of every change of a tenant's jobs.
    pub fn watch_tenant(&self, tenant: TenantId) -> watch::TenantWatch {
        self.inner.watchers.watch_tenant(tenant)
    }

    /// Watchers registered now.
    pub fn watchers(&self) -> usize {
        self.inner.watchers.count()
    }

    /// `tenant`'s jobs that succeeded and that failed per 10 s, over the last 5 minutes,
    /// oldest first.
    pub fn throughput(&self, tenant: TenantId) -> (Vec<u32>, Vec<u32>) {
        self.inner.throughput.series(tenant, now_ms())
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

    /// Drops finished jobs (SUCCESS, FAILED, CANCELLED) whose final status is older than
    /// `cutoff` (`INDEX_RETENTION`); a job not yet finished stays, however old.
    pub fn evict_finished_before(&self, cutoff: SystemTime) -> usize {
        self.evict(cutoff, true)
    }

    /// Drops jobs not updated since `cutoff`, finished or not.
    pub fn evict_older_than(&self, cutoff: SystemTime) -> usize {
        self.evict(cutoff, false)
    }

    fn evict(&self, cutoff: SystemTime, finished_only: bool) -> usize {
        let cutoff_ms = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut evicted = 0;
        let mut gone = HashSet::new();
        for shard in &self.inner.shards {
            let mut guard = shard.write().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *guard;
            let before = shard.records.len();
            let (texts, backlog) = (&mut shard.texts, &mut shard.backlog);
            shard.records.retain(|id, r| {
                let keep =
                    r.updated_ms() >= cutoff_ms || (finished_only && !r.status.is_terminal());
                if !keep && r.flags & (TEXT_IS_ERROR | TEXT_IS_LOCATION) != 0 {
                    texts.remove(id);
                }
                if !keep {
                    backlog.leave(r.owner, r.status);
                    gone.insert(*id);
                }
                keep
            });
            evicted += before - shard.records.len();
        }
        self.inner.order.remove(&gone, cutoff_ms);
        evicted
    }

    /// Every tenant's unfinished jobs (tenants with none are left out), by tenant.
    pub fn backlogs(&self) -> Vec<(TenantId, Backlog)> {
        let mut by_owner: HashMap<u32, Backlog> = HashMap::new();
        for shard in &self.inner.shards {
            let s = shard.read().unwrap_or_else(|p| p.into_inner());
            for (owner, b) in s.backlog.iter() {
                by_owner.entry(*owner).or_default().add(b);
            }
        }
        let mut by_tenant: HashMap<TenantId, Backlog> = HashMap::new();
        for (owner, b) in by_owner {
            if let Some(tenant) = self.inner.owners.tenant(owner) {
                by_tenant.entry(tenant).or_default().add(&b);
            }
        }
        let mut out: Vec<_> = by_tenant.into_iter().collect();
        out.sort_by_key(|(t, _)| t.0);
        out
    }

    /// `tenant`'s unfinished jobs.
    pub fn backlog(&self, tenant: TenantId) -> Backlog {
        self.backlogs()
            .into_iter()
            .find(|(t, _)| *t == tenant)
            .map(|(_, b)| b)
            .unwrap_or_default()
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
            .sum::<usize>()
            + self.inner.order.heap_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the index has read the stream up to where it stood at start-up.
    pub fn caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }

    /// Marks the index caught up, and gives back what the replay's growth left spare.
    pub(crate) fn set_caught_up(&self) {
        self.inner.order.shrink_to_fit();
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
    fn cancelled_is_final_and_never_lowers_the_attempt() {
        let idx = JobIndex::new();
        let id = JobId::new();
        idx.apply(&ev(id, Status::Running, 2));
        let seq = idx.get(id).unwrap().seq();
        assert!(
            idx.apply(&ev(id, Status::Cancelled, 1)),
            "a cancel beats RUNNING"
        );
        let v = idx.get(id).unwrap();
        assert_eq!((v.status, v.attempts), (Status::Cancelled, 2));
        assert!(v.seq() > seq, "the sequence only grows");
        for late in [Status::Success, Status::Failed, Status::Running] {
            assert!(!idx.apply(&ev(id, late, 3)), "{late} after CANCELLED");
        }
        let done = JobId::new();
        idx.apply(&ev(done, Status::Success, 1));
        assert!(
            !idx.apply(&ev(done, Status::Cancelled, 1)),
            "first final stays"
        );
        assert_eq!(idx.get(done).unwrap().status, Status::Success);
    }

    #[test]
    fn listing_is_per_tenant_newest_first_and_paginates() {
        let idx = JobIndex::new();
        let mut ids = vec![];
        for i in 0..7u32 {
            let id = JobId::new();
            let mut e = ev(id, Status::Queued, 1);
            e.at = format!("2020-01-01T00:00:0{i}.000Z");
            if i == 3 {
                e.tenant_id = TenantId(2);
            }
            idx.apply(&e);
            ids.push(id);
        }
        idx.apply(&ev(ids[5], Status::Success, 1));
        let page = idx.list(TenantId(1), None, 4, None);
        let got: Vec<JobId> = page.jobs.iter().map(|j| j.id).collect();
        assert_eq!(got, vec![ids[6], ids[5], ids[4], ids[2]]);
        let rest = idx.list(TenantId(1), None, 4, page.next);
        let got: Vec<JobId> = rest.jobs.iter().map(|j| j.id).collect();
        assert_eq!(got, vec![ids[1], ids[0]]);
        assert!(rest.next.is_none());
        let done = idx.list(TenantId(1), Some(Status::Success), 10, None);
        assert_eq!(done.jobs.len(), 1);
        assert_eq!(idx.list(TenantId(2), None, 10, None).jobs[0].id, ids[3]);
        let cursor = page.next.unwrap();
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        assert!("nope".parse::<Cursor>().is_err());
    }

    #[test]
    fn backlog_counts_each_tenants_unfinished_jobs() {
        let idx = JobIndex::new();
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        idx.apply(&ev(a, Status::Queued, 1));
        idx.apply(&ev(b, Status::Queued, 1));
        idx.apply(&ev(b, Status::Running, 1));
        let mut other = ev(c, Status::Queued, 1);
        other.tenant_id = TenantId(9);
        idx.apply(&other);
        idx.apply(&ev(b, Status::Queued, 1)); // late: changes nothing
        let mine = Backlog {
            queued: 1,
            running: 1,
            retrying: 0,
        };
        assert_eq!(idx.backlog(TenantId(1)), mine);
        assert_eq!(idx.backlog(TenantId(9)).queued, 1);
        idx.apply(&ev(b, Status::Retrying, 1));
        idx.apply(&ev(b, Status::Running, 2));
        idx.apply(&ev(b, Status::Success, 2));
        idx.apply(&ev(a, Status::Cancelled, 1));
        assert_eq!(
            idx.backlogs(),
            vec![(TenantId(9), idx.backlog(TenantId(9)))]
        );
        let old = SystemTime::now() + Duration::from_secs(60);
        idx.evict_older_than(old);
        assert!(idx.backlogs().is_empty(), "evicted jobs leave the counts");
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
    fn retention_drops_finished_jobs_only() {
        let idx = JobIndex::new();
        let old = |id, status| {
            let mut e = ev(id, status, 1);
            e.at = "2000-01-01T00:00:00.000Z".into();
            e
        };
        let (done, waiting, cancelled, fresh) =
            (JobId::new(), JobId::new(), JobId::new(), JobId::new());
        idx.apply(&old(done, Status::Success));
        idx.apply(&old(waiting, Status::Queued));
        idx.apply(&old(cancelled, Status::Cancelled));
        idx.apply(&ev(fresh, Status::Failed, 1));
        // Failed long ago, then retried long ago: not final, it stays.
        let retried = JobId::new();
        idx.apply(&old(retried, Status::Failed));
        let mut again = ev(retried, Status::Running, 2);
        again.at = "2000-01-01T00:00:01.000Z".into();
        idx.apply(&again);
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(idx.evict_finished_before(cutoff), 2);
        assert!(idx.get(retried).is_some(), "its last attempt is not final");
        assert_eq!(idx.evict_finished_before(cutoff), 0, "nothing more to drop");
        assert!(idx.get(done).is_none() && idx.get(cancelled).is_none());
        assert!(idx.get(waiting).is_some(), "an unfinished job never leaves");
        assert!(idx.get(fresh).is_some(), "finished within the retention");
        let listed: Vec<JobId> = idx
            .list(TenantId(1), None, 10, None)
            .jobs
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(listed.len(), 3, "gone from the listing too");
        assert!(!listed.contains(&done) && !listed.contains(&cancelled));
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

/// Replay speed of `apply` alone in the real shape of jobs (QUEUED, RUNNING, SUCCESS, each
/// kind grouped by 1,000 jobs as the producers group them), with times spread at the
/// seed's rate, in bursts of 1,000 jobs a millisecond, and 100,000 a millisecond. Printed,
/// not asserted: `REPLAY_JOBS=1000000 cargo test --release -p imagejobs --lib
/// replay_speed -- --nocapture`.
#[cfg(test)]
mod replay_speed {
    use super::*;
    use imagejobs_core::message::JobMeta;
    use std::time::Instant;

    fn run(jobs: u64, per_ms: u64, spread_ms: u64) -> (f64, usize) {
        let idx = JobIndex::new();
        let base = 1_700_000_000_000u64;
        let mut elapsed = Duration::ZERO;
        let batch = 1_000u64;
        let mut metas = Vec::with_capacity(batch as usize);
        let mut events = Vec::with_capacity(3 * batch as usize);
        for start in (0..jobs).step_by(batch as usize) {
            metas.clear();
            events.clear();
            for i in start..(start + batch).min(jobs) {
                let id = JobId::new();
                let meta = JobMeta {
                    id,
                    tenant_id: TenantId((i % 4) as i64),
                    client_id: ClientId(1),
                    content_type: Some("image/png".into()),
                    md5: Some(Md5([7; 16])),
                    attempt: 1,
                    payload_location: None,
                    payload_size: Some(150_000),
                };
                let t = base + (i / per_ms) * spread_ms;
                metas.push((meta, t));
            }
            let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            for (m, t) in &metas {
                events.push(StatusEvent::at(m, Status::Queued, at(*t)));
            }
            for (m, t) in &metas {
                events.push(StatusEvent::at(m, Status::Running, at(*t + 40)));
            }
            for (m, t) in &metas {
                let mut e = StatusEvent::at(m, Status::Success, at(*t + 900));
                e.payload_location = Some(format!("http://blob/api/v1/blob/{}.thumb", m.id));
                events.push(e);
            }
            let t = Instant::now();
            for e in &events {
                idx.apply(e);
            }
            elapsed += t.elapsed();
        }
        ((jobs * 3) as f64 / elapsed.as_secs_f64(), idx.len())
    }

    #[test]
    fn replay_speed() {
        let jobs: u64 = if cfg!(debug_assertions) {
            30_000
        } else {
            std::env::var("REPLAY_JOBS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1_000_000)
        };
        for (name, per_ms, spread_ms) in [
            ("spread (10 M/day)", 1, 9),
            ("bursts of 1,000 a ms", 1_000, 1_000),
            ("100,000 a ms", 100_000, 1_000),
        ] {
            let (rate, len) = run(jobs, per_ms, spread_ms);
            assert_eq!(len, jobs as usize);
            println!("{jobs} jobs x 3 events, {name}: {:.0} events/s", rate);
        }
    }
}

#[cfg(test)]
mod merge_rules {
    use super::*;

    fn incoming(status: Status, attempt: u32, at: u64) -> Incoming<'static> {
        Incoming {
            status,
            attempt,
            at,
            owner: 3,
            tenant: TenantId(1),
            md5: None,
            content_type: 0,
            payload_size: None,
            location: None,
            error: None,
        }
    }

    /// Owner 3 is tenant 1's (the jobs of these tests), any other tenant 2's.
    fn tenant_of(n: u32) -> Option<TenantId> {
        Some(TenantId(if n == 3 { 1 } else { 2 }))
    }

    /// A merge of an event of the job's own tenant.
    fn mine(current: Option<&Record>, ev: &Incoming<'_>) -> Merged {
        merge(current, ev, tenant_of).expect("the job's own tenant")
    }

    /// Merges `events` in order into a new record; the last merge.
    fn run(events: &[Incoming<'_>]) -> Merged {
        let mut rec: Option<Record> = None;
        let mut last = None;
        for ev in events {
            let m = mine(rec.as_ref(), ev);
            rec = Some(m.record.clone());
            last = Some(m);
        }
        last.expect("at least one event")
    }

    #[test]
    fn another_tenants_event_is_not_about_the_job() {
        let job = mine(None, &incoming(Status::Queued, 1, 10)).record;
        let mut other = incoming(Status::Success, 1, 20);
        other.owner = 9;
        other.tenant = TenantId(2);
        assert!(merge(Some(&job), &other, tenant_of).is_none());
        // Another client of the same tenant is the same job's.
        other.tenant = TenantId(1);
        let m = merge(Some(&job), &other, tenant_of).expect("same tenant");
        assert_eq!(m.record.status, Status::Success);
        assert_eq!(m.record.owner, 3, "the job keeps its owner");
        // The owners' table is asked only when the owners differ.
        let same = incoming(Status::Running, 1, 15);
        assert!(merge(Some(&job), &same, |_| unreachable!()).is_some());
    }

    #[test]
    fn a_new_job_takes_the_event() {
        let m = mine(None, &incoming(Status::Running, 2, 1_000));
        assert_eq!((m.record.status, m.record.attempt), (Status::Running, 2));
        assert_eq!(
            (m.record.created_ms(), m.record.updated_ms()),
            (1_000, 1_000)
        );
        assert_eq!(
            (m.became, m.changed, m.was_terminal),
            (Some(Status::Running), true, false)
        );
        assert_eq!(m.text, TextChange::Keep);
    }

    #[test]
    fn never_backwards_within_an_attempt_and_a_higher_attempt_wins() {
        let late = run(&[
            incoming(Status::Running, 1, 10),
            incoming(Status::Queued, 1, 5),
        ]);
        assert_eq!(late.record.status, Status::Running);
        assert_eq!(late.became, None, "a late QUEUED changes no status");
        assert_eq!(
            late.record.created_ms(),
            5,
            "but the creation time is the earliest"
        );
        assert_eq!(late.created_before, 10);
        let retried = run(&[
            incoming(Status::Failed, 1, 10),
            incoming(Status::Running, 2, 20),
        ]);
        assert_eq!(
            (retried.record.status, retried.record.attempt),
            (Status::Running, 2)
        );
        assert!(retried.was_terminal);
        let first_final = run(&[
            incoming(Status::Success, 1, 10),
            incoming(Status::Failed, 1, 20),
        ]);
        assert_eq!(first_final.record.status, Status::Success);
        assert!(!first_final.changed);
        assert_eq!(first_final.record.updated_ms(), 10);
    }

    #[test]
    fn cancelled_replaces_what_is_not_final_and_is_never_replaced() {
        let m = run(&[
            incoming(Status::Retrying, 3, 10),
            incoming(Status::Cancelled, 1, 20),
        ]);
        assert_eq!((m.record.status, m.record.attempt), (Status::Cancelled, 3));
        let m = run(&[
            incoming(Status::Cancelled, 1, 10),
            incoming(Status::Running, 4, 20),
        ]);
        assert_eq!(m.record.status, Status::Cancelled);
        assert_eq!(m.became, None);
        let m = run(&[
            incoming(Status::Success, 1, 10),
            incoming(Status::Cancelled, 1, 20),
        ]);
        assert_eq!(
            m.record.status,
            Status::Success,
            "the first final status stays"
        );
    }

    #[test]
    fn facts_fill_in_once_from_any_event() {
        let mut first = incoming(Status::Running, 1, 10);
        first.payload_size = Some(7);
        let mut later = incoming(Status::Queued, 1, 5);
        later.md5 = Some(Md5::of(b"x"));
        later.content_type = 2;
        later.payload_size = Some(9);
        let m = run(&[first, later]);
        assert_eq!(m.record.payload_size, 7, "known sizes stay");
        assert_eq!(m.record.md5, Md5::of(b"x").0);
        assert!(m.record.flags & HAS_MD5 != 0);
        assert_eq!(m.record.content_type, 2);
        assert!(m.changed, "facts changed though the status did not");
    }

    #[test]
    fn one_text_an_error_or_an_odd_location() {
        let mut failed = incoming(Status::Retrying, 1, 10);
        failed.error = Some("blob: 503");
        let m = run(&[incoming(Status::Queued, 1, 5), failed]);
        assert_eq!(m.text, TextChange::Set("blob: 503".into()));
        assert!(m.record.flags & TEXT_IS_ERROR != 0);

        let odd = location::Stored::Text("s3://bucket/key".into());
        let mut done = incoming(Status::Success, 2, 20);
        done.location = Some(&odd);
        let m = mine(Some(&m.record), &done);
        assert_eq!(
            m.text,
            TextChange::Set("s3://bucket/key".into()),
            "the error went with its status"
        );
        assert_eq!(
            m.record.flags & (TEXT_IS_ERROR | TEXT_IS_LOCATION),
            TEXT_IS_LOCATION
        );

        let pattern = location::Stored::Pattern(4);
        let mut next = incoming(Status::Running, 3, 30);
        next.location = Some(&pattern);
        let m = mine(Some(&m.record), &next);
        assert_eq!(m.text, TextChange::Remove);
        assert_eq!(
            (m.record.location, m.record.flags & TEXT_IS_LOCATION),
            (4, 0)
        );

        let m = mine(Some(&m.record), &incoming(Status::Success, 3, 40));
        assert_eq!(
            m.text,
            TextChange::Keep,
            "a location stays until a new one comes"
        );
        assert_eq!(m.record.location, 4);
    }
}
