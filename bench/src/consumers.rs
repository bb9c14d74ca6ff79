//! Part 3, the consumers: jobs per second from a pre-filled work queue to SUCCESS events.
//! The curve of 1, 2 and 4 processes at prefetch 8, 32 and 128 (145 KiB, stubs 0 ms),
//! one run at 20 ms, one with the real image work, and runs with 3 MiB images.
//!
//! Each run has a deployment of its own: the work queue is filled with job messages as a
//! direct publisher sends them (docs/amqp.md), then the consumers start, and the bench reads
//! the events stream. The rate is taken between the SUCCESS of the first tenth of the jobs
//! and the last one, so that process start-up and the first prefetch are not in it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;

use imagejobs_core::events::Start;
use imagejobs_testkit::process::Service;
use imagejobs_testkit::EventReader;

use crate::broker;
use crate::ceiling::Ceiling;
use crate::harness::{stop_all, Harness};
use crate::image::{Image, Size};
use crate::plan::{ConsumerRun, CURVE_PREFETCH, CURVE_PROCESSES};
use crate::report::{ratio, table, thousands, Report, Row};

/// Requests one job makes to the stubs when the worker answers at once (blob PUT, worker
/// POST); each gets the stubs' latency.
pub const REQUESTS_PER_JOB: u32 = 2;

/// A guess of the rate with the real image work (decoding and thumbnailing share the two
/// cores with everything else), to size that run.
const IMAGE_WORK_GUESS: f64 = 250.0;

/// The rate the latency allows: consumers × prefetch jobs in flight, each taking the
/// stubs' latency on each of its requests.
pub fn latency_bound(run: &ConsumerRun) -> Option<f64> {
    let per_job = run.stub_latency.as_secs_f64() * f64::from(REQUESTS_PER_JOB);
    (per_job > 0.0).then(|| (run.processes as f64 * f64::from(run.prefetch)) / per_job)
}

/// What one run gave.
struct Measured {
    rate: f64,
    cpu: String,
    broker_us: Option<f64>,
}

pub async fn run(h: &Harness, ceiling: &Ceiling, report: &mut Report) -> anyhow::Result<()> {
    let reference = h.plan.reference();
    let mut images: HashMap<usize, Image> = HashMap::new();
    // The best run at 0 ms of each size, with its setting and broker CPU per job.
    let mut best: HashMap<usize, (f64, String, Option<f64>)> = HashMap::new();
    let mut curve: HashMap<(usize, u16), f64> = HashMap::new();
    let mut failures = Vec::new();
    for run in h.plan.consumer_runs.clone() {
        let size = run.size;
        if let std::collections::hash_map::Entry::Vacant(e) = images.entry(size.bytes) {
            e.insert(Image::generate(size)?);
        }
        let image = &images[&size.bytes];
        let setting = format!(
            "{} proc × prefetch {}, stubs {} ms{}",
            run.processes,
            run.prefetch,
            run.stub_latency.as_millis(),
            if run.image_work {
                ", real image work"
            } else {
                ""
            }
        );
        let consume = ceiling.consume_at(size);
        let pipeline = ceiling.pipeline_at(size);
        let bound = latency_bound(&run);
        // Size the run from what it should reach: the latency bound, or the best rate at
        // 0 ms so far (the pipeline does not get faster with latency), or at first a third
        // of the pipeline ceiling.
        let cap = best
            .get(&size.bytes)
            .map(|b| b.0)
            .or(pipeline.map(|c| c / 2.0))
            .or(consume.map(|c| c / 3.0))
            .unwrap_or(500.0);
        let guess = if run.image_work {
            IMAGE_WORK_GUESS.min(cap)
        } else {
            bound.unwrap_or(cap).min(cap)
        };
        let count = h.plan.count_for(guess);
        h.progress(format!(
            "consumers: {count} jobs of {}, {setting}",
            size.label
        ));
        let m = match measure(h, image, &run, count).await {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{setting}: {e:#}"));
                report.row(
                    Row::new("3 consumers", "queue → SUCCESS")
                        .size(size.label)
                        .setting(setting)
                        .result(format!("failed: {e:#}")),
                );
                continue;
            }
        };
        let r = if let Some(b) = bound {
            let expected = consume.map_or(b, |c| b.min(c));
            format!(
                "{:.2} × expected {}/s (processes × prefetch / 40 ms)",
                m.rate / expected,
                thousands(expected)
            )
        } else {
            format!(
                "{} · {}",
                ratio(m.rate, pipeline, "pipeline ceiling"),
                ratio(m.rate, consume, "consume ceiling")
            )
        };
        let zero_latency = bound.is_none() && !run.image_work;
        if zero_latency {
            if size == reference {
                curve.insert((run.processes, run.prefetch), m.rate);
            }
            if best.get(&size.bytes).is_none_or(|b| m.rate > b.0) {
                best.insert(size.bytes, (m.rate, setting.clone(), m.broker_us));
            }
        }
        report.row(
            Row::new("3 consumers", "queue → SUCCESS")
                .size(size.label)
                .setting(setting)
                .result(format!("{} jobs/s", thousands(m.rate)))
                .ratio(r)
                .cpu(m.cpu),
        );
    }
    verdicts(h, ceiling, &best, report);
    if !curve.is_empty() {
        report.section(curve_table(reference, &curve));
        report.curve = curve;
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "{} consumer runs failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

fn verdicts(
    h: &Harness,
    ceiling: &Ceiling,
    best: &HashMap<usize, (f64, String, Option<f64>)>,
    report: &mut Report,
) {
    let size = h.plan.reference();
    let Some((rate, setting, broker_us)) = best.get(&size.bytes) else {
        report.verdict(
            format!("consumers at {}, stubs 0 ms", size.label),
            "no run",
            None,
        );
        return;
    };
    let pipeline = ceiling.pipeline_at(size);
    let consume = ceiling.consume_at(size);
    report.verdict(
        format!(
            "consumers at {}, stubs 0 ms ≥ 0.70 of the raw pipeline ceiling",
            size.label
        ),
        format!(
            "best {} ({setting})",
            ratio(*rate, pipeline, "pipeline ceiling")
        ),
        pipeline.map(|p| *rate >= 0.7 * p),
    );
    report.verdict(
        format!(
            "consumers at {}, stubs 0 ms ≥ 0.45 of the raw consume ceiling",
            size.label
        ),
        format!(
            "best {} ({setting})",
            ratio(*rate, consume, "consume ceiling")
        ),
        consume.map(|c| *rate >= 0.45 * c),
    );
    let raw_us = ceiling.consume_broker_us.get(&size.bytes).copied();
    let measured = match (broker_us, raw_us) {
        (Some(b), Some(r)) => format!(
            "{b:.0} µs per job against {r:.0} µs per raw consumed message: {:.2}×",
            b / r
        ),
        _ => "no broker CPU figures (BENCH_BROKER_PID unset)".into(),
    };
    report.verdict(
        format!(
            "broker CPU per consumed job at {} ≤ 1.5× the raw consume ceiling's per message",
            size.label
        ),
        measured,
        broker_us.zip(raw_us).map(|(b, r)| b <= 1.5 * r),
    );
}

/// The curve as a table: jobs/s by processes (rows) and prefetch (columns).
fn curve_table(size: Size, curve: &HashMap<(usize, u16), f64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Consumer throughput at {}, stubs 0 ms (jobs/s), by processes and prefetch:\n",
        size.label
    );
    let rows: Vec<[String; 4]> = CURVE_PROCESSES
        .iter()
        .map(|&p| {
            let cell = |f: u16| curve.get(&(p, f)).map_or("–".into(), |r| thousands(*r));
            [
                format!("{p} process{}", if p == 1 { "" } else { "es" }),
                cell(CURVE_PREFETCH[0]),
                cell(CURVE_PREFETCH[1]),
                cell(CURVE_PREFETCH[2]),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "",
            &format!("prefetch {}", CURVE_PREFETCH[0]),
            &format!("prefetch {}", CURVE_PREFETCH[1]),
            &format!("prefetch {}", CURVE_PREFETCH[2]),
        ],
        &rows,
    );
    out
}

/// One run of the grid on a deployment of its own.
async fn measure(
    h: &Harness,
    image: &Image,
    run: &ConsumerRun,
    count: usize,
) -> anyhow::Result<Measured> {
    let d = h.deployment("consumers");
    d.declare(&h.conn).await?;
    let stubs = h.start_stubs(run.stub_latency, run.image_work).await?;
    let result = async {
        let window = h.plan.publish_window(image.png.len());
        broker::publish_confirmed(
            &h.conn,
            h.plan.publish_channels,
            window,
            count,
            broker::job_message(&d, image),
        )
        .await
        .context("pre-filling the work queue")?;
        let mut watch = EventReader::start(&d, Start::First).await;
        let name = format!(
            "consumers-p{}-f{}-l{}-{}{}",
            run.processes,
            run.prefetch,
            run.stub_latency.as_millis(),
            run.size.label.replace(' ', ""),
            if run.image_work { "-work" } else { "" }
        );
        let services = h
            .start_consumers(&d, &stubs.stubs, run.processes, run.prefetch, &name)
            .await?;
        let meter = h.cpu_meter(vec![(
            "consumers",
            services.iter().map(Service::pid).collect(),
        )]);
        let deadline = Duration::from_secs(60 + count as u64 / 20);
        let waited = watch.wait_success(count, deadline).await;
        let spent = meter.spent();
        let times = watch.success_times();
        watch.stop().await;
        stop_all(services, Duration::from_secs(10)).await;
        waited?;
        let skip = count / 10;
        let span = times[count - 1] - times[skip];
        let jobs = (count - 1 - skip) as f64;
        anyhow::ensure!(span > Duration::ZERO, "all SUCCESS events arrived at once");
        anyhow::Ok(Measured {
            rate: jobs / span.as_secs_f64(),
            cpu: spent.per_job(count),
            broker_us: spent.micros_of("broker", count),
        })
    }
    .await;
    stubs.stop().await;
    h.remove(&d).await;
    result
}
