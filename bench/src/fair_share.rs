//! Part 9, fair share between tenants (issue 21).
//!
//! Tenant A queues 5,000 jobs (direct confirmed publishes, before the consumers start),
//! then, once the consumers are busy with them, tenant B submits 40 through the ingress at
//! once. Measured at 1, 2 and 4 consumers (prefetch 8) against stubs with 10 ms on every
//! request (a job is a blob PUT and a worker POST answered with the result: ~20 ms of
//! service time):
//! - B's submit → SUCCESS p50/p95 against B alone (the same 40 with nothing else queued);
//! - how much of A's backlog was still unfinished when B's last job ended;
//! - A's rate over its whole backlog against A alone, and during B's window (where B's
//!   lane takes its turns: about half the slots while B has work).
//!
//! Then the same contention on one lane (`JOB_LANES=1`: the single FIFO before the
//! lanes), and with B replaced by a tenant that hashes to A's lane (what a collision
//! costs). Tenants' lanes are found first by publishing one job per candidate tenant.
//! Everything runs from a fresh prefix, and every job must end SUCCESS.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::time::Instant;

use imagejobs_core::events::Start;
use imagejobs_core::ids::{ClientId, JobId, Md5, TenantId};
use imagejobs_core::message::JobMeta;
use imagejobs_core::topology::SUBMIT_KEY;
use imagejobs_testkit::deployment::queue_len;
use imagejobs_testkit::{Deployment, EventReader};

use crate::broker::{publish_confirmed, Outgoing};
use crate::harness::{stop_all, Harness, StubsHandle};
use crate::latency::{summarize, Summary};
use crate::report::{Report, Row};

const PART: &str = "fair share";
const PREFETCH: u16 = 8;
const LATENCY: Duration = Duration::from_millis(10);
const LANES: u16 = 16;
/// Targets of issue 21.
const B_P95_WITHIN: f64 = 3.0;
const A_LEFT_AT_LEAST: f64 = 0.5;
const A_RATE_AT_LEAST: f64 = 0.9;

/// How much of the run: jobs of A, jobs of B, consumer counts.
struct Size {
    a: usize,
    b: usize,
    consumers: &'static [usize],
}

/// What one run measured.
#[derive(Default)]
struct Measured {
    /// A's jobs/s from its first SUCCESS to its last.
    a_rate: Option<f64>,
    /// A's jobs/s from B's first submit to B's last SUCCESS.
    a_window_rate: Option<f64>,
    /// Share of A's jobs not finished when B's last job ended.
    a_left: Option<f64>,
    b: Option<Summary>,
    b_p95: Option<Duration>,
}

pub async fn run(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    let size = if h.config.smoke {
        Size {
            a: 300,
            b: 5,
            consumers: &[1],
        }
    } else {
        Size {
            a: 5000,
            b: 40,
            consumers: &[1, 2, 4],
        }
    };
    let lanes = lanes_of_tenants(h, 1..=48).await?;
    let a = 1;
    let a_lane = lanes.get(&a).copied().context("tenant 1's lane")?;
    let b = (2..=48)
        .find(|t| lanes.get(t) != Some(&a_lane))
        .context("every tenant hashed to tenant 1's lane")?;
    let twin = (2..=48).find(|t| lanes.get(t) == Some(&a_lane));
    h.progress(format!(
        "fair share: tenant {a} in lane {a_lane}, tenant {b} in lane {}; {}",
        lanes.get(&b).copied().unwrap_or_default(),
        twin.map_or("no tenant shares A's".into(), |t| format!(
            "tenant {t} shares A's"
        ))
    ));
    let stubs = h.start_stubs(LATENCY, false).await?;
    let result = measure_all(h, &stubs, &size, (a, b, twin), report).await;
    stubs.stop().await;
    result
}

async fn measure_all(
    h: &Harness,
    stubs: &StubsHandle,
    size: &Size,
    (a, b, twin): (i64, i64, Option<i64>),
    report: &mut Report,
) -> anyhow::Result<()> {
    let setting = |c: usize| format!("{c} consumer(s) × prefetch {PREFETCH}, {LANES} lanes");
    let mut at_one = None;
    for &c in size.consumers {
        let a_alone = once(h, stubs, LANES, c, Some((a, size.a)), None).await?;
        let b_alone = once(h, stubs, LANES, c, None, Some((b, size.b))).await?;
        let both = once(h, stubs, LANES, c, Some((a, size.a)), Some((b, size.b))).await?;
        let what = format!("A {} queued, then B {}", size.a, size.b);
        rows(report, &what, &setting(c), &a_alone, &b_alone, &both);
        verdicts(report, c, &a_alone, &b_alone, &both);
        if c == 1 {
            at_one = Some((a_alone, b_alone));
        }
    }
    let Some((a_alone, b_alone)) = at_one else {
        return Ok(());
    };
    // Before the lanes: one FIFO.
    let fifo = once(h, stubs, 1, 1, Some((a, size.a)), Some((b, size.b))).await?;
    let what = format!("before: one queue, A {} then B {}", size.a, size.b);
    rows_of(
        report,
        &what,
        "1 consumer × prefetch 8, 1 lane",
        &fifo,
        &a_alone,
        &b_alone,
    );
    if let Some(twin) = twin {
        let collided = once(h, stubs, LANES, 1, Some((a, size.a)), Some((twin, size.b))).await?;
        let what = format!("collision: B's tenant {twin} in A's lane");
        rows_of(report, &what, &setting(1), &collided, &a_alone, &b_alone);
    }
    Ok(())
}

fn rows(
    report: &mut Report,
    what: &str,
    setting: &str,
    a: &Measured,
    b: &Measured,
    both: &Measured,
) {
    report.row(
        Row::new(PART, "A alone")
            .setting(setting)
            .result(rate(a.a_rate)),
    );
    report.row(
        Row::new(PART, "B alone (submit → SUCCESS)")
            .setting(setting)
            .latency(b.b),
    );
    rows_of(report, what, setting, both, a, b);
}

fn rows_of(
    report: &mut Report,
    what: &str,
    setting: &str,
    m: &Measured,
    a: &Measured,
    b: &Measured,
) {
    report.row(
        Row::new(PART, format!("{what}: B"))
            .setting(setting)
            .latency(m.b)
            .ratio(format!(
                "B p95 {} = {} of alone ({}); A left {}",
                m.b_p95.map_or("?".into(), crate::latency::ms),
                times(m.b_p95, b.b_p95),
                b.b_p95.map_or("?".into(), crate::latency::ms),
                m.a_left
                    .map_or("?".into(), |l| format!("{:.0} %", l * 100.0))
            )),
    );
    report.row(
        Row::new(PART, format!("{what}: A"))
            .setting(setting)
            .result(format!(
                "{} over its backlog, {} during B's window",
                rate(m.a_rate),
                rate(m.a_window_rate)
            ))
            .ratio(format!("{} of alone", ratio(m.a_rate, a.a_rate))),
    );
}

fn verdicts(report: &mut Report, c: usize, a: &Measured, b: &Measured, both: &Measured) {
    let p95 = match (both.b_p95, b.b_p95) {
        (Some(x), Some(solo)) if !solo.is_zero() => Some(x.as_secs_f64() / solo.as_secs_f64()),
        _ => None,
    };
    report.verdict(
        format!(
            "{c} consumer(s): B's p95 ≤ {B_P95_WITHIN}× alone, ≥ {:.0} % of A left",
            A_LEFT_AT_LEAST * 100.0
        ),
        format!(
            "{} alone, A left {}",
            times(both.b_p95, b.b_p95),
            both.a_left
                .map_or("?".into(), |l| format!("{:.0} %", l * 100.0))
        ),
        match (p95, both.a_left) {
            (Some(p), Some(left)) => Some(p <= B_P95_WITHIN && left >= A_LEFT_AT_LEAST),
            _ => None,
        },
    );
    let ar = match (both.a_rate, a.a_rate) {
        (Some(x), Some(solo)) if solo > 0.0 => Some(x / solo),
        _ => None,
    };
    report.verdict(
        format!("{c} consumer(s): A's rate ≥ {A_RATE_AT_LEAST}× alone"),
        ratio(both.a_rate, a.a_rate),
        ar.map(|r| r >= A_RATE_AT_LEAST),
    );
}

fn rate(r: Option<f64>) -> String {
    r.map_or("?".into(), |r| format!("{r:.0} jobs/s"))
}

fn ratio(x: Option<f64>, of: Option<f64>) -> String {
    match (x, of) {
        (Some(x), Some(of)) if of > 0.0 => format!("{:.2}×", x / of),
        _ => "?".into(),
    }
}

fn times(x: Option<Duration>, of: Option<Duration>) -> String {
    ratio(x.map(|d| d.as_secs_f64()), of.map(|d| d.as_secs_f64()))
}

/// A job message of `tenant` as a direct publisher sends one (the ingress's header types).
fn job(exchange: &str, tenant: i64, image: &Bytes) -> (JobId, Outgoing) {
    let meta = JobMeta {
        id: JobId::new(),
        tenant_id: TenantId(tenant),
        client_id: ClientId(1),
        content_type: Some("image/png".into()),
        md5: Some(Md5::of(image)),
        attempt: 1,
        payload_location: None,
        payload_size: None,
    };
    let out = Outgoing {
        exchange: exchange.to_owned(),
        routing_key: SUBMIT_KEY.into(),
        body: image.clone(),
        properties: meta.to_properties(),
    };
    (meta.id, out)
}

/// The lane of each of `tenants` with [`LANES`] lanes, by publishing one job each to a
/// deployment without consumers and seeing which lane grew. The ring of a fresh lanes
/// exchange is the same in every deployment (lane n is bucket n), so this holds for the
/// runs' prefixes too.
async fn lanes_of_tenants(
    h: &Harness,
    tenants: std::ops::RangeInclusive<i64>,
) -> anyhow::Result<HashMap<i64, u16>> {
    let d = h.deployment("fair-lanes");
    d.declare(&h.conn).await?;
    let ch = h.conn.create_channel().await?;
    let image = Bytes::from(imagejobs_testkit::png(8, 8));
    let mut out = HashMap::new();
    let mut before = vec![0u32; usize::from(LANES)];
    for t in tenants {
        let (_, m) = job(&d.topology.jobs_exchange(), t, &image);
        publish_confirmed(&h.conn, 1, 1, 1, Arc::new(move |_| m.clone())).await?;
        for n in 0..LANES {
            let len = queue_len(&ch, &d.topology.lane_queue(n)).await;
            if len > before[usize::from(n)] {
                out.insert(t, n);
            }
            before[usize::from(n)] = len;
        }
    }
    let _ = ch.close(200, "looked".into()).await;
    h.remove(&d).await;
    Ok(out)
}

/// One run on a fresh prefix with `lanes` lanes and `consumers` consumers: A's jobs
/// queued first, then (once the consumers are busy with them) B's submitted at once.
async fn once(
    h: &Harness,
    stubs: &StubsHandle,
    lanes: u16,
    consumers: usize,
    a: Option<(i64, usize)>,
    b: Option<(i64, usize)>,
) -> anyhow::Result<Measured> {
    let d = h.deployment_with("fair", |t| t.job_lanes = lanes);
    d.declare(&h.conn).await?;
    let result = once_on(h, stubs, &d, consumers, a, b).await;
    h.remove(&d).await;
    result
}

async fn once_on(
    h: &Harness,
    stubs: &StubsHandle,
    d: &Deployment,
    consumers: usize,
    a: Option<(i64, usize)>,
    b: Option<(i64, usize)>,
) -> anyhow::Result<Measured> {
    let image = Bytes::from(imagejobs_testkit::png(8, 8));
    let mut reader = EventReader::start(d, Start::First).await;
    let (a_n, b_n) = (a.map_or(0, |x| x.1), b.map_or(0, |x| x.1));
    if let Some((tenant, n)) = a {
        let exchange = d.topology.jobs_exchange();
        let image = image.clone();
        let make = Arc::new(move |_| job(&exchange, tenant, &image).1);
        publish_confirmed(&h.conn, 2, 64, n, make).await?;
    }
    let ingress = match b {
        Some(_) => Some(
            h.start_ingress(d, "fair-ingress", Duration::from_secs(60))
                .await?,
        ),
        None => None,
    };
    let services = h
        .start_consumers(d, &stubs.stubs, consumers, PREFETCH, "fair")
        .await?;
    let mut out = Measured::default();
    let measured = async {
        let mut b_ids: HashMap<JobId, Instant> = HashMap::new();
        let mut b_started = None;
        if let (Some((tenant, n)), Some(ingress)) = (b, &ingress) {
            if a_n > 0 {
                // Busy with A's backlog, at its steady rate.
                reader
                    .wait_success((a_n / 20).max(10), Duration::from_secs(120))
                    .await?;
            }
            b_started = Some(Instant::now());
            b_ids = submit_all(h, &ingress.url, tenant, n, &image).await?;
        }
        let deadline = Duration::from_secs(120 + (a_n as u64) / 10);
        reader.wait_success(a_n + b_n, deadline).await?;
        let done = reader.success_by_job();
        let b_lat: Vec<Duration> = b_ids
            .iter()
            .filter_map(|(id, at)| Some(done.get(id)?.saturating_duration_since(*at)))
            .collect();
        let b_end = b_ids.keys().filter_map(|id| done.get(id)).max().copied();
        let b_set: HashSet<JobId> = b_ids.keys().copied().collect();
        let mut a_times: Vec<Instant> = done
            .iter()
            .filter(|(id, _)| !b_set.contains(id))
            .map(|(_, t)| *t)
            .collect();
        a_times.sort();
        if a_times.len() >= 2 {
            let span = a_times[a_times.len() - 1] - a_times[0];
            out.a_rate = Some((a_times.len() - 1) as f64 / span.as_secs_f64().max(1e-3));
        }
        if let (Some(start), Some(end)) = (b_started, b_end) {
            let in_window = a_times
                .iter()
                .filter(|t| **t >= start && **t <= end)
                .count();
            if a_n > 0 {
                out.a_window_rate = Some(in_window as f64 / (end - start).as_secs_f64().max(1e-3));
                let finished = a_times.iter().filter(|t| **t <= end).count();
                out.a_left = Some((a_n - finished.min(a_n)) as f64 / a_n as f64);
            }
        }
        out.b_p95 = percentile(&b_lat, 0.95);
        out.b = summarize(b_lat);
        anyhow::Ok(())
    }
    .await;
    stop_all(services, Duration::from_secs(10)).await;
    if let Some(ingress) = ingress {
        stop_all(vec![ingress.service], Duration::from_secs(10)).await;
    }
    reader.stop().await;
    measured?;
    Ok(out)
}

fn percentile(samples: &[Duration], q: f64) -> Option<Duration> {
    let mut s = samples.to_vec();
    s.sort();
    let i = ((s.len() as f64 * q).ceil() as usize).checked_sub(1)?;
    s.get(i.min(s.len().saturating_sub(1))).copied()
}

/// Submits `n` jobs of `tenant` at once; when each was sent, by job id.
async fn submit_all(
    h: &Harness,
    url: &str,
    tenant: i64,
    n: usize,
    image: &Bytes,
) -> anyhow::Result<HashMap<JobId, Instant>> {
    let token = h.token(tenant)?;
    let target = format!("{url}/api/v1/job");
    let sends = (0..n).map(|_| {
        let (http, target, token, image) =
            (h.http.clone(), target.clone(), token.clone(), image.clone());
        async move {
            let sent = Instant::now();
            let resp = http
                .post(&target)
                .bearer_auth(&token)
                .header("content-type", "image/png")
                .timeout(Duration::from_secs(30))
                .body(image)
                .send()
                .await?;
            anyhow::ensure!(resp.status() == 202, "submit answered {}", resp.status());
            let body: serde_json::Value = resp.json().await?;
            let id: JobId = body["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("a 202 without a job id")?;
            anyhow::Ok((id, sent))
        }
    });
    futures::future::join_all(sends).await.into_iter().collect()
}
