//! Part 5, memory.
//!
//! - The ingress's job index at 100 k, 1 M and 5 M jobs: the events stream of a fresh
//!   deployment is fed directly with one SUCCESS event per job (carrying every fact a job
//!   has: size, type, MD5, result location, so the record ends as QUEUED + RUNNING +
//!   SUCCESS would leave it), grouped 100 to a message as producers group them; an ingress
//!   started on it must read them all before `/readyz` says 200. Bytes per job are (its
//!   RSS − the RSS of an ingress with an empty index) / jobs.
//! - A consumer at its prefetch with large images: its `VmHWM` while working through a
//!   queue of them, against its RSS when idle and prefetch × image size.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use lapin::BasicProperties;
use tokio::time::Instant;
use uuid::Uuid;

use imagejobs_core::ids::{ClientId, JobId, Md5, TenantId};
use imagejobs_core::status::{now_rfc3339, StatusEvent};

use crate::broker::{self, Outgoing};
use crate::harness::{stop_all, Harness};
use crate::image::{human_bytes, Image};
use crate::report::{thousands, Report, Row};
use imagejobs_core::events::Start;
use imagejobs_testkit::EventReader;

/// Budget of the index (issue 10): bytes per job, its result location included.
const INDEX_BYTES_PER_JOB: f64 = 150.0;
/// "A small constant" on top of prefetch × image size for a consumer.
const CONSUMER_SLACK: u64 = 32 * 1024 * 1024;

const ID_NAMESPACE: Uuid = Uuid::from_u128(0x2f1e_77a0_5b0c_4c1d_8e3a_6b9d_0c4f_1e2a);

fn job_id(i: usize) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, &(i as u64).to_le_bytes())
}

fn tenant_of(i: usize) -> i64 {
    1 + (i % 100) as i64
}

fn payload_location(id: Uuid) -> String {
    format!("http://127.0.0.1:8081/api/v1/blob/{id}.thumb")
}

pub async fn run(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    let index = index(h, report).await;
    let consumer = consumer(h, report).await;
    index.context("ingress index memory")?;
    consumer.context("consumer memory")
}

async fn index(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    // Baseline: an ingress of an empty deployment, ready.
    let empty = h.deployment("mem-empty");
    empty.declare(&h.conn).await?;
    let baseline = async {
        let ing = h
            .start_ingress(&empty, "mem-empty-ingress", Duration::from_secs(30))
            .await?;
        let mem = ing.service.memory();
        stop_all(vec![ing.service], Duration::from_secs(10)).await;
        mem
    }
    .await;
    h.remove(&empty).await;
    let baseline = baseline?;
    report.row(
        Row::new("5 memory", "ingress RSS, empty index")
            .result(human_bytes(baseline.rss))
            .setting("baseline, after /readyz"),
    );
    let mut curve = Vec::new();
    for &jobs in &h.plan.index_jobs {
        let (per_job, ready) = index_of(h, jobs, baseline.rss, report).await?;
        curve.push((jobs, per_job, ready));
    }
    let at = |n: usize| curve.iter().find(|(j, _, _)| *j == n).map(|(_, b, _)| *b);
    for n in [1_000_000, 5_000_000] {
        let measured = at(n);
        report.verdict(
            format!(
                "index ≤ {INDEX_BYTES_PER_JOB:.0} bytes per job with its locations at {} jobs",
                thousands(n as f64)
            ),
            measured.map_or("not measured (smoke)".into(), |b| format!("{b:.0} B/job")),
            measured.map(|b| b <= INDEX_BYTES_PER_JOB),
        );
    }
    // The seed's scale: 10 million jobs a day, kept for the stream's retention.
    if let Some(&(jobs, per_job, _)) = curve.last() {
        let day = 10_000_000.0;
        let mut text = String::new();
        text.push_str("Index memory and ready time by jobs indexed (one ingress replica):\n\n");
        let rows: Vec<[String; 4]> = curve
            .iter()
            .map(|(n, b, r)| {
                [
                    thousands(*n as f64),
                    format!("{b:.0} B/job"),
                    human_bytes(baseline.rss + (*b * *n as f64) as u64),
                    format!("{r:.1} s"),
                ]
            })
            .collect();
        crate::report::table(
            &mut text,
            &["jobs", "memory per job", "RSS", "ready after"],
            &rows,
        );
        // Memory scales with jobs; a replay's time with events, and a real job writes at
        // least three (QUEUED, RUNNING, its outcome) where this feed writes one: the
        // index at scale (`index_scale`, issue 18) measures replays in that real shape.
        text.push_str(&format!(
            "\nAt the seed's 10 million jobs a day, a day of retention takes about {} per \
ingress replica ({per_job:.0} B/job measured at {} jobs, plus the {} of an empty ingress), the \
default 7-day retention (`INDEX_RETENTION`) about {}. This feed writes one event a job; real \
jobs write three or more, so replay times are measured in that shape by the index at scale \
(`--only index-scale`), not extrapolated from here.\n",
            human_bytes((day * per_job) as u64 + baseline.rss),
            thousands(jobs as f64),
            human_bytes(baseline.rss),
            human_bytes((7.0 * day * per_job) as u64 + baseline.rss),
        ));
        report.section(text);
    }
    report.index_curve = curve;
    Ok(())
}

/// Events per message when feeding the stream: producers group events (docs/amqp.md).
const FEED_GROUP: usize = 100;

/// Feeds `jobs` SUCCESS events to a fresh deployment, starts an ingress on it; returns
/// bytes per job over `baseline` and the seconds until it was ready.
async fn index_of(
    h: &Harness,
    jobs: usize,
    baseline: u64,
    report: &mut Report,
) -> anyhow::Result<(f64, f64)> {
    let d = h.deployment("mem-index");
    d.declare(&h.conn).await?;
    let result = async {
        h.progress(format!(
            "memory: feeding {} SUCCESS events to the events stream, {FEED_GROUP} a message",
            thousands(jobs as f64)
        ));
        let exchange = d.topology.events_exchange();
        let md5 = Md5::of(b"bench");
        let messages = jobs.div_ceil(FEED_GROUP);
        let make = Arc::new(move |m: usize| {
            let events: Vec<StatusEvent> = (m * FEED_GROUP..((m + 1) * FEED_GROUP).min(jobs))
                .map(|i| {
                    let id = job_id(i);
                    StatusEvent {
                        job_id: JobId(id),
                        tenant_id: TenantId(tenant_of(i)),
                        client_id: ClientId(1),
                        status: "SUCCESS".into(),
                        attempt: 1,
                        payload_location: Some(payload_location(id)),
                        payload_size: Some(148_480),
                        content_type: Some("image/png".into()),
                        md5: Some(md5),
                        error: None,
                        next_attempt_at: None,
                        at: now_rfc3339(),
                    }
                })
                .collect();
            Outgoing {
                exchange: exchange.clone(),
                routing_key: String::new(),
                body: Bytes::from(serde_json::to_vec(&events).unwrap_or_default()),
                properties: BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            }
        });
        let took = broker::publish_confirmed(&h.conn, 4, 16, messages, make).await?;
        h.progress(format!(
            "memory: fed at {} events/s; starting an ingress on them",
            thousands(jobs as f64 / took.as_secs_f64())
        ));
        let started = Instant::now();
        let ing = h
            .start_ingress(&d, "mem-index-ingress", Duration::from_secs(900))
            .await?;
        let catch_up = started.elapsed();
        let mem = ing.service.memory();
        // Spot checks: the index answers for jobs at both ends of the stream.
        let mut checked = Ok(());
        for i in [0, jobs / 2, jobs - 1] {
            let url = format!("{}/api/v1/job/{}/status", ing.url, job_id(i));
            let r = h
                .http
                .get(&url)
                .bearer_auth(h.token(tenant_of(i))?)
                .send()
                .await?;
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            if status != 200 || !body.contains("SUCCESS") {
                checked = Err(anyhow::anyhow!("job {i} not indexed: HTTP {status} {body}"));
                break;
            }
        }
        stop_all(vec![ing.service], Duration::from_secs(10)).await;
        checked?;
        anyhow::Ok((mem?, catch_up))
    }
    .await;
    h.remove(&d).await;
    let (mem, catch_up) = result?;
    let per_job = mem.rss.saturating_sub(baseline) as f64 / jobs as f64;
    report.row(
        Row::new(
            "5 memory",
            format!("ingress RSS, {} jobs indexed", thousands(jobs as f64)),
        )
        .setting(format!(
            "ready in {:.1} s ({} events/s); VmHWM {}",
            catch_up.as_secs_f64(),
            thousands(jobs as f64 / catch_up.as_secs_f64()),
            human_bytes(mem.hwm)
        ))
        .result(human_bytes(mem.rss))
        .ratio(format!(
            "{per_job:.0} B/job with its {}-byte result location; a record is {} B",
            payload_location(job_id(0)).len(),
            imagejobs::index::JobIndex::RECORD_BYTES
        )),
    );
    Ok((per_job, catch_up.as_secs_f64()))
}

async fn consumer(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    for prefetch in h.plan.memory_prefetch.clone() {
        consumer_at(h, prefetch, report).await?;
    }
    Ok(())
}

async fn consumer_at(h: &Harness, prefetch: u16, report: &mut Report) -> anyhow::Result<()> {
    let size = h.plan.memory_image;
    let count = usize::from(prefetch) * 3;
    let image = Image::generate(size)?;
    let d = h.deployment("mem-consumer");
    d.declare(&h.conn).await?;
    // The stubs hold each job 2 × 20 ms, so that deliveries queue up to the prefetch.
    let stubs = h.start_stubs(Duration::from_millis(20), false).await?;
    let result = async {
        let mut watch = EventReader::start(&d, Start::First).await;
        let mut services = h
            .start_consumers(&d, &stubs.stubs, 1, prefetch, "mem-consumer")
            .await?;
        let consumer = services.remove(0);
        let idle = consumer.memory();
        h.progress(format!(
            "memory: {count} jobs of {} through one consumer at prefetch {prefetch}",
            size.label
        ));
        let published = broker::publish_confirmed(
            &h.conn,
            h.plan.publish_channels,
            h.plan.publish_window(image.png.len()),
            count,
            broker::job_message(&d, &image),
        )
        .await;
        let waited = match published {
            Ok(_) => watch.wait_success(count, Duration::from_secs(120)).await,
            Err(e) => Err(e),
        };
        let mem = consumer.memory();
        watch.stop().await;
        stop_all(vec![consumer], Duration::from_secs(10)).await;
        waited?;
        anyhow::Ok((idle?, mem?))
    }
    .await;
    stubs.stop().await;
    h.remove(&d).await;
    let (idle, mem) = result?;
    let held = u64::from(prefetch) * image.png.len() as u64;
    let grown = mem.hwm.saturating_sub(idle.rss);
    report.row(
        Row::new("5 memory", "consumer VmHWM, large images")
            .size(size.label)
            .setting(format!(
                "prefetch {prefetch}, {count} jobs, stubs 20 ms; idle RSS {}",
                human_bytes(idle.rss)
            ))
            .result(format!(
                "{} (+{})",
                human_bytes(mem.hwm),
                human_bytes(grown)
            ))
            .ratio(format!(
                "{:.2} × prefetch × size ({})",
                grown as f64 / held as f64,
                human_bytes(held)
            )),
    );
    report.verdict(
        format!("consumer memory at prefetch {prefetch} with {} ≤ prefetch × message size + a small constant (32 MiB)", size.label),
        format!(
            "+{} over idle for {} held",
            human_bytes(grown),
            human_bytes(held)
        ),
        Some(grown <= held + CONSUMER_SLACK),
    );
    Ok(())
}
