//! Settings of `imagejobs-bench`, parsed once by clap from flags or environment variables.

use std::path::PathBuf;

use clap::Parser;

/// `imagejobs-bench`: measures the pipeline and the raw broker under it in one run, and
/// prints one table with every figure and its ratio to the broker's ceiling.
#[derive(Parser, Clone, Debug)]
#[command(name = "imagejobs-bench", version, about)]
pub struct BenchConfig {
    /// A tiny run of every scenario (a few messages each, small images) that only checks
    /// that the tool works; its figures mean nothing.
    #[arg(long)]
    pub smoke: bool,

    /// AMQP URL of the RabbitMQ node to measure (`rabbitmq/node.sh start` prints it).
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: String,

    /// Directory of the release binaries imagejobs-ingress and imagejobs-consumer.
    #[arg(long, env = "BENCH_BIN_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release"))]
    pub bin_dir: PathBuf,

    /// Directory for the logs of the child processes.
    #[arg(long, env = "BENCH_LOG_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-logs"))]
    pub log_dir: PathBuf,

    /// Markdown file whose generated section (between the bench markers) gets the table;
    /// created when missing. Nothing is written without it.
    #[arg(long)]
    pub write: Option<PathBuf>,

    /// Only these scenarios (comma-separated: ceiling, ingress, consumers, e2e, memory).
    /// Ratios need the ceiling; without it they are left empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Scenario>,

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

/// The five parts of the benchmark (issue 5).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Ceiling,
    Ingress,
    Consumers,
    E2e,
    Memory,
}

impl BenchConfig {
    pub fn runs(&self, scenario: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&scenario)
    }
}
