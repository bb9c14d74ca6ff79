//! Part 3, the consumers: jobs per second from a pre-filled work queue to SUCCESS events,
//! for 1 and 2 consumer processes, several prefetch values, stubs at 0 and 20 ms.
//!
//! Each run has a deployment of its own: the work queue is filled with job messages as a
//! direct publisher sends them (DESIGN §4), then the consumers start, and the bench reads
//! the events stream. The rate is taken between the SUCCESS of the first tenth of the jobs
//! and the last one, so that process start-up and the first prefetch are not in it.

use std::time::Duration;

use anyhow::Context;

use crate::broker;
use crate::ceiling::Ceiling;
use crate::harness::{stop_all, Harness};
use crate::image::Image;
use crate::plan::ConsumerRun;
use crate::report::{ratio, thousands, Report, Row};
use imagejobs_core::events::Start;
use imagejobs_testkit::process::Service;
use imagejobs_testkit::EventReader;

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

pub async fn run(h: &Harness, ceiling: &Ceiling, report: &mut Report) -> anyhow::Result<()> {
    let size = h.plan.reference();
    let image = Image::generate(size)?;
    let consume = ceiling.consume_at(size);
    let mut best_zero: Option<(f64, String)> = None;
    let (mut latency_runs, mut latency_ok) = (0, 0);
    let mut failures = Vec::new();
    for run in h.plan.consumer_runs.clone() {
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
        let bound = latency_bound(&run);
        let expected = match (bound, consume) {
            (Some(b), Some(c)) => Some(b.min(c)),
            (Some(b), None) => Some(b),
            (None, c) => c,
        };
        // Size the run from what it should reach: the latency bound, capped by the best
        // rate at 0 ms so far (the pipeline does not get faster with latency), or at first
        // a third of the consume ceiling.
        let cap = best_zero
            .as_ref()
            .map(|(r, _)| *r)
            .or(consume.map(|c| c / 3.0))
            .unwrap_or(1000.0);
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
        let (rate, cpu) = match measure(h, &image, &run, count).await {
            Ok(r) => r,
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
        let mut r = ratio(rate, consume, "ceiling");
        if let (Some(b), Some(e)) = (bound, expected) {
            r.push_str(&format!("; {:.2} × expected {}/s", rate / e, thousands(e)));
            // Against what this pipeline reaches at all here (its best rate at 0 ms), for
            // telling the latency law apart from the pipeline's own limit.
            if let Some((zero, _)) = &best_zero {
                let own = b.min(*zero);
                if own < e {
                    r.push_str(&format!(
                        " ({:.2} × min(bound, best 0 ms rate) {}/s)",
                        rate / own,
                        thousands(own)
                    ));
                }
            }
            latency_runs += 1;
            if (rate / e - 1.0).abs() <= 0.2 {
                latency_ok += 1;
            }
        }
        if bound.is_none() && !run.image_work && best_zero.as_ref().is_none_or(|(b, _)| rate > *b) {
            best_zero = Some((rate, setting.clone()));
        }
        report.row(
            Row::new("3 consumers", "queue → SUCCESS")
                .size(size.label)
                .setting(setting)
                .result(format!("{} jobs/s", thousands(rate)))
                .ratio(r)
                .cpu(cpu),
        );
    }
    match &best_zero {
        Some((rate, setting)) => report.verdict(
            format!(
                "consumers at {}, stubs 0 ms ≥ 50% of the consume ceiling",
                size.label
            ),
            format!("best {} ({setting})", ratio(*rate, consume, "ceiling")),
            consume.map(|c| *rate >= 0.5 * c),
        ),
        None => report.verdict(
            format!(
                "consumers at {}, stubs 0 ms ≥ 50% of the consume ceiling",
                size.label
            ),
            "no run",
            None,
        ),
    }
    if latency_runs > 0 {
        report.verdict(
            "consumers at 20 ms: within 20% of min(ceiling, consumers × prefetch / latency)",
            format!("{latency_ok} of {latency_runs} runs within 20%"),
            Some(latency_ok == latency_runs),
        );
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

/// One run of the grid on a deployment of its own; returns jobs per second.
async fn measure(
    h: &Harness,
    image: &Image,
    run: &ConsumerRun,
    count: usize,
) -> anyhow::Result<(f64, String)> {
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
            "consumers-p{}-f{}-l{}{}",
            run.processes,
            run.prefetch,
            run.stub_latency.as_millis(),
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
        let cpu = meter.per_job(count);
        let times = watch.success_times();
        watch.stop().await;
        stop_all(services, Duration::from_secs(10)).await;
        waited?;
        let skip = count / 10;
        let span = times[count - 1] - times[skip];
        let jobs = (count - 1 - skip) as f64;
        anyhow::ensure!(span > Duration::ZERO, "all SUCCESS events arrived at once");
        anyhow::Ok((jobs / span.as_secs_f64(), cpu))
    }
    .await;
    stubs.stop().await;
    h.remove(&d).await;
    result
}
