//! Part 7, the claim check (issue 17): large images by reference against in the body.
//!
//! For each size (145 KiB and 3 MiB; 70 KiB in the smoke run):
//! - **Ceilings**, raw: PUTs of the same bytes to a minimal HTTP sink in this process (it
//!   reads the body and answers 200 with a JSON `payload_location`), and confirmed publishes of the reference
//!   message (empty body, the three headers). The ingress by reference cannot beat the
//!   smaller of the two.
//! - **The ingress**, closed loop: submits/s answered 202 by reference (its blob store is
//!   the same sink) and in the body; the broker's bytes per job (the job message as the
//!   broker holds it: body, properties and headers) and CPU per job.
//! - **End to end and the consumer**: jobs submitted by a few clients through an ingress
//!   by reference (stored in the stub blob service) and one in the body, run by one
//!   consumer against the stubs (no latency, no image work): submit → SUCCESS latency and
//!   the consumer's CPU per job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use imagejobs_core::config::ByteSize;
use imagejobs_core::events::Start;
use imagejobs_core::ids::{ClientId, JobId, TenantId};
use imagejobs_core::message::JobMeta;
use imagejobs_core::topology::SUBMIT_KEY;
use imagejobs_stubs::{StubConfig, Stubs};
use imagejobs_testkit::deployment::purge;
use imagejobs_testkit::{Deployment, EventReader};

use crate::broker::{self, Outgoing};
use crate::cpu::CpuMeter;
use crate::harness::{stop_all, Harness, IngressProcess};
use crate::image::{Image, Size};
use crate::latency::{summarize, Summary};
use crate::report::{thousands, Report, Row};
use crate::submit::{load, Mode, Submit};

/// Targets of issue 17.
const BYTES_PER_JOB: f64 = 2048.0;
const SPEEDUP_AT_LARGEST: f64 = 3.0;
const OF_CEILING: f64 = 0.6;
const CONSUMER_CPU_SHARE: f64 = 0.5;

/// A blob store that keeps nothing: it reads each PUT's body and answers 200 with a
/// location, as the blob service does.
async fn start_sink(stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new()
        .route(
            "/api/v1/blob/{id}",
            axum::routing::put(
                |axum::extract::Path(id): axum::extract::Path<String>, body: Bytes| async move {
                    let _ = body.len();
                    (
                        axum::http::StatusCode::OK,
                        [("content-type", "application/json")],
                        format!(r#"{{"payload_location":"http://sink/api/v1/blob/{id}"}}"#),
                    )
                },
            ),
        )
        .layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(addr)
}

/// `count` PUTs of `body` to the sink by `conc` clients; PUTs per second.
async fn put_rate(
    h: &Harness,
    sink: SocketAddr,
    body: Bytes,
    conc: usize,
    count: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (next, http, body) = (next.clone(), h.http.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let id = uuid::Uuid::new_v4();
                let r = http
                    .put(format!("http://{sink}/api/v1/blob/{id}"))
                    .header("content-type", "image/png")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "the sink answered {}", r.status());
                r.bytes().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// The job message an ingress publishes for a stored image.
fn reference_message(d: &Deployment, image: &Image) -> broker::MakeMessage {
    let exchange = d.topology.jobs_exchange();
    let (md5, size) = (image.md5, image.png.len() as u64);
    Arc::new(move |i| {
        let id = JobId::new();
        let meta = JobMeta {
            id,
            tenant_id: TenantId(1 + (i % 100) as i64),
            client_id: ClientId(1),
            content_type: Some("image/png".into()),
            md5: Some(md5),
            attempt: 1,
            payload_location: Some(format!("http://127.0.0.1:8081/api/v1/blob/{id}")),
            payload_size: Some(size),
        };
        Outgoing {
            exchange: exchange.clone(),
            routing_key: SUBMIT_KEY.into(),
            body: Bytes::new(),
            properties: meta.to_properties(),
        }
    })
}

/// Bytes of one queued job message as the broker holds it: the body, and the properties
/// with their headers as AMQP encodes them (a field name, a type byte, the value).
async fn message_bytes(h: &Harness, d: &Deployment) -> anyhow::Result<usize> {
    let ch = h.conn.create_channel().await?;
    let got =
        imagejobs_testkit::deployment::get_job(&ch, &d.topology, Duration::from_secs(10)).await;
    let p = &got.delivery.properties;
    let mut bytes = got.delivery.data.len();
    let short =
        |s: &Option<lapin::types::ShortString>| s.as_ref().map_or(0, |s| s.as_str().len() + 1);
    bytes += short(p.content_type()) + short(p.message_id()) + 8 + 1 + 2;
    if let Some(headers) = p.headers() {
        for (k, v) in headers.inner() {
            bytes += 1 + k.as_str().len() + 1;
            bytes += match v {
                lapin::types::AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
                _ => 8,
            };
        }
    }
    let _ = ch.close(200, "done".into()).await;
    Ok(bytes)
}

/// Milliseconds of one MD5 over the image on one core (the best of a few, so that
/// a neighbour's CPU does not count).
fn md5_millis(image: &Image) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let at = std::time::Instant::now();
        std::hint::black_box(imagejobs_core::ids::Md5::of(std::hint::black_box(
            &image.png,
        )));
        best = best.min(at.elapsed().as_secs_f64() * 1000.0);
    }
    best
}

/// What one ingress did with a closed-loop load.
struct Accepted {
    rate: f64,
    msg_bytes: usize,
    broker_us: Option<f64>,
    ingress_us: Option<f64>,
    /// This process: the load generator and, by reference, the sink.
    bench_us: Option<f64>,
    /// Cores that other processes of the machine kept busy meanwhile (the neighbours
    /// sharing these cores), when `/proc/stat` could be read.
    others_cores: Option<f64>,
    /// Bytes per accepted job the broker's VM wrote meanwhile, from `/proc/PID/io`:
    /// every `write` (sockets and files), and what went towards storage (pages dirtied).
    broker_wrote: Option<(f64, f64)>,
}

impl Accepted {
    /// CPU µs per accepted job of the broker, the ingress and this process together.
    fn cpu_per_job(&self) -> Option<f64> {
        Some(self.broker_us.unwrap_or(0.0) + self.ingress_us? + self.bench_us?)
    }

    /// Cores kept busy by the broker, the ingress and this process together.
    fn cores_busy(&self) -> Option<f64> {
        Some(self.cpu_per_job()? * self.rate / 1e6)
    }
}

async fn ingress_load(
    h: &Harness,
    d: &Deployment,
    ingress: &IngressProcess,
    image: &Image,
    count: usize,
) -> anyhow::Result<Accepted> {
    let token = h.token(1)?;
    let submit = Submit::new(image, Mode::Raw);
    let conc = h.plan.ingress_concurrency;
    load(h, &ingress.url, &token, &submit, conc, conc * 2).await?;
    let broker_io = || h.config.broker_pid.and_then(crate::cpu::io_written);
    let meter = h.cpu_meter(vec![("ingress", vec![ingress.service.pid()])]);
    let machine = crate::cpu::machine_busy_seconds();
    let io = broker_io();
    let result = load(h, &ingress.url, &token, &submit, conc, count).await?;
    let spent = meter.spent();
    let io = broker_io().zip(io);
    let machine = crate::cpu::machine_busy_seconds()
        .zip(machine)
        .map(|(end, start)| end - start);
    anyhow::ensure!(
        result.accepted > 0,
        "no submit accepted: {}",
        result.first_refusal.unwrap_or_default()
    );
    let msg_bytes = message_bytes(h, d).await?;
    for q in d.topology.job_queues() {
        purge(&h.conn, &q).await?;
    }
    Ok(Accepted {
        rate: result.rate(),
        msg_bytes,
        broker_us: spent.micros_of("broker", result.accepted),
        ingress_us: spent.micros_of("ingress", result.accepted),
        bench_us: spent.micros_of("bench", result.accepted),
        others_cores: machine.map(|m| {
            let ours = spent.total_seconds();
            (m - ours).max(0.0) / result.elapsed.as_secs_f64()
        }),
        broker_wrote: io.map(|((w1, d1), (w0, d0))| {
            let jobs = result.accepted.max(1) as f64;
            (
                w1.saturating_sub(w0) as f64 / jobs,
                d1.saturating_sub(d0) as f64 / jobs,
            )
        }),
    })
}

/// What jobs through an ingress and one consumer did.
struct EndToEnd {
    /// Submit → SUCCESS.
    latency: Summary,
    /// Jobs over the time from the first submit to the last SUCCESS.
    rate: f64,
    /// The consumer's CPU µs per job.
    consumer_us: Option<f64>,
}

/// Jobs through `ingress` and one consumer, submitted by 4 clients in a closed loop
/// (each waits for its 202, not for the SUCCESS).
async fn through_consumer(
    h: &Harness,
    d: &Deployment,
    ingress: &IngressProcess,
    stubs: &Stubs,
    image: &Image,
    jobs: usize,
    content_md5: bool,
) -> anyhow::Result<EndToEnd> {
    let mut watch = EventReader::start(d, Start::Next).await;
    let consumers = h.start_consumers(d, stubs, 1, 8, "cc-consumer").await?;
    let meter = CpuMeter::start(vec![(
        "consumer",
        consumers.iter().map(|c| c.pid()).collect(),
    )]);
    let token = h.token(1)?;
    let target = format!("{}/api/v1/job", ingress.url);
    let next = Arc::new(AtomicUsize::new(0));
    let first = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (next, http, target, token) =
            (next.clone(), h.http.clone(), target.clone(), token.clone());
        let body = image.png.clone();
        let md5 = content_md5.then(|| image.md5.to_string());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let at = Instant::now();
                let mut req = http
                    .post(&target)
                    .bearer_auth(&token)
                    .header("content-type", "image/png");
                if let Some(md5) = &md5 {
                    req = req.header("content-md5", md5);
                }
                let r = req.body(body.clone()).send().await?;
                anyhow::ensure!(r.status() == 202, "HTTP {}", r.status());
                let v: serde_json::Value = r.json().await?;
                let id: JobId = v["id"].as_str().context("no id")?.parse()?;
                sent.push((id, at));
            }
            anyhow::Ok(sent)
        }));
    }
    let mut sent: HashMap<JobId, Instant> = HashMap::new();
    for t in tasks {
        sent.extend(t.await??);
    }
    let waited = watch
        .wait_success(jobs, Duration::from_secs(60 + jobs as u64))
        .await;
    let cpu = meter.spent().micros_of("consumer", jobs);
    let done = watch.success_by_job();
    watch.stop().await;
    stop_all(consumers, Duration::from_secs(10)).await;
    waited?;
    let last = done.values().max().copied().unwrap_or(first);
    let e2e: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| done.get(id).map(|ok| ok.saturating_duration_since(*at)))
        .collect();
    anyhow::ensure!(
        e2e.len() == jobs,
        "{} of {jobs} jobs ended SUCCESS",
        e2e.len()
    );
    Ok(EndToEnd {
        latency: summarize(e2e).context("no latencies")?,
        rate: jobs as f64
            / last
                .saturating_duration_since(first)
                .as_secs_f64()
                .max(1e-3),
        consumer_us: cpu,
    })
}

pub async fn run(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    let sizes = h.plan.claim_sizes.clone();
    let largest = sizes.iter().map(|s| s.bytes).max().unwrap_or(0);
    for size in sizes {
        one(h, size, size.bytes == largest, report).await?;
    }
    Ok(())
}

async fn one(h: &Harness, size: Size, largest: bool, report: &mut Report) -> anyhow::Result<()> {
    let image = Image::generate(size)?;
    let d = h.deployment("claim-check");
    d.declare(&h.conn).await?;
    let stop = CancellationToken::new();
    let sink = start_sink(stop.clone()).await?;
    let stubs = Stubs::start(
        StubConfig {
            seed: Some(7),
            skip_image_work: true,
            blob_max_bytes: 4 * 1024 * 1024 * 1024,
            ..StubConfig::default()
        },
        stop.clone(),
    )
    .await?;
    let result = measure(h, &d, &image, size, largest, sink, &stubs, report).await;
    stop.cancel();
    stubs.wait().await;
    h.remove(&d).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    h: &Harness,
    d: &Deployment,
    image: &Image,
    size: Size,
    largest: bool,
    sink: SocketAddr,
    stubs: &Stubs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let plan = &h.plan;
    let count = plan.count_for(if largest { 60.0 } else { 500.0 });
    h.progress(format!("claim check: ceilings at {}", size.label));
    let put_cpu = h.cpu_meter(Vec::new());
    let puts = put_rate(h, sink, image.png.clone(), plan.ingress_concurrency, count).await?;
    let put_us = put_cpu.spent().micros_of("bench", count);
    let md5_ms = md5_millis(image);
    let broker_io = || h.config.broker_pid.and_then(crate::cpu::io_written);
    let io = broker_io();
    let took = broker::publish_confirmed(
        &h.conn,
        plan.publish_channels,
        plan.publish_window(512),
        count * 4,
        reference_message(d, image),
    )
    .await?;
    let publishes = (count * 4) as f64 / took.as_secs_f64();
    let publish_wrote = broker_io().zip(io).map(|((w1, d1), (w0, d0))| {
        let n = (count * 4) as f64;
        (
            w1.saturating_sub(w0) as f64 / n,
            d1.saturating_sub(d0) as f64 / n,
        )
    });
    for q in d.topology.job_queues() {
        purge(&h.conn, &q).await?;
    }
    let ceiling = puts.min(publishes);

    let sink_url: reqwest::Url = format!("http://{sink}/api/v1").parse()?;
    h.progress(format!(
        "claim check: the ingress at {}, by reference and in the body",
        size.label
    ));
    let by_ref = h
        .start_ingress_with(d, "cc-ingress-ref", Duration::from_secs(30), |c| {
            c.claim_check_min_bytes = ByteSize(0);
            c.blob_service_url = sink_url;
        })
        .await?;
    let referenced = ingress_load(h, d, &by_ref, image, count).await;
    stop_all(vec![by_ref.service], Duration::from_secs(10)).await;
    let body = h
        .start_ingress(d, "cc-ingress-body", Duration::from_secs(30))
        .await?;
    let in_body = ingress_load(h, d, &body, image, count).await;
    stop_all(vec![body.service], Duration::from_secs(10)).await;
    let (referenced, in_body) = (referenced?, in_body?);

    let blob_url: reqwest::Url = stubs.blob_url.parse()?;
    // Enough jobs that the consumer's CPU time (read in 10 ms ticks) is tens of ticks.
    let jobs = plan.count_for(if largest { 60.0 } else { 500.0 });
    h.progress(format!(
        "claim check: {jobs} jobs end to end at {}, each way",
        size.label
    ));
    let ing = h
        .start_ingress_with(d, "cc-e2e-ref", Duration::from_secs(30), |c| {
            c.claim_check_min_bytes = ByteSize(0);
            c.blob_service_url = blob_url;
        })
        .await?;
    let e2e_ref = through_consumer(h, d, &ing, stubs, image, jobs, false).await;
    stop_all(vec![ing.service], Duration::from_secs(10)).await;
    let ing = h
        .start_ingress(d, "cc-e2e-body", Duration::from_secs(30))
        .await?;
    let e2e_body = through_consumer(h, d, &ing, stubs, image, jobs, false).await;
    // With Content-MD5 (the md5 that every JSON submit carries): the job message then
    // has the md5 header, and the consumer checks it over the body.
    let e2e_md5 = match e2e_body {
        Ok(_) => through_consumer(h, d, &ing, stubs, image, jobs, true).await,
        Err(_) => Err(anyhow::anyhow!("not run")),
    };
    stop_all(vec![ing.service], Duration::from_secs(10)).await;
    let (e2e_ref, e2e_body, e2e_md5) = (e2e_ref?, e2e_body?, e2e_md5?);
    let (ref_cpu, body_cpu, md5_cpu) = (
        e2e_ref.consumer_us,
        e2e_body.consumer_us,
        e2e_md5.consumer_us,
    );

    let us = |x: Option<f64>| x.map_or("?".to_owned(), |v| format!("{v:.0} µs"));
    let ms = |x: Option<f64>| x.map_or("?".to_owned(), |v| format!("{:.1} ms", v / 1000.0));
    report.row(
        Row::new(
            "7 claim check",
            "ceiling: raw blob PUT to a sink, raw reference publish",
        )
        .size(size.label)
        .setting(format!(
            "{} concurrent PUTs; confirmed publishes",
            plan.ingress_concurrency
        ))
        .result(format!(
            "{} PUT/s, {} publish/s",
            thousands(puts),
            thousands(publishes)
        ))
        .ratio(format!(
            "ceiling {} /s; broker wrote {} a reference publish",
            thousands(ceiling),
            publish_wrote.map_or("?".into(), |(all, disk)| format!(
                "{} B, {} B to storage",
                thousands(all),
                thousands(disk)
            ))
        ))
        .cpu(format!("bench (client and sink) {} a PUT", us(put_us))),
    );
    report.row(
        Row::new(
            "7 claim check",
            "MD5 of the image (the md5 header), one core",
        )
        .size(size.label)
        .setting("Md5::of in this process")
        .result(format!(
            "{md5_ms:.2} ms an image, {} MB/s",
            thousands(image.png.len() as f64 / md5_ms / 1000.0)
        )),
    );
    for (what, a) in [("by reference", &referenced), ("in the body", &in_body)] {
        report.row(
            Row::new("7 claim check", format!("ingress raw submit → 202, {what}"))
                .size(size.label)
                .setting(format!("{} concurrent", plan.ingress_concurrency))
                .result(format!("{} req/s", thousands(a.rate)))
                .ratio(format!(
                    "{:.2} of the ceiling; {} B a job message; broker wrote {}; {} cores busy, others {}",
                    a.rate / ceiling,
                    a.msg_bytes,
                    a.broker_wrote.map_or("?".into(), |(all, disk)| format!(
                        "{} B a job, {} B to storage",
                        thousands(all),
                        thousands(disk)
                    )),
                    a.cores_busy().map_or("?".into(), |c| format!("{c:.1}")),
                    a.others_cores.map_or("?".into(), |c| format!("{c:.1}"))
                ))
                .cpu(format!(
                    "broker {} · ingress {} · bench {}",
                    us(a.broker_us),
                    us(a.ingress_us),
                    us(a.bench_us)
                )),
        );
    }
    for (what, e) in [
        ("by reference", &e2e_ref),
        ("in the body", &e2e_body),
        ("in the body, with Content-MD5", &e2e_md5),
    ] {
        report.row(
            Row::new("7 claim check", format!("submit → SUCCESS, {what}"))
                .size(size.label)
                .setting(format!(
                    "{jobs} jobs, 4 clients, 1 consumer × prefetch 8, stubs 0 ms"
                ))
                .result(format!("{} jobs/s", thousands(e.rate)))
                .latency(Some(e.latency))
                .cpu(format!("consumer {}", us(e.consumer_us))),
        );
    }
    report.verdict(
        format!(
            "claim check at {}: broker bytes per job ≤ 2 KiB by reference",
            size.label
        ),
        format!(
            "{} B (in the body {} B)",
            referenced.msg_bytes, in_body.msg_bytes
        ),
        Some(referenced.msg_bytes as f64 <= BYTES_PER_JOB),
    );
    report.verdict(
        format!(
            "claim check at {}: ingress by reference ≥ {OF_CEILING} of its ceiling",
            size.label
        ),
        format!(
            "{:.2} ({} of {} /s)",
            referenced.rate / ceiling,
            thousands(referenced.rate),
            thousands(ceiling)
        ),
        Some(referenced.rate >= OF_CEILING * ceiling),
    );
    let share = ref_cpu.zip(body_cpu).map(|(r, b)| r / b);
    report.verdict(
        format!("claim check at {}: consumer CPU per job by reference ≤ {CONSUMER_CPU_SHARE}× in the body", size.label),
        format!("{} against {} ({})", us(ref_cpu), us(body_cpu), share.map_or("?".into(), |s| format!("{s:.2}×"))),
        share.map(|s| s <= CONSUMER_CPU_SHARE),
    );
    let share = ref_cpu.zip(md5_cpu).map(|(r, b)| r / b);
    report.verdict(
        format!("claim check at {}: consumer CPU per job by reference ≤ {CONSUMER_CPU_SHARE}× in the body with Content-MD5", size.label),
        format!("{} against {} ({})", us(ref_cpu), us(md5_cpu), share.map_or("?".into(), |s| format!("{s:.2}×"))),
        share.map(|s| s <= CONSUMER_CPU_SHARE),
    );
    if largest {
        report.verdict(
            format!("claim check at {}: accepted submits/s by reference ≥ {SPEEDUP_AT_LARGEST}× in the body", size.label),
            format!(
                "{:.1}× ({} against {} req/s); CPU per job of broker, ingress and bench {} against {}",
                referenced.rate / in_body.rate,
                thousands(referenced.rate),
                thousands(in_body.rate),
                ms(referenced.cpu_per_job()),
                ms(in_body.cpu_per_job()),
            ),
            Some(referenced.rate >= SPEEDUP_AT_LARGEST * in_body.rate),
        );
    }
    Ok(())
}
