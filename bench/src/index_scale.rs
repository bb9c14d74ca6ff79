//! The job index at the seed's scale (issue 18): how long a replica takes to be ready from
//! a full replay, from its own snapshot, and from the shared one, with how much memory,
//! and whether the snapshot's answers are the full replay's.
//!
//! The events stream of a fresh deployment is fed jobs in their real shape: QUEUED (as
//! the ingress groups them), then RUNNING and the outcome (as consumers group them), 100
//! events a message; most jobs succeed, some fail with an error, a few are cancelled or
//! retried. Job times are either spread at the seed's rate (10 M a day: one every 8.64 ms)
//! or in bursts where 1,000 jobs share each millisecond.
//!
//! Then, one after the other on the same stream:
//! 1. replica A, with a snapshot directory and the shared store, replays everything (the
//!    full-replay time, and its RSS per job) and writes a snapshot (a short interval);
//! 2. a tail of 1 % more jobs is fed;
//! 3. replica B starts on A's directory (its own snapshot + the tail), and replica C on an
//!    empty directory with the shared store (the shared snapshot + the tail);
//! 4. a sample of jobs is read from A, B and C and compared; GET latency on A is measured
//!    while A writes snapshots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use lapin::BasicProperties;
use tokio::time::Instant;
use uuid::Uuid;

use imagejobs::ingress::IngressConfig;
use imagejobs_core::ids::{ClientId, JobId, Md5, TenantId};
use imagejobs_core::status::{rfc3339, StatusEvent};
use imagejobs_stubs::{StubConfig, Stubs};
use imagejobs_testkit::process::{free_port, Service};
use imagejobs_testkit::{try_eventually, wait_ready, Deployment};
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Outgoing};
use crate::harness::{stop_all, Harness};
use crate::image::human_bytes;
use crate::report::{thousands, Report, Row};

/// Events a stream message carries, as producers group them.
const GROUP: usize = 100;
/// The seed's rate: 10 M jobs a day.
const SPREAD_MS_PER_JOB: f64 = 86_400_000.0 / 10_000_000.0;
/// Jobs sharing a millisecond in a burst.
const BURST_PER_MS: usize = 1_000;
/// Targets of issue 18.
const SNAPSHOT_READY_SHARE: f64 = 0.10;
const SHARED_READY_SHARE: f64 = 0.15;
const BYTES_PER_JOB: f64 = 100.0;
/// Jobs compared across replicas.
const SAMPLE: usize = 2_000;

const ID_NAMESPACE: Uuid = Uuid::from_u128(0x7a61_0f3e_22c4_4d0b_9e51_3c8a_6f20_b1d7);

fn job_id(i: usize) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, &(i as u64).to_le_bytes())
}

fn tenant_of(i: usize) -> i64 {
    1 + (i % 100) as i64
}

/// How job times are laid out.
#[derive(Clone, Copy, Debug)]
pub enum Times {
    Spread,
    Bursts,
}

impl Times {
    fn created_ms(self, base: u64, i: usize) -> u64 {
        match self {
            Times::Spread => base + (i as f64 * SPREAD_MS_PER_JOB) as u64,
            Times::Bursts => base + (i / BURST_PER_MS) as u64 * 1_000,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Times::Spread => "spread (10 M/day)",
            Times::Bursts => "bursts (1,000 a ms)",
        }
    }
}

/// The `k`-th event (0 QUEUED, 1 RUNNING, 2 the outcome) of job `i`.
fn event(i: usize, k: usize, times: Times, base: u64) -> StatusEvent {
    let id = job_id(i);
    let created = times.created_ms(base, i);
    let at = |d: u64| rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(created + d));
    let mut ev = StatusEvent {
        job_id: JobId(id),
        tenant_id: TenantId(tenant_of(i)),
        client_id: ClientId(1 + (i % 3) as i64),
        status: "QUEUED".into(),
        attempt: 1,
        payload_location: None,
        payload_size: Some(148_480),
        content_type: Some("image/png".into()),
        md5: Some(Md5::of(&(i as u64).to_le_bytes())),
        error: None,
        next_attempt_at: None,
        at: at(0),
    };
    match k {
        0 => {}
        1 => {
            ev.status = "RUNNING".into();
            ev.at = at(40);
        }
        _ => {
            ev.at = at(900);
            match i % 50 {
                0 => {
                    ev.status = "FAILED".into();
                    ev.error = Some("worker: the image could not be decoded".into());
                }
                1 => ev.status = "CANCELLED".into(),
                2 => {
                    ev.status = "SUCCESS".into();
                    ev.attempt = 2;
                    ev.payload_location =
                        Some(format!("http://127.0.0.1:8081/api/v1/blob/{id}.thumb"));
                }
                _ => {
                    ev.status = "SUCCESS".into();
                    ev.payload_location =
                        Some(format!("http://127.0.0.1:8081/api/v1/blob/{id}.thumb"));
                }
            }
        }
    }
    ev
}

/// Feeds jobs `from..to` to `d`'s events stream: message m carries the QUEUED events of
/// group m, the RUNNING of group m − 1 and the outcomes of group m − 2, interleaved as the
/// ingress and the consumers would write them.
async fn feed(
    h: &Harness,
    d: &Deployment,
    from: usize,
    to: usize,
    times: Times,
    base: u64,
) -> anyhow::Result<Duration> {
    let groups = (to - from).div_ceil(GROUP);
    // Each step publishes three messages (one per kind), two steps past the last group.
    let messages = (groups + 2) * 3;
    let exchange = d.topology.events_exchange();
    let make = Arc::new(move |m: usize| {
        let (step, kind) = (m / 3, m % 3);
        let events: Vec<StatusEvent> = step
            .checked_sub(kind)
            .filter(|g| *g < groups)
            .map(|g| {
                let lo = from + g * GROUP;
                (lo..(lo + GROUP).min(to))
                    .map(|i| event(i, kind, times, base))
                    .collect()
            })
            .unwrap_or_default();
        Outgoing {
            exchange: exchange.clone(),
            routing_key: String::new(),
            body: Bytes::from(serde_json::to_vec(&events).unwrap_or_default()),
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        }
    });
    broker::publish_confirmed(&h.conn, 4, 32, messages, make).await
}

/// An ingress child process with snapshots set as given; ready, and the seconds that took.
async fn ingress(
    h: &Harness,
    d: &Deployment,
    name: &str,
    dir: Option<&Path>,
    shared: Option<&str>,
    interval: Duration,
) -> anyhow::Result<(Service, String, f64)> {
    let port = free_port()?;
    let config = IngressConfig {
        broker: d.broker_args(),
        host: [127, 0, 0, 1].into(),
        port,
        index_snapshot_dir: dir.map(Path::to_owned),
        index_snapshot_interval: interval,
        index_snapshot_url: shared.map(reqwest::Url::parse).transpose()?,
        // Every job counts, however old its made-up times.
        index_retention: Duration::from_secs(10 * 365 * 86_400),
        ..IngressConfig::default()
    };
    let program = h.config.bin_dir().join("imagejobs-ingress");
    let mut env = config.broker.to_env();
    env.extend([
        ("JWT_SECRET", crate::harness::SECRET.into()),
        ("RUST_LOG", "info".into()),
    ]);
    let started = Instant::now();
    let mut service = Service::spawn(
        name,
        &program,
        &config.to_args(),
        &env,
        &h.config.log_dir,
        false,
    )?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&h.http, &url, Duration::from_secs(1800), Some(&mut service)).await?;
    Ok((service, url, started.elapsed().as_secs_f64()))
}

/// One metric's sample from `url`'s `/metrics`.
async fn metric(h: &Harness, url: &str, name: &str) -> Option<f64> {
    let text = h
        .http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The job JSON of every sampled job on `url`.
async fn sample(h: &Harness, url: &str, jobs: usize) -> anyhow::Result<Vec<String>> {
    let step = (jobs / SAMPLE).max(1);
    let mut out = Vec::new();
    for i in (0..jobs).step_by(step) {
        let r = h
            .http
            .get(format!("{url}/api/v1/job/{}", job_id(i)))
            .bearer_auth(h.token(tenant_of(i))?)
            .send()
            .await?;
        out.push(format!(
            "{} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(out)
}

/// GET latencies (ms) on `url` for `window`.
async fn get_latencies(h: &Harness, url: &str, window: Duration) -> anyhow::Result<Vec<f64>> {
    let token = h.token(tenant_of(7))?;
    let job = format!("{url}/api/v1/job/{}", job_id(7));
    let end = Instant::now() + window;
    let mut out = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        let r = h.http.get(&job).bearer_auth(&token).send().await?;
        r.bytes().await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn scratch(h: &Harness, name: &str) -> anyhow::Result<PathBuf> {
    let dir = h.config.log_dir.join(format!("snapshots-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub async fn run(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    for &(jobs, times) in &h.plan.index_scale {
        one(h, jobs, times, report).await?;
    }
    Ok(())
}

async fn one(h: &Harness, jobs: usize, times: Times, report: &mut Report) -> anyhow::Result<()> {
    // A stream that keeps every event fed (its default 5 GB would drop the oldest).
    let d = h.deployment("index-scale");
    let mut args = d.topology_args.clone();
    args.events_max_bytes = imagejobs_core::config::ByteSize(200_000_000_000);
    let d = Deployment::with_args(d.urls.clone(), args);
    d.declare(&h.conn).await?;
    // The shared store: the stub blob service, with room for a snapshot of every job.
    let stop = CancellationToken::new();
    let stubs = Stubs::start(
        StubConfig {
            blob_max_bytes: 4 * 1024 * 1024 * 1024,
            ..StubConfig::default()
        },
        stop.clone(),
    )
    .await?;
    let shared = format!("{}/blob", stubs.blob_url);
    let result = measure(h, &d, jobs, times, &shared, report).await;
    stop.cancel();
    stubs.wait().await;
    h.remove(&d).await;
    result
}

async fn measure(
    h: &Harness,
    d: &Deployment,
    jobs: usize,
    times: Times,
    shared: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let base = 1_700_000_000_000u64;
    let tail = (jobs / 100).max(1);
    h.progress(format!(
        "index at scale: feeding {} jobs ({} events), {}",
        thousands(jobs as f64),
        thousands(jobs as f64 * 3.0),
        times.label()
    ));
    let fed = feed(h, d, 0, jobs, times, base).await?;
    h.progress(format!(
        "index at scale: fed at {} events/s; replica A replays it all",
        thousands(jobs as f64 * 3.0 / fed.as_secs_f64())
    ));
    // A snapshot every `interval`: GETs are timed across at least one write.
    let interval = if h.config.smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(20)
    };
    let window = interval + interval / 10;
    let own = scratch(h, "own")?;
    let (a, a_url, full) = ingress(h, d, "index-a", Some(&own), Some(shared), interval).await?;
    let rss = a.memory()?.rss;
    // A's first snapshot, written a snapshot interval after it was ready.
    try_eventually(
        Duration::from_secs(600),
        "replica A's first snapshot",
        || async {
            Ok(metric(h, &a_url, "imagejobs_index_snapshot_offset")
                .await
                .filter(|o| *o > 0.0))
        },
    )
    .await?;
    // And shared: its manifest is written after its pieces.
    let manifest = format!("{shared}/{}.latest", d.prefix);
    try_eventually(
        Duration::from_secs(600),
        "replica A's shared snapshot",
        || async {
            Ok(match h.http.get(&manifest).send().await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            })
        },
    )
    .await?;
    let write_secs = metric(
        h,
        &a_url,
        "imagejobs_index_snapshot_duration_seconds{op=\"write\"}",
    )
    .await
    .unwrap_or(f64::NAN);
    let snap_bytes = metric(h, &a_url, "imagejobs_index_snapshot_size_bytes")
        .await
        .unwrap_or(f64::NAN);
    // GETs on A across its next snapshot write.
    let during = get_latencies(h, &a_url, window).await?;
    h.progress("index at scale: a tail of 1 % more jobs, then replicas B and C");
    feed(h, d, jobs, jobs + tail, times, base).await?;
    let (b, b_url, from_own) = ingress(h, d, "index-b", Some(&own), None, interval).await?;
    let empty = scratch(h, "empty")?;
    let (c, c_url, from_shared) =
        ingress(h, d, "index-c", Some(&empty), Some(shared), interval).await?;
    let all = jobs + tail;
    let (sa, sb, sc) = (
        sample(h, &a_url, all).await?,
        sample(h, &b_url, all).await?,
        sample(h, &c_url, all).await?,
    );
    stop_all(vec![a, b, c], Duration::from_secs(60)).await;
    let same = sa == sb && sa == sc && sa.iter().all(|s| s.starts_with("200"));
    let per_job = rss as f64 / jobs as f64;
    let label = format!("{} jobs, {}", thousands(jobs as f64), times.label());
    report.row(
        Row::new("6 index", format!("full replay, {label}"))
            .setting(format!("{} events", thousands(jobs as f64 * 3.0)))
            .result(format!("ready in {full:.1} s"))
            .ratio(format!(
                "{} events/s; RSS {} = {per_job:.0} B/job",
                thousands(jobs as f64 * 3.0 / full),
                human_bytes(rss)
            )),
    );
    report.row(
        Row::new("6 index", format!("own snapshot + 1 % tail, {label}"))
            .setting(format!(
                "snapshot {} written in {write_secs:.2} s",
                human_bytes(snap_bytes as u64)
            ))
            .result(format!("ready in {from_own:.1} s"))
            .ratio(format!("{:.3} of the full replay", from_own / full)),
    );
    report.row(
        Row::new("6 index", format!("shared snapshot + 1 % tail, {label}"))
            .setting("empty disk, the stub blob store")
            .result(format!("ready in {from_shared:.1} s"))
            .ratio(format!("{:.3} of the full replay", from_shared / full)),
    );
    report.row(
        Row::new("6 index", format!("GET during snapshot writes, {label}"))
            .setting(format!(
                "{} GETs over {:.0} s, a write every {} s",
                during.len(),
                window.as_secs_f64(),
                interval.as_secs()
            ))
            .result(format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
                pct(&during, 0.5),
                pct(&during, 0.99),
                pct(&during, 1.0)
            )),
    );
    report.verdict(
        format!("{label}: restart from its snapshot ≤ {SNAPSHOT_READY_SHARE} of a full replay"),
        format!("{from_own:.1} s against {full:.1} s"),
        Some(from_own <= SNAPSHOT_READY_SHARE * full),
    );
    report.verdict(
        format!(
            "{label}: new replica from the shared snapshot ≤ {SHARED_READY_SHARE} of a full replay"
        ),
        format!("{from_shared:.1} s against {full:.1} s"),
        Some(from_shared <= SHARED_READY_SHARE * full),
    );
    report.verdict(
        format!("{label}: ≤ {BYTES_PER_JOB:.0} B of ingress RSS per job"),
        format!("{per_job:.0} B/job (whole RSS / jobs)"),
        Some(per_job <= BYTES_PER_JOB),
    );
    report.verdict(
        format!(
            "{label}: {} sampled jobs answer the same after a snapshot as after a full replay",
            sa.len()
        ),
        if same {
            "identical".to_owned()
        } else {
            "different".to_owned()
        },
        Some(same),
    );
    Ok(())
}
