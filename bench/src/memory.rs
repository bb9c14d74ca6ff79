//! Part 5, memory.
//!
//! - The ingress's job index: the events stream of a fresh deployment is fed directly with
//!   one SUCCESS event per job (carrying every fact a job has: size, type, MD5, result
//!   location, so the record ends as QUEUED + RUNNING + SUCCESS would leave it); an
//!   ingress started on it must read them all before `/readyz` says 200. Bytes per job are
//!   (its RSS − the RSS of an ingress with an empty index) / jobs.
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

/// Budget of the index (issue 5): bytes per job beyond its strings, RSS at a million jobs.
const INDEX_BYTES_PER_JOB: f64 = 200.0;
const INDEX_RSS_AT_1M: u64 = 300 * 1000 * 1000;
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
    let jobs = h.plan.index_jobs;
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

    let d = h.deployment("mem-index");
    d.declare(&h.conn).await?;
    let result = async {
        h.progress(format!(
            "memory: feeding {jobs} SUCCESS events to the events stream"
        ));
        let exchange = d.topology.events_exchange();
        let md5 = Md5::of(b"bench");
        let make = Arc::new(move |i: usize| {
            let id = job_id(i);
            let ev = StatusEvent {
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
            };
            Outgoing {
                exchange: exchange.clone(),
                routing_key: String::new(),
                body: Bytes::from(serde_json::to_vec(&ev).unwrap_or_default()),
                properties: BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            }
        });
        let took = broker::publish_confirmed(&h.conn, 4, 512, jobs, make).await?;
        h.progress(format!(
            "memory: fed at {} events/s; starting an ingress on them",
            thousands(jobs as f64 / took.as_secs_f64())
        ));
        let started = Instant::now();
        let ing = h
            .start_ingress(&d, "mem-index-ingress", Duration::from_secs(600))
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

    let grown = mem.rss.saturating_sub(baseline.rss) as f64;
    let per_job = grown / jobs as f64;
    let strings = payload_location(job_id(0)).len() as f64;
    let beyond = per_job - strings;
    let at_million = baseline.rss as f64 + per_job * 1e6;
    report.row(
        Row::new("5 memory", "ingress RSS, empty index")
            .result(human_bytes(baseline.rss))
            .setting("baseline, after /readyz"),
    );
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
            "{per_job:.0} B/job: {beyond:.0} + the {strings:.0}-byte result location; a record is {} B",
            imagejobs::index::JobIndex::RECORD_BYTES
        )),
    );
    report.verdict(
        "index ≤ 200 bytes per job beyond its strings",
        format!("{beyond:.0} B/job"),
        Some(beyond <= INDEX_BYTES_PER_JOB),
    );
    report.verdict(
        "ingress ≤ 300 MB RSS with a million jobs",
        if jobs == 1_000_000 {
            format!("{:.0} MB", mem.rss as f64 / 1e6)
        } else {
            format!("{:.0} MB (extrapolated from {jobs} jobs)", at_million / 1e6)
        },
        Some(at_million <= INDEX_RSS_AT_1M as f64),
    );
    Ok(())
}

async fn consumer(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    let size = h.plan.memory_image;
    let prefetch = h.plan.memory_prefetch;
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
        "consumer memory ≤ prefetch × message size + a small constant (32 MiB)",
        format!(
            "+{} over idle for {} held",
            human_bytes(grown),
            human_bytes(held)
        ),
        Some(grown <= held + CONSUMER_SLACK),
    );
    Ok(())
}
