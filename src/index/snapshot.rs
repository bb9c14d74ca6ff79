//! The job index as a file (README.md, "The job index"): written as of one offset of the
//! events stream, read back into an empty index that answers every `get` and `list` as the
//! original did.
//!
//! Layout (little-endian, fixed-size records, no per-record allocation either way):
//! ```text
//! magic "IJINDEX\0" | version u32 | prefix (u32 length, bytes) | offset i64 | written ms u64
//! 32 × shard: records (u64 count, count × 57 bytes: id 16, record 41)
//!             texts   (u64 count, count × (id 16, u32 length, bytes))
//! owners   (u32 count, count × (tenant i64, client i64))
//! patterns (u32 count, count × (u32 length, prefix, u32 length, suffix))
//! crc32 of everything before it u32 | total length u64
//! ```
//! Owners and patterns come after the records: they only grow, so written last they hold
//! every number a record written before them refers to. A reader checks the length and the
//! checksum of the whole file before it uses any of it, so a truncated or corrupt file is
//! refused, never half-loaded; every count read from the file is bounded by the bytes left.

use std::io::{self, Read, Write};
use std::time::SystemTime;

use imagejobs_core::ids::{ClientId, JobId, TenantId};
use imagejobs_core::status::Status;

use super::{JobIndex, Record, CONTENT_TYPES, HAS_MD5, SHARDS, TEXT_IS_ERROR, TEXT_IS_LOCATION};

const MAGIC: &[u8; 8] = b"IJINDEX\0";
/// Raised whenever the layout changes; another version is refused (a full replay).
pub const VERSION: u32 = 1;
/// Where the version number is in a file: right after the magic.
pub const VERSION_AT: usize = 8;
const RECORD: usize = 16 + 41;
/// Longest text or pattern part taken from a file.
const MAX_TEXT: usize = 1 << 20;
/// Trailer: crc32 and total length.
const TRAILER: usize = 4 + 8;

/// What a snapshot covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last events stream offset applied to the index it holds.
    pub offset: i64,
    /// When it was written, in ms since the epoch.
    pub written_at_ms: u64,
    pub jobs: u64,
    pub bytes: u64,
}

/// Why a snapshot was not loaded. The index is left empty in every case.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the snapshot: {0}")]
    Io(#[from] io::Error),
    #[error("the snapshot is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("the snapshot is not an index snapshot (no magic)")]
    NotASnapshot,
    #[error("the snapshot is of format version {found}, this ingress reads {VERSION}")]
    Version { found: u32 },
    #[error("the snapshot is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("the snapshot is of AMQP_PREFIX {found:?}, not {expected:?}")]
    ForeignPrefix { found: String, expected: String },
    #[error("the index to load into is not empty")]
    NotEmpty,
}

/// A writer that counts and checksums what passes through.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn encode_record(id: &JobId, r: &Record, out: &mut [u8; RECORD]) {
    out[..16].copy_from_slice(id.0.as_bytes());
    out[16..32].copy_from_slice(&r.md5);
    out[32..36].copy_from_slice(&r.created_s.to_le_bytes());
    out[36..40].copy_from_slice(&r.updated_delta_ms.to_le_bytes());
    out[40..44].copy_from_slice(&r.payload_size.to_le_bytes());
    out[44..48].copy_from_slice(&r.owner.to_le_bytes());
    out[48..50].copy_from_slice(&r.created_sub_ms.to_le_bytes());
    out[50..52].copy_from_slice(&r.attempt.to_le_bytes());
    out[52..54].copy_from_slice(&r.location.to_le_bytes());
    out[54] = r.status as u8;
    out[55] = r.content_type;
    out[56] = r.flags;
}

const STATUSES: [Status; 6] = [
    Status::Queued,
    Status::Running,
    Status::Retrying,
    Status::Success,
    Status::Failed,
    Status::Cancelled,
];

impl JobIndex {
    /// Writes the index, as of stream `offset`, to `w`. Each shard is read under its read
    /// lock only (requests go on); the caller applies no stream events meanwhile, so the
    /// file is the index as of `offset` exactly.
    pub fn write_snapshot<W: Write>(
        &self,
        w: W,
        prefix: &str,
        offset: i64,
    ) -> io::Result<SnapshotInfo> {
        let mut w = Summing {
            inner: w,
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        let written_at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        put_str(&mut w, prefix)?;
        w.write_all(&offset.to_le_bytes())?;
        w.write_all(&written_at_ms.to_le_bytes())?;
        let mut jobs = 0u64;
        let mut rec = [0u8; RECORD];
        for shard in &self.inner.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            w.write_all(&(shard.records.len() as u64).to_le_bytes())?;
            let mut n = 0u64;
            for (id, r) in shard.records.iter() {
                encode_record(id, r, &mut rec);
                w.write_all(&rec)?;
                n += 1;
            }
            if n != shard.records.len() as u64 {
                return Err(io::Error::other("a shard changed its length while written"));
            }
            jobs += n;
            w.write_all(&(shard.texts.len() as u64).to_le_bytes())?;
            for (id, text) in &shard.texts {
                w.write_all(id.0.as_bytes())?;
                put_str(&mut w, text)?;
            }
        }
        let owners = self.inner.owners.all();
        w.write_all(&(owners.len() as u32).to_le_bytes())?;
        for (t, c) in owners {
            w.write_all(&t.0.to_le_bytes())?;
            w.write_all(&c.0.to_le_bytes())?;
        }
        let patterns = self.inner.locations.all();
        w.write_all(&(patterns.len() as u32).to_le_bytes())?;
        for (prefix, suffix) in &patterns {
            put_str(&mut w, prefix)?;
            put_str(&mut w, suffix)?;
        }
        let crc = w.crc.clone().finalize();
        let total = w.len + TRAILER as u64;
        let mut inner = w.inner;
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(&total.to_le_bytes())?;
        inner.flush()?;
        Ok(SnapshotInfo {
            offset,
            written_at_ms,
            jobs,
            bytes: total,
        })
    }

    /// Loads a snapshot of `prefix` from `r` into this index, which must be empty. The
    /// whole file is checked (length, checksum, prefix, version, every value) before any
    /// of it is applied; on any error the index stays empty.
    pub fn load_snapshot<R: Read>(
        &self,
        mut r: R,
        prefix: &str,
    ) -> Result<SnapshotInfo, SnapshotError> {
        if !self.is_pristine() {
            return Err(SnapshotError::NotEmpty);
        }
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        let parsed = Parsed::check(&buf, prefix)?;
        let info = parsed.info.clone();
        parsed.apply(self)?;
        Ok(info)
    }

    /// A new index read from a snapshot of `prefix` (as [`JobIndex::load_snapshot`]).
    pub fn read_snapshot<R: Read>(
        r: R,
        prefix: &str,
    ) -> Result<(JobIndex, SnapshotInfo), SnapshotError> {
        let index = JobIndex::new();
        let info = index.load_snapshot(r, prefix)?;
        Ok((index, info))
    }

    /// Empties the index (a snapshot found stale after loading: a full replay follows).
    pub fn clear(&self) {
        for shard in &self.inner.shards {
            let mut s = shard.write().unwrap_or_else(|p| p.into_inner());
            *s = super::Shard::default();
        }
        self.inner.order.clear();
    }
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(SnapshotError::Corrupt("a section runs past the end"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `each` bytes: no larger than the bytes left allow.
    fn count(&mut self, wide: bool, each: usize) -> Result<usize, SnapshotError> {
        let n = if wide {
            self.u64()?
        } else {
            u64::from(self.u32()?)
        };
        let left = (self.buf.len() - self.at) as u64;
        if n.saturating_mul(each as u64) > left {
            return Err(SnapshotError::Corrupt("a count larger than the file"));
        }
        Ok(n as usize)
    }

    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let n = self.u32()? as usize;
        if n > MAX_TEXT {
            return Err(SnapshotError::Corrupt("a text over 1 MiB"));
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| SnapshotError::Corrupt("a text not UTF-8"))
    }
}

/// A snapshot file whose length, checksum, version and prefix are right.
struct Parsed<'a> {
    info: SnapshotInfo,
    /// The shard sections.
    shards: Cursor<'a>,
    /// Where each shard's section starts.
    shard_starts: Vec<usize>,
    owners: Vec<(TenantId, ClientId)>,
    patterns: Vec<(Box<str>, Box<str>)>,
}

impl<'a> Parsed<'a> {
    fn check(buf: &'a [u8], prefix: &str) -> Result<Self, SnapshotError> {
        if buf.len() < MAGIC.len() + 4 {
            return Err(if buf.starts_with(&MAGIC[..buf.len().min(8)]) {
                SnapshotError::Truncated(buf.len())
            } else {
                SnapshotError::NotASnapshot
            });
        }
        if &buf[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&buf[VERSION_AT..VERSION_AT + 4]);
        let version = u32::from_le_bytes(version);
        if version != VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        if buf.len() < MAGIC.len() + 4 + TRAILER {
            return Err(SnapshotError::Truncated(buf.len()));
        }
        let body = buf.len() - TRAILER;
        let mut trailer = Cursor { buf, at: body };
        let crc = trailer.u32()?;
        let total = trailer.u64()?;
        if total != buf.len() as u64 {
            return Err(if total > buf.len() as u64 {
                SnapshotError::Truncated(buf.len())
            } else {
                SnapshotError::Corrupt("its length is not the one it records")
            });
        }
        if crc32fast::hash(&buf[..body]) != crc {
            return Err(SnapshotError::Corrupt("checksum mismatch"));
        }
        let buf = &buf[..body];
        let mut c = Cursor { buf, at: 12 };
        let found = c.str()?;
        if found != prefix {
            return Err(SnapshotError::ForeignPrefix {
                found: found.to_owned(),
                expected: prefix.to_owned(),
            });
        }
        let offset = c.i64()?;
        let written_at_ms = c.u64()?;
        let shards_at = c.at;
        let mut shard_starts = Vec::with_capacity(SHARDS);
        let mut jobs = 0u64;
        for _ in 0..SHARDS {
            shard_starts.push(c.at);
            let n = c.count(true, RECORD)?;
            c.take(n * RECORD)?;
            jobs += n as u64;
            let texts = c.count(true, 16 + 4)?;
            for _ in 0..texts {
                c.take(16)?;
                c.str()?;
            }
        }
        let n = c.count(false, 16)?;
        let mut owners = Vec::with_capacity(n);
        for _ in 0..n {
            owners.push((TenantId(c.i64()?), ClientId(c.i64()?)));
        }
        let n = c.count(false, 8)?;
        let mut patterns = Vec::with_capacity(n);
        for _ in 0..n {
            patterns.push((c.str()?.into(), c.str()?.into()));
        }
        if c.at != buf.len() {
            return Err(SnapshotError::Corrupt("bytes after the last section"));
        }
        Ok(Parsed {
            info: SnapshotInfo {
                offset,
                written_at_ms,
                jobs,
                bytes: total,
            },
            shards: Cursor { buf, at: shards_at },
            shard_starts,
            owners,
            patterns,
        })
    }

    /// Fills `index`; on a bad value, empties it again.
    fn apply(self, index: &JobIndex) -> Result<(), SnapshotError> {
        let applied = self.fill(index);
        if applied.is_err() {
            index.clear();
        }
        applied
    }

    fn fill(mut self, index: &JobIndex) -> Result<(), SnapshotError> {
        let inner = &index.inner;
        for &(t, c) in &self.owners {
            inner.owners.store(t, c);
        }
        if inner.owners.all().len() != self.owners.len() {
            return Err(SnapshotError::Corrupt("an owner twice"));
        }
        inner.locations.restore(std::mem::take(&mut self.patterns));
        let patterns = inner.locations.all().len();
        // The shards are independent: two threads fill them (a load is the start-up of a
        // replica, and most of its time), each keeping its jobs' order sorted; one merge.
        let (owners, buf, starts) = (&self.owners, self.shards.buf, &self.shard_starts);
        let orders = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..LOADERS)
                .map(|w| {
                    scope.spawn(move || {
                        let mut order = Vec::new();
                        for shard_no in (w..SHARDS).step_by(LOADERS) {
                            let c = Cursor {
                                buf,
                                at: starts[shard_no],
                            };
                            fill_shard(index, shard_no, c, owners, patterns, &mut order)?;
                        }
                        order.sort_unstable();
                        Ok::<_, SnapshotError>(order)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or(Err(SnapshotError::Corrupt("a loader failed")))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        inner.order.rebuild_sorted(orders);
        Ok(())
    }
}

/// Threads that load a snapshot's shards.
const LOADERS: usize = 2;

/// Fills one shard from its section; its jobs' (tenant, created, id) go to `order`.
fn fill_shard(
    index: &JobIndex,
    shard_no: usize,
    mut c: Cursor<'_>,
    owners: &[(TenantId, ClientId)],
    patterns: usize,
    order: &mut Vec<(TenantId, u64, JobId)>,
) -> Result<(), SnapshotError> {
    let n = c.count(true, RECORD)?;
    let mut shard = index.inner.shards[shard_no]
        .write()
        .unwrap_or_else(|p| p.into_inner());
    shard.records.reserve(n);
    order.reserve(n);
    for _ in 0..n {
        let raw: [u8; RECORD] = c.array()?;
        let (id, r) = decode_record(&raw)?;
        if index.shard_no(id) != shard_no {
            return Err(SnapshotError::Corrupt("a job in another shard"));
        }
        if r.owner as usize >= owners.len() || usize::from(r.location) > patterns {
            return Err(SnapshotError::Corrupt("a record refers to nothing"));
        }
        order.push((owners[r.owner as usize].0, r.created_ms(), id));
        shard.backlog.enter(r.owner, r.status);
        // The checksum vouches that these are the writer's records, one slot a job.
        shard.records.insert_new(id, r);
    }
    let texts = c.count(true, 20)?;
    for _ in 0..texts {
        let id = JobId(uuid::Uuid::from_bytes(c.array()?));
        let text = c.str()?;
        shard.texts.insert(id, text.into());
    }
    Ok(())
}

fn decode_record(raw: &[u8; RECORD]) -> Result<(JobId, Record), SnapshotError> {
    let u16_at = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let mut id = [0u8; 16];
    id.copy_from_slice(&raw[..16]);
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&raw[16..32]);
    let status = *STATUSES
        .get(usize::from(raw[54]))
        .ok_or(SnapshotError::Corrupt("an unknown status"))?;
    if usize::from(raw[55]) > CONTENT_TYPES.len()
        || raw[56] & !(HAS_MD5 | TEXT_IS_ERROR | TEXT_IS_LOCATION) != 0
    {
        return Err(SnapshotError::Corrupt("an impossible record"));
    }
    Ok((
        JobId(uuid::Uuid::from_bytes(id)),
        Record {
            md5,
            created_s: u32_at(32),
            updated_delta_ms: u32_at(36),
            payload_size: u32_at(40),
            owner: u32_at(44),
            created_sub_ms: u16_at(48),
            attempt: u16_at(50),
            location: u16_at(52),
            status,
            content_type: raw[55],
            flags: raw[56],
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagejobs_core::ids::Md5;
    use imagejobs_core::message::JobMeta;
    use imagejobs_core::status::StatusEvent;

    /// An index with every kind of record: many tenants, texts, both kinds of location,
    /// retried, cancelled, failed with errors.
    fn sample() -> (JobIndex, Vec<(JobId, TenantId)>) {
        let idx = JobIndex::new();
        let mut ids = Vec::new();
        for i in 0..500u32 {
            let id = JobId::new();
            let tenant = TenantId(i64::from(i % 7));
            let meta = JobMeta {
                id,
                tenant_id: tenant,
                client_id: ClientId(i64::from(i % 3)),
                content_type: (i % 5 != 0).then(|| "image/png".into()),
                md5: (i % 4 != 0).then(|| Md5::of(&i.to_le_bytes())),
                attempt: 1,
                payload_location: None,
                payload_size: Some(u64::from(i) * 10),
            };
            let at = |s: u32| {
                SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_millis(
                        1_700_000_000_000 + u64::from(i / 3) * 7 + u64::from(s),
                    )
            };
            idx.apply(&StatusEvent::at(&meta, Status::Queued, at(0)));
            idx.apply(&StatusEvent::at(&meta, Status::Running, at(5)));
            let mut end = match i % 6 {
                0 => StatusEvent::at(&meta, Status::Failed, at(9)),
                1 => StatusEvent::at(&meta, Status::Cancelled, at(9)),
                2 => StatusEvent::at(&meta, Status::Retrying, at(9)),
                _ => StatusEvent::at(&meta, Status::Success, at(9)),
            };
            match i % 6 {
                0 | 2 => end.error = Some(format!("error {i}")),
                3 => end.payload_location = Some(format!("http://blob/api/v1/blob/{id}.thumb")),
                4 => end.payload_location = Some(format!("s3://bucket/{i}")),
                _ => {}
            }
            idx.apply(&end);
            if i % 12 == 2 {
                // Retried: a second attempt succeeds.
                let mut again = meta.clone();
                again.attempt = 2;
                let mut done = StatusEvent::at(&again, Status::Success, at(20));
                done.payload_location = Some(format!("http://blob/api/v1/blob/{id}.thumb"));
                idx.apply(&done);
            }
            if i % 10 == 7 {
                // A QUEUED that came late, earlier than the job's first event.
                let early = at(0) - std::time::Duration::from_millis(3);
                idx.apply(&StatusEvent::at(&meta, Status::Queued, early));
            }
            ids.push((id, tenant));
        }
        (idx, ids)
    }

    fn bytes_of(idx: &JobIndex, prefix: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        let info = idx.write_snapshot(&mut buf, prefix, 41).unwrap();
        assert_eq!(info.bytes, buf.len() as u64);
        assert_eq!(info.jobs, idx.len() as u64);
        buf
    }

    fn same(a: &JobIndex, b: &JobIndex, ids: &[(JobId, TenantId)]) {
        for (id, _) in ids {
            assert_eq!(a.get(*id), b.get(*id), "job {id}");
        }
        for t in 0..7 {
            let (pa, pb) = (
                a.list(TenantId(t), None, 1000, None),
                b.list(TenantId(t), None, 1000, None),
            );
            assert_eq!(pa.jobs, pb.jobs, "tenant {t}");
        }
    }

    #[test]
    fn round_trip_answers_as_the_original() {
        let (idx, ids) = sample();
        let buf = bytes_of(&idx, "p");
        let (back, info) = JobIndex::read_snapshot(&buf[..], "p").unwrap();
        assert_eq!(info.offset, 41);
        assert_eq!(info.jobs, ids.len() as u64);
        let views: Vec<_> = ids.iter().filter_map(|(id, _)| idx.get(*id)).collect();
        assert!(views
            .iter()
            .any(|v| v.attempts == 2 && v.status == Status::Success));
        assert!(views.iter().any(|v| v.status == Status::Cancelled));
        assert!(views.iter().any(|v| v.error.is_some()));
        assert!(views.iter().any(|v| v
            .payload_location
            .as_deref()
            .is_some_and(|l| l.starts_with("s3:"))));
        assert_eq!(back.len(), idx.len());
        same(&idx, &back, &ids);
        assert_eq!(back.backlogs(), idx.backlogs(), "the tenants' backlogs");
        assert!(!idx.backlogs().is_empty());
        // And it goes on from there: a later event applies as it would have.
        let (id, _) = ids[2];
        let meta = JobMeta {
            id,
            tenant_id: TenantId(2),
            client_id: ClientId(2),
            content_type: None,
            md5: None,
            attempt: 2,
            payload_location: None,
            payload_size: None,
        };
        let ev = StatusEvent::new(&meta, Status::Running);
        assert_eq!(idx.apply(&ev), back.apply(&ev));
        assert_eq!(idx.get(id), back.get(id));
        assert!(matches!(
            back.load_snapshot(&buf[..], "p"),
            Err(SnapshotError::NotEmpty)
        ));
    }

    #[test]
    fn every_truncation_is_refused() {
        let (idx, _) = sample();
        let buf = bytes_of(&idx, "p");
        let step = (buf.len() / 997).max(1);
        for cut in (0..buf.len()).step_by(step).chain([buf.len() - 1]) {
            let back = JobIndex::new();
            let e = back.load_snapshot(&buf[..cut], "p").unwrap_err();
            assert!(
                matches!(
                    e,
                    SnapshotError::Truncated(_)
                        | SnapshotError::Corrupt(_)
                        | SnapshotError::NotASnapshot
                ),
                "cut at {cut}: {e}"
            );
            assert!(back.is_empty());
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let (idx, _) = sample();
        let buf = bytes_of(&idx, "p");
        let step = (buf.len() / 1500).max(1);
        let ends = (0..16).chain(buf.len() - 12..buf.len());
        for at in (0..buf.len()).step_by(step).chain(ends) {
            let mut bad = buf.clone();
            bad[at] ^= 1 << (at % 8);
            let back = JobIndex::new();
            let e = back.load_snapshot(&bad[..], "p").unwrap_err();
            let trailer_len = buf.len() - 8;
            let right = match at {
                0..8 => matches!(e, SnapshotError::NotASnapshot),
                8..12 => matches!(e, SnapshotError::Version { .. }),
                // The recorded length: a longer one reads as a cut file.
                _ if at >= trailer_len => {
                    matches!(e, SnapshotError::Truncated(_) | SnapshotError::Corrupt(_))
                }
                _ => matches!(e, SnapshotError::Corrupt(_)),
            };
            assert!(right, "byte {at}: {e}");
            assert!(back.is_empty());
        }
    }

    #[test]
    fn others_and_noise_are_refused() {
        let (idx, _) = sample();
        let buf = bytes_of(&idx, "p");
        let load = |b: &[u8], p: &str| JobIndex::new().load_snapshot(b, p).unwrap_err();
        assert!(matches!(
            load(&buf, "q"),
            SnapshotError::ForeignPrefix { .. }
        ));
        let mut other = buf.clone();
        other[VERSION_AT] = 9;
        assert!(matches!(
            load(&other, "p"),
            SnapshotError::Version { found: 9 }
        ));
        assert!(matches!(load(&[], "p"), SnapshotError::Truncated(0)));
        let noise: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        assert!(matches!(load(&noise, "p"), SnapshotError::NotASnapshot));
        let mut fake = MAGIC.to_vec();
        fake.extend_from_slice(&VERSION.to_le_bytes());
        fake.extend(noise);
        assert!(load(&fake, "p").to_string().contains("snapshot"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            /// Any bytes after a right header: an error, never a panic or a half index.
            #[test]
            fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
                let mut buf = MAGIC.to_vec();
                buf.extend_from_slice(&VERSION.to_le_bytes());
                buf.extend_from_slice(&body);
                let idx = JobIndex::new();
                prop_assert!(idx.load_snapshot(&buf[..], "p").is_err());
                prop_assert!(idx.is_empty());
            }
        }
    }

    /// Speed at a million jobs (`SNAP_JOBS` for another count), printed, not asserted:
    /// `cargo test --release -p imagejobs --lib snapshot_speed -- --nocapture`.
    #[test]
    fn snapshot_speed() {
        let n: u32 = if cfg!(debug_assertions) {
            20_000
        } else {
            std::env::var("SNAP_JOBS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1_000_000)
        };
        let idx = JobIndex::new();
        for i in 0..n {
            let meta = JobMeta {
                id: JobId::new(),
                tenant_id: TenantId(i64::from(i % 50)),
                client_id: ClientId(1),
                content_type: Some("image/png".into()),
                md5: Some(Md5::of(&i.to_le_bytes())),
                attempt: 1,
                payload_location: None,
                payload_size: Some(150_000),
            };
            let mut ev = StatusEvent::new(&meta, Status::Success);
            ev.payload_location = Some(format!("http://blob/api/v1/blob/{}.thumb", meta.id));
            idx.apply(&ev);
        }
        let t = std::time::Instant::now();
        let mut buf = Vec::with_capacity(n as usize * 60);
        idx.write_snapshot(&mut buf, "p", 1).unwrap();
        let wrote = t.elapsed();
        let t = std::time::Instant::now();
        let back = JobIndex::new();
        back.load_snapshot(&buf[..], "p").unwrap();
        println!(
            "{n} jobs: {} bytes ({} B/job), written in {wrote:?}, loaded in {:?}",
            buf.len(),
            buf.len() / n as usize,
            t.elapsed()
        );
        assert_eq!(back.len(), n as usize);
    }
}
