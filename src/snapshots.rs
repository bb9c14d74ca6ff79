//! Where the job index's snapshots are kept (README.md, "The job index"): this replica's
//! own directory (`INDEX_SNAPSHOT_DIR`), and a blob store every replica shares
//! (`INDEX_SNAPSHOT_URL`).
//!
//! A snapshot is the index as of one offset of the events stream; at start the ingress
//! loads the newest valid one and replays only what came after it. The file format (and
//! every check that a file is whole and ours) is `index::snapshot`'s; this module only
//! moves files:
//! - **On disk**: `{dir}/{prefix}.{offset:020}.snap`, written to a temporary file, fsynced,
//!   renamed, and the directory fsynced, so a crash leaves the old snapshot or the new one,
//!   never half of one. The newest [`KEEP`] are kept: a newest that turns out unreadable
//!   still has an older one behind it.
//! - **Shared**: the file cut into pieces of at most [`PIECE_BYTES`] (a blob store takes
//!   bounded bodies; the stub 32 MiB), `PUT {url}/{prefix}.{offset}.{n}`, then a small
//!   manifest `PUT {url}/{prefix}.latest` naming them, written last so that a reader never
//!   sees a manifest whose pieces are not all there. A new replica with an empty disk GETs
//!   the manifest and its pieces. Replicas that all upload would multiply the traffic, so
//!   a replica uploads only when the shared one is older than half an interval.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::index::snapshot::SnapshotInfo;
use crate::index::JobIndex;

/// Snapshots kept on disk.
pub const KEEP: usize = 2;
/// Largest piece of a shared snapshot.
pub const PIECE_BYTES: usize = 16 * 1024 * 1024;
/// Most pieces a manifest may name (16 GiB of snapshot): a bound on what a bad manifest
/// can make a replica fetch.
const MAX_PIECES: usize = 1024;
/// Each shared piece's request, answer included.
const PIECE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where snapshots go, from the ingress's settings.
#[derive(Clone, Debug)]
pub struct SnapshotSettings {
    pub dir: Option<PathBuf>,
    pub url: Option<reqwest::Url>,
    pub interval: Duration,
    pub prefix: String,
}

/// Where a loaded snapshot came from.
#[derive(Clone, Debug)]
pub enum Source {
    Disk(PathBuf),
    Shared(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Disk(p) => write!(f, "{}", p.display()),
            Source::Shared(u) => write!(f, "{u}"),
        }
    }
}

/// The manifest of a shared snapshot.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Manifest {
    prefix: String,
    offset: i64,
    bytes: u64,
    /// Milliseconds since the epoch.
    written_at_ms: u64,
    pieces: Vec<Piece>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Piece {
    name: String,
    bytes: u64,
}

/// The snapshot store of one ingress; cheap to clone.
#[derive(Clone)]
pub struct Snapshots {
    settings: SnapshotSettings,
    http: reqwest::Client,
    /// The upload under way, if any: awaited at shutdown, and never two at once.
    sharing: std::sync::Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Snapshots {
    pub fn new(settings: SnapshotSettings, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        imagejobs_core::tls::install_crypto();
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        if let Some(dir) = &settings.dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating INDEX_SNAPSHOT_DIR {}", dir.display()))?;
        }
        Ok(Snapshots {
            settings,
            http: builder.build()?,
            sharing: Default::default(),
        })
    }

    /// Whether snapshots are written at all.
    pub fn enabled(&self) -> bool {
        self.settings.dir.is_some() || self.settings.url.is_some()
    }

    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// Loads the newest valid snapshot into `index` (empty): this replica's own first, the
    /// shared one when the disk has none that is valid. Every snapshot passed over is
    /// logged with why; none at all is `None` (a full replay).
    pub async fn load_newest(&self, index: &JobIndex) -> Option<(SnapshotInfo, Source)> {
        if let Some(dir) = &self.settings.dir {
            for path in self.on_disk(dir) {
                let prefix = self.settings.prefix.clone();
                let (idx, p) = (index.clone(), path.clone());
                let loaded = tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&p)?;
                    let reader = std::io::BufReader::with_capacity(1 << 20, file);
                    idx.load_snapshot(reader, &prefix)
                        .map_err(|e| anyhow::anyhow!(e))
                })
                .await;
                match loaded {
                    Ok(Ok(info)) => return Some((info, Source::Disk(path))),
                    Ok(Err(e)) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring an index snapshot")
                    }
                    Err(e) => tracing::warn!(error = %e, "loading an index snapshot failed"),
                }
            }
        }
        if self.settings.url.is_some() {
            match self.fetch_shared(index).await {
                Ok(Some(found)) => return Some(found),
                Ok(None) => tracing::info!("no shared index snapshot yet"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "ignoring the shared index snapshot")
                }
            }
        }
        None
    }

    /// This replica's snapshots, newest (highest offset) first.
    fn on_disk(&self, dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<(i64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let offset = self.offset_in_name(&name)?;
                Some((offset, e.path()))
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// The offset of `{prefix}.{offset}.snap`, when `name` is one of ours.
    fn offset_in_name(&self, name: &str) -> Option<i64> {
        let rest = name
            .strip_prefix(&self.settings.prefix)?
            .strip_prefix('.')?;
        rest.strip_suffix(".snap")?.parse().ok()
    }

    /// Writes a snapshot of `index` as of stream `offset` to disk, atomically, then shares
    /// it when a URL is set. The caller applies no stream events until this returns (a
    /// consistent cut); requests go on, since only read locks are taken.
    pub async fn write(&self, index: &JobIndex, offset: i64) -> anyhow::Result<SnapshotInfo> {
        let started = Instant::now();
        let (info, file) = match &self.settings.dir {
            Some(dir) => {
                let (info, path) = self.write_to_disk(index, offset, dir).await?;
                (info, Some(path))
            }
            None => {
                // Shared only: the snapshot is made in memory, then uploaded.
                let (idx, prefix) = (index.clone(), self.settings.prefix.clone());
                let (info, bytes) = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::new();
                    let info = idx.write_snapshot(&mut buf, &prefix, offset)?;
                    anyhow::Ok((info, buf))
                })
                .await??;
                self.share(&info, Payload::Memory(bytes)).await;
                return Ok(info);
            }
        };
        tracing::info!(
            offset,
            jobs = info.jobs,
            bytes = info.bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "index snapshot written"
        );
        if let (Some(path), Some(_)) = (file, &self.settings.url) {
            let mut sharing = self.sharing.lock().await;
            // One upload at a time: a newer snapshot waits for the one before to be shared.
            if sharing.as_ref().is_none_or(|h| h.is_finished()) {
                let me = self.clone();
                let info2 = info.clone();
                // Uploading reads the finished file: the follower need not wait for it.
                *sharing = Some(tokio::spawn(async move {
                    me.share(&info2, Payload::File(path)).await
                }));
            }
        }
        Ok(info)
    }

    /// Waits (at most a few minutes) for the upload under way.
    pub async fn finish(&self) {
        let pending = self.sharing.lock().await.take();
        if let Some(handle) = pending {
            if tokio::time::timeout(Duration::from_secs(300), handle)
                .await
                .is_err()
            {
                tracing::warn!("the last index snapshot was not shared in time");
            }
        }
    }

    async fn write_to_disk(
        &self,
        index: &JobIndex,
        offset: i64,
        dir: &Path,
    ) -> anyhow::Result<(SnapshotInfo, PathBuf)> {
        let prefix = self.settings.prefix.clone();
        let path = dir.join(format!("{prefix}.{offset:020}.snap"));
        let tmp = dir.join(format!(".{prefix}.{offset}.{}.tmp", std::process::id()));
        let (idx, p, t, d) = (index.clone(), path.clone(), tmp.clone(), dir.to_owned());
        let written = tokio::task::spawn_blocking(move || -> anyhow::Result<SnapshotInfo> {
            let file =
                std::fs::File::create(&t).with_context(|| format!("creating {}", t.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let info = idx.write_snapshot(&mut out, &prefix, offset)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&t, &p)?;
            std::fs::File::open(&d)?.sync_all()?;
            Ok(info)
        })
        .await?;
        let info = match written {
            Ok(info) => info,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        for old in self.on_disk(dir).into_iter().skip(KEEP) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(path = %old.display(), error = %e, "could not remove an old index snapshot");
            }
        }
        Ok((info, path))
    }

    fn object(&self, name: &str) -> Option<String> {
        let url = self.settings.url.as_ref()?;
        Some(format!("{}/{name}", url.as_str().trim_end_matches('/')))
    }

    fn manifest_name(&self) -> String {
        format!("{}.latest", self.settings.prefix)
    }

    async fn manifest(&self) -> anyhow::Result<Option<Manifest>> {
        let Some(url) = self.object(&self.manifest_name()) else {
            return Ok(None);
        };
        let resp = self
            .http
            .get(&url)
            .timeout(PIECE_TIMEOUT)
            .send()
            .await
            .context("fetching the snapshot manifest")?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(
            resp.status().is_success(),
            "the snapshot manifest: {}",
            resp.status()
        );
        let body = resp
            .bytes()
            .await
            .context("reading the snapshot manifest")?;
        anyhow::ensure!(body.len() <= 1 << 20, "the snapshot manifest is over 1 MiB");
        let manifest: Manifest =
            serde_json::from_slice(&body).context("the snapshot manifest is not JSON of ours")?;
        Ok(Some(manifest))
    }

    /// Uploads a written snapshot unless the shared one is as new; failures are logged (the
    /// local snapshot is what this replica needs).
    async fn share(&self, info: &SnapshotInfo, payload: Payload) {
        if self.settings.url.is_none() {
            return;
        }
        match self.manifest().await {
            Ok(Some(m)) if m.prefix == self.settings.prefix && m.offset >= info.offset => return,
            Ok(Some(m)) if m.prefix == self.settings.prefix => {
                let age = now_ms().saturating_sub(m.written_at_ms);
                if Duration::from_millis(age) < self.settings.interval / 2 {
                    return;
                }
            }
            _ => {}
        }
        let started = Instant::now();
        match self.upload(info, payload).await {
            Ok(pieces) => tracing::info!(
                offset = info.offset,
                pieces,
                took_ms = started.elapsed().as_millis() as u64,
                "index snapshot shared"
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not share the index snapshot")
            }
        }
    }

    async fn upload(&self, info: &SnapshotInfo, payload: Payload) -> anyhow::Result<usize> {
        let bytes = match payload {
            Payload::Memory(b) => b,
            Payload::File(path) => tokio::fs::read(&path)
                .await
                .with_context(|| format!("reading {}", path.display()))?,
        };
        let mut pieces = Vec::new();
        for (n, chunk) in bytes.chunks(PIECE_BYTES).enumerate() {
            let name = format!("{}.{}.{n}", self.settings.prefix, info.offset);
            self.put(&name, chunk.to_vec()).await?;
            pieces.push(Piece {
                name,
                bytes: chunk.len() as u64,
            });
        }
        let n = pieces.len();
        let manifest = Manifest {
            prefix: self.settings.prefix.clone(),
            offset: info.offset,
            bytes: bytes.len() as u64,
            written_at_ms: now_ms(),
            pieces,
        };
        self.put(&self.manifest_name(), serde_json::to_vec(&manifest)?)
            .await?;
        Ok(n)
    }

    async fn put(&self, name: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let url = self
            .object(name)
            .context("no INDEX_SNAPSHOT_URL to share snapshots at")?;
        let resp = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(PIECE_TIMEOUT)
            .body(body)
            .send()
            .await
            .with_context(|| format!("storing {name}"))?;
        anyhow::ensure!(
            resp.status().is_success(),
            "storing {name}: {}",
            resp.status()
        );
        Ok(())
    }

    /// The shared snapshot, loaded into `index`.
    async fn fetch_shared(
        &self,
        index: &JobIndex,
    ) -> anyhow::Result<Option<(SnapshotInfo, Source)>> {
        let Some(m) = self.manifest().await? else {
            return Ok(None);
        };
        anyhow::ensure!(
            m.prefix == self.settings.prefix,
            "the shared snapshot is of prefix {:?}",
            m.prefix
        );
        anyhow::ensure!(
            !m.pieces.is_empty() && m.pieces.len() <= MAX_PIECES,
            "the manifest names {} pieces",
            m.pieces.len()
        );
        let total: u64 = m.pieces.iter().map(|p| p.bytes).sum();
        anyhow::ensure!(
            total == m.bytes && m.pieces.iter().all(|p| p.bytes <= PIECE_BYTES as u64),
            "the manifest's sizes do not add up"
        );
        let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for piece in &m.pieces {
            let url = self.object(&piece.name).context("no INDEX_SNAPSHOT_URL")?;
            let resp = self
                .http
                .get(&url)
                .timeout(PIECE_TIMEOUT)
                .send()
                .await
                .with_context(|| format!("fetching {}", piece.name))?;
            anyhow::ensure!(
                resp.status().is_success(),
                "fetching {}: {}",
                piece.name,
                resp.status()
            );
            let body = resp
                .bytes()
                .await
                .with_context(|| format!("reading {}", piece.name))?;
            anyhow::ensure!(
                body.len() as u64 == piece.bytes,
                "{} has {} bytes, not {}",
                piece.name,
                body.len(),
                piece.bytes
            );
            bytes.extend_from_slice(&body);
        }
        let (idx, prefix) = (index.clone(), self.settings.prefix.clone());
        let info = tokio::task::spawn_blocking(move || {
            idx.load_snapshot(&bytes[..], &prefix)
                .map_err(|e| anyhow::anyhow!(e))
        })
        .await??;
        let source = Source::Shared(self.object(&self.manifest_name()).unwrap_or_default());
        Ok(Some((info, source)))
    }
}

/// A written snapshot to share.
enum Payload {
    Memory(Vec<u8>),
    File(PathBuf),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
