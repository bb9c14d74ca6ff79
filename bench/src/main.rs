//! `imagejobs-bench`: the benchmark of issue 5 in one run on one machine.
//!
//! # Layout
//! - [`config`]: the flags; [`plan`]: what a full or a smoke run measures, and how much.
//! - [`harness`]: the broker connection, HTTP client, and starting ingress and consumer
//!   processes (the built binaries) and the stubs (in this process).
//! - [`broker`]: pipelined confirmed publishing. Deployments (a prefix per scenario), child
//!   processes and the reader of the events stream that timestamps SUCCESS events come
//!   from `imagejobs-testkit`, which the end-to-end tests use too.
//! - The five parts: [`ceiling`], [`submit`] (the ingress), [`consumers`], [`endtoend`],
//!   [`memory`].
//! - [`cpu`]: CPU time per job of each process.
//! - [`report`]: the table, the verdicts on the targets, `BENCHMARKS.md`; [`machine`]:
//!   what it ran on.
//! - [`chaos`]: `imagejobs-bench chaos`, the fault-injection run of `make chaos`.

mod broker;
mod ceiling;
mod chaos;
mod claimcheck;
mod config;
mod consumers;
mod cpu;
mod endtoend;
mod fair_share;
mod harness;
mod image;
mod index_scale;
mod latency;
mod machine;
mod memory;
mod plan;
mod plot;
mod report;
mod sink;
mod submit;

use std::process::ExitCode;

use clap::Parser;

use config::{BenchConfig, Mode, Scenario};
use harness::Harness;
use plan::Plan;
use report::Report;

fn main() -> ExitCode {
    let config = BenchConfig::parse();
    imagejobs_core::tls::install_crypto();
    // The chaos run's own broker clients lose their node on purpose: errors only there.
    let quiet = if config.mode.is_some() {
        "error"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imagejobs-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("imagejobs-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How to read the table; printed under it.
const LEGEND: &str = "
Ratios are to the ceiling of the same size measured in this run (publish ceiling for the \
ingress, consume ceiling for the consumers). For the consumers at 20 ms, *expected* is \
min(consume ceiling, processes × prefetch / 40 ms): a job makes two requests to the stubs \
(blob PUT, worker POST answered with the result), each delayed 20 ms; where the pipeline's \
best rate at 0 ms is lower than that, the ratio to min(bound, that rate) follows in \
brackets. End-to-end latency \
runs from sending the HTTP submit to the SUCCESS event reaching a reader of the events \
stream (the bench's own, next to the ingress's index follower). CPU µs per job: CPU time \
(user + system, from /proc) of each process during the measurement over the jobs done; \
`bench` is this process (load generator, in-process stubs, events reader).
";

/// Runs every scenario asked for; `Ok(false)` when one of them failed.
async fn run(config: BenchConfig) -> anyhow::Result<bool> {
    if let Some(Mode::Chaos(args)) = &config.mode {
        return chaos::run(
            config.amqp_url.clone(),
            config.bin_dir(),
            config.log_dir.clone(),
            args,
        )
        .await;
    }
    let mut plan = if config.smoke {
        Plan::smoke()
    } else {
        Plan::full()
    };
    if let Some(n) = config.publish_channels {
        plan.publish_channels = n;
    }
    if let Some(mib) = config.publish_window_mib {
        plan.publish_window_bytes = mib * 1024 * 1024;
    }
    if let Some(n) = config.ceiling_consumers {
        plan.ceiling_consumers = n;
    }
    if let Some(n) = config.ingress_concurrency {
        plan.ingress_concurrency = n;
    }
    if !config.consumer_run.is_empty() {
        plan.consumer_runs = config.consumer_run.clone();
    }
    if let Some(n) = config.ceiling_prefetch {
        plan.ceiling_prefetch = vec![n];
    }
    let h = Harness::new(config.clone(), plan).await?;
    // On Ctrl-C or SIGTERM: drop the scenarios (their child processes are killed with
    // them), remove the deployments they left, and stop.
    let stop = imagejobs_core::shutdown::on_signal();
    let outcome = tokio::select! {
        r = scenarios(&h, &config) => r,
        _ = stop.cancelled() => {
            eprintln!("interrupted; cleaning up");
            h.remove_leftovers().await;
            return Ok(false);
        }
    };
    let _ = h.conn.close(200, "bye".into()).await;
    outcome
}

/// The scenarios, the table, and `BENCHMARKS.md`.
async fn scenarios(h: &Harness, config: &BenchConfig) -> anyhow::Result<bool> {
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    h.progress(format!(
        "imagejobs-bench{} against {}; child logs in {}",
        if config.smoke { " --smoke" } else { "" },
        config.amqp_url,
        config.log_dir.display()
    ));
    let mut report = Report {
        smoke: config.smoke,
        ..Report::default()
    };

    let ceiling = if config.runs(Scenario::Ceiling) {
        match ceiling::run(h, &mut report).await {
            Ok(c) => c,
            Err(e) => {
                report.fail("ceiling", &e);
                ceiling::Ceiling::default()
            }
        }
    } else {
        ceiling::Ceiling::default()
    };
    if config.runs(Scenario::Ingress) {
        if let Err(e) = submit::run(h, &ceiling, &mut report).await {
            report.fail("ingress", &e);
        }
    }
    if config.runs(Scenario::Consumers) {
        if let Err(e) = consumers::run(h, &ceiling, &mut report).await {
            report.fail("consumers", &e);
        }
    }
    if config.runs(Scenario::E2e) {
        if let Err(e) = endtoend::run(h, &mut report).await {
            report.fail("end to end", &e);
        }
    }
    if config.runs(Scenario::Memory) {
        if let Err(e) = memory::run(h, &mut report).await {
            report.fail("memory", &e);
        }
    }
    if config.runs(Scenario::ClaimCheck) {
        if let Err(e) = claimcheck::run(h, &mut report).await {
            report.fail("claim check", &e);
        }
    }
    if config.runs(Scenario::FairShare) {
        if let Err(e) = fair_share::run(h, &mut report).await {
            report.fail("fair share", &e);
        }
    }
    if config.runs(Scenario::IndexScale) {
        if let Err(e) = index_scale::run(h, &mut report).await {
            report.fail("index at scale", &e);
        }
    }
    let took = h.elapsed();
    h.progress("done");

    let machine = machine::describe(config);
    let command = config
        .command
        .clone()
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let mut section = String::new();
    section.push_str(&format!(
        "Run of {date} ({}; {:.0} s), command `{command}`.\n\nMachine: {machine}\n\n",
        if config.smoke {
            "smoke run: the figures mean nothing"
        } else {
            "full run"
        },
        took.as_secs_f64()
    ));
    section.push_str(&report.markdown());
    section.push_str(LEGEND);
    println!("\n{section}");
    if let Some(path) = &config.write {
        report::write_section(path, &section)?;
        eprintln!("wrote the table to {}", path.display());
        let svg = plot::curves(&report.curve, &report.index_curve, h.plan.reference().label);
        if let Some(svg) = svg {
            let plot = path.with_file_name("bench").join("curves.svg");
            std::fs::write(&plot, svg)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", plot.display()))?;
            eprintln!("wrote the curves to {}", plot.display());
        }
    }
    Ok(report.failures.is_empty())
}
