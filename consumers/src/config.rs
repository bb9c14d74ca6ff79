//! `imagejobs-consumer` settings (DESIGN §7), parsed once into typed values.

use std::time::Duration;

use clap::Parser;
use imagejobs::config::BrokerArgs;

/// `imagejobs-consumer`: pulls image jobs and drives them through the blob and worker
/// services; run as many as you like.
#[derive(Parser, Clone, Debug)]
#[command(name = "imagejobs-consumer", version, about, args_override_self = true)]
pub struct ConsumerConfig {
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Jobs in flight at once in this process (the broker's per-consumer prefetch).
    /// Memory is about PREFETCH x image size.
    #[arg(long, env = "PREFETCH", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,

    /// Base URL of the worker service API.
    #[arg(
        long,
        env = "WORKER_SERVICE_URL",
        default_value = "http://127.0.0.1:8080/api/v1"
    )]
    pub worker_service_url: String,

    /// Base URL of the blob service API.
    #[arg(
        long,
        env = "BLOB_SERVICE_URL",
        default_value = "http://127.0.0.1:8081/api/v1"
    )]
    pub blob_service_url: String,

    /// Tries of one service call in-process, the first included.
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub retry_max_attempts: u32,

    /// First in-process retry delay; it doubles on each retry.
    #[arg(long, env = "RETRY_BASE_DELAY_MS", default_value_t = 100)]
    pub retry_base_delay_ms: u64,

    /// Cap of one in-process retry delay.
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 2000)]
    pub retry_max_delay_ms: u64,

    /// How long a worker job may run before the attempt counts as failed (and retried).
    #[arg(long, env = "JOB_TIMEOUT_SECS", default_value_t = 300)]
    pub job_timeout_secs: u64,

    /// Timeout of one HTTP call to a service.
    #[arg(long, env = "HTTP_TIMEOUT_SECS", default_value_t = 30)]
    pub http_timeout_secs: u64,

    /// On SIGTERM, how long to let jobs in flight finish before leaving the rest to the
    /// broker to redeliver.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
}

impl ConsumerConfig {
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_secs)
    }
}
