//! `imagejobs-consumer` settings (README.md, "Configuration"), parsed once into typed values.

use std::time::Duration;

use clap::Parser;
use reqwest::Url;

use std::path::PathBuf;

use imagejobs_core::config::{self, BrokerArgs, ByteSize};

/// `imagejobs-consumer`: pulls image jobs and drives them through the blob and worker
/// services; run as many as you like.
#[derive(Parser, Clone, Debug, PartialEq, serde::Serialize)]
#[command(name = "imagejobs-consumer", version, about, args_override_self = true)]
pub struct ConsumerConfig {
    #[command(flatten)]
    #[serde(flatten)]
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
    #[serde(serialize_with = "imagejobs_core::flags::ser::display")]
    pub worker_service_url: Url,

    /// Base URL of the blob service API.
    #[arg(
        long,
        env = "BLOB_SERVICE_URL",
        default_value = "http://127.0.0.1:8081/api/v1"
    )]
    #[serde(serialize_with = "imagejobs_core::flags::ser::display")]
    pub blob_service_url: Url,

    /// Tries of one service call in-process, the first included.
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub retry_max_attempts: u32,

    /// First in-process retry delay (ms); it doubles on each retry.
    #[arg(long = "retry-base-delay-ms", env = "RETRY_BASE_DELAY_MS", default_value = "100", value_parser = config::millis)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::millis")]
    pub retry_base_delay: Duration,

    /// Cap of one in-process retry delay (ms).
    #[arg(long = "retry-max-delay-ms", env = "RETRY_MAX_DELAY_MS", default_value = "2000", value_parser = config::millis)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::millis")]
    pub retry_max_delay: Duration,

    /// How long a worker job may run before the attempt counts as failed and is retried (s).
    #[arg(long = "job-timeout-secs", env = "JOB_TIMEOUT_SECS", default_value = "300", value_parser = config::secs)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::secs")]
    pub job_timeout: Duration,

    /// Timeout of one HTTP call to a service (s).
    #[arg(long = "http-timeout-secs", env = "HTTP_TIMEOUT_SECS", default_value = "30", value_parser = config::secs)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::secs")]
    pub http_timeout: Duration,

    /// Largest image a job may carry (bytes, or with a unit: 3MiB); a larger one is
    /// dead-lettered. With the broker's own `max_message_size` at the same value (as the
    /// private node has it), a consumer never holds more than PREFETCH × this.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "3145728")]
    pub max_body_bytes: ByteSize,

    /// CA certificates (PEM) to trust for `https://` services, besides the system's roots.
    #[arg(long, env = "SERVICE_CA_FILE")]
    pub service_ca_file: Option<PathBuf>,

    /// On SIGTERM, how long to let jobs in flight finish before returning the rest to the
    /// queue (s).
    #[arg(long = "drain-timeout-secs", env = "DRAIN_TIMEOUT_SECS", default_value = "30", value_parser = config::secs)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::secs")]
    pub drain_timeout: Duration,

    /// Serve Prometheus metrics on this port (`GET /metrics`, all interfaces); `0` picks a
    /// free port and logs it. Off when unset.
    #[arg(long, env = "METRICS_PORT")]
    pub metrics_port: Option<u16>,
}

impl Default for ConsumerConfig {
    /// The command line's defaults, without reading the environment.
    fn default() -> Self {
        imagejobs_core::flags::defaults()
    }
}

impl ConsumerConfig {
    /// The flags that give a child process these settings (the URL excepted: pass
    /// `broker.to_env()` along).
    pub fn to_args(&self) -> Vec<String> {
        imagejobs_core::flags::to_args(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_args_round_trip() {
        let url = imagejobs_core::config::DEFAULT_AMQP_URL;
        let mut parsed = ConsumerConfig::parse_from(["x", "--amqp-url", url]);
        // `make test` exports AMQP_CA_FILE for its TLS listener.
        parsed.broker.amqp_ca_file = None;
        assert_eq!(parsed, ConsumerConfig::default());
        let custom = ConsumerConfig {
            prefetch: 7,
            retry_base_delay: Duration::from_millis(10),
            job_timeout: Duration::from_secs(9),
            ..ConsumerConfig::default()
        };
        let mut back = ConsumerConfig::parse_from(
            ["x", "--amqp-url", url]
                .into_iter()
                .map(str::to_owned)
                .chain(custom.to_args()),
        );
        back.broker.amqp_ca_file = None;
        assert_eq!(back, custom);
    }
}
