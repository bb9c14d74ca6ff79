//! Settings of `imagejobs-bench`, parsed once by clap from flags or environment variables.

use std::path::PathBuf;

use clap::Parser;
use imagejobs_core::config::AmqpUrls;

use crate::plan::ConsumerRun;

/// `imagejobs-bench`: measures the pipeline and the raw broker under it in one run, and
/// prints one table with every figure and its ratio to the broker's ceiling.
#[derive(Parser, Clone, Debug)]
#[command(name = "imagejobs-bench", version, about)]
pub struct BenchConfig {
    /// Without a command: the benchmarks.
    #[command(subcommand)]
    pub mode: Option<Mode>,

    /// A tiny run of every scenario (a few messages each, small images) that only checks
    /// that the tool works; its figures mean nothing.
    #[arg(long)]
    pub smoke: bool,

    /// AMQP URL of the RabbitMQ node to measure (`rabbitmq/node.sh start` prints it), or
    /// a comma-separated list of a cluster's nodes.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: AmqpUrls,

    /// Directory of the binaries imagejobs-ingress and imagejobs-consumer (default: that of
    /// this binary, so a release bench measures release binaries).
    #[arg(long, env = "BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Directory for the logs of the child processes.
    #[arg(long, env = "BENCH_LOG_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-logs"))]
    pub log_dir: PathBuf,

    /// Markdown file whose generated section (between the bench markers) gets the table;
    /// created when missing. Nothing is written without it.
    #[arg(long)]
    pub write: Option<PathBuf>,

    /// Only these scenarios (comma-separated: ceiling, ingress, consumers, e2e, memory,
    /// claim-check, fair-share, index-scale; index-scale runs only when named).
    /// Ratios need the ceiling; without it they are left empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Scenario>,

    /// Profile the child processes: `perf record` (cpu-clock, DWARF call graphs) follows
    /// each one into `<log-dir>/<name>.perf.data`. The figures of such a run are lower.
    #[arg(long)]
    pub perf: bool,

    /// Overrides of the plan, for tuning the raw ceiling: confirm channels, MiB in flight
    /// across them, consumer channels and their prefetch.
    #[arg(long, hide = true)]
    pub publish_channels: Option<usize>,
    #[arg(long, hide = true)]
    pub publish_window_mib: Option<usize>,
    #[arg(long, hide = true)]
    pub ceiling_consumers: Option<usize>,
    #[arg(long, hide = true)]
    pub ceiling_prefetch: Option<u16>,
    /// Concurrent HTTP clients of the ingress load.
    #[arg(long, hide = true)]
    pub ingress_concurrency: Option<usize>,
    /// Replaces the consumer grid with these runs, each
    /// `PROCESSES:PREFETCH:LATENCY_MS[:work][:3mib]` (e.g. `1:128:0`), for profiling one.
    #[arg(long, hide = true, value_parser = parse_consumer_run)]
    pub consumer_run: Vec<ConsumerRun>,

    /// PID of the broker's Erlang VM, to show its CPU time per job (scripts/bench.sh reads
    /// it from rabbitmq/.node/rabbitmq.pid).
    #[arg(long, env = "BENCH_BROKER_PID")]
    pub broker_pid: Option<u32>,

    /// How the run was started, for the report (scripts/bench.sh sets it).
    #[arg(long, env = "BENCH_COMMAND")]
    pub command: Option<String>,

    /// The broker's version, for the report (scripts/bench.sh asks rabbitmqctl).
    #[arg(long, env = "BENCH_BROKER_VERSION")]
    pub broker_version: Option<String>,

    /// The compiler's version, for the report (scripts/bench.sh asks rustc).
    #[arg(long, env = "BENCH_RUSTC_VERSION")]
    pub rustc_version: Option<String>,
}

/// What to run instead of the benchmarks.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Mode {
    /// The chaos runner (`make chaos`): the pipeline under load while faults are injected,
    /// then a reconciliation of every accepted job.
    Chaos(crate::chaos::ChaosArgs),
}

/// The five parts of the benchmark (issue 5).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Ceiling,
    Ingress,
    Consumers,
    E2e,
    Memory,
    /// Issue 17: large images by reference against in the body.
    ClaimCheck,
    /// Issue 21: a light tenant's jobs behind a heavy tenant's backlog, over the lanes.
    FairShare,
    /// Issue 18: the job index at the seed's scale (not in a run without `--only`: it
    /// feeds tens of millions of events).
    IndexScale,
}

impl BenchConfig {
    /// Where the ingress and consumer binaries are.
    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir
            .clone()
            .unwrap_or_else(imagejobs_testkit::process::bin_dir)
    }

    pub fn runs(&self, scenario: Scenario) -> bool {
        if scenario == Scenario::IndexScale && !self.smoke {
            return self.only.contains(&scenario);
        }
        self.only.is_empty() || self.only.contains(&scenario)
    }
}

fn parse_consumer_run(s: &str) -> Result<ConsumerRun, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("{s:?} is not PROCESSES:PREFETCH:LATENCY_MS[:work][:3mib]");
    if !(3..=5).contains(&parts.len()) {
        return Err(bad());
    }
    let size = if parts[3..].contains(&"3mib") {
        crate::image::Size::new("3 MiB", 3 * 1024 * 1024)
    } else {
        crate::image::Size::new("145 KiB", 145 * 1024)
    };
    Ok(ConsumerRun {
        size,
        processes: parts[0].parse().map_err(|_| bad())?,
        prefetch: parts[1].parse().map_err(|_| bad())?,
        stub_latency: std::time::Duration::from_millis(parts[2].parse().map_err(|_| bad())?),
        image_work: parts[3..].contains(&"work"),
    })
}
