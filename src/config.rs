//! Settings shared by every process that talks to the broker, parsed once by clap from
//! flags or environment variables (DESIGN §7) into typed values.

use std::time::Duration;

use clap::Args;

/// Where the broker is and how our part of it is laid out.
#[derive(Args, Clone, Debug)]
pub struct BrokerArgs {
    /// AMQP URL of the RabbitMQ node.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    #[command(flatten)]
    pub topology: TopologyArgs,
}

/// The names and limits of the topology (DESIGN §4).
#[derive(Args, Clone, Debug)]
pub struct TopologyArgs {
    /// Prefix of every exchange and queue name, so several deployments share one broker.
    #[arg(long, env = "AMQP_PREFIX", default_value = "imagejobs")]
    pub amqp_prefix: String,

    /// Most jobs the work queue holds; publishes beyond it are refused (HTTP 503).
    #[arg(long, env = "QUEUE_MAX_LENGTH", default_value_t = 1_000_000)]
    pub queue_max_length: u64,

    /// Deliveries of one message before the broker dead-letters it by itself (a job that
    /// keeps crashing its consumer).
    #[arg(long, env = "QUEUE_DELIVERY_LIMIT", default_value_t = 10)]
    pub queue_delivery_limit: u32,

    /// How long the events stream keeps events (RabbitMQ's `x-max-age` syntax: 7D, 12h).
    #[arg(long, env = "EVENTS_MAX_AGE", default_value = "7D")]
    pub events_max_age: String,

    /// Most bytes the events stream keeps.
    #[arg(long, env = "EVENTS_MAX_BYTES", default_value_t = 5_000_000_000)]
    pub events_max_bytes: u64,

    /// Delays in seconds of the delayed-retry queues, comma-separated; empty for none.
    #[arg(long, env = "RETRY_DELAYS", default_value = "5,30,300", value_parser = parse_delays)]
    pub retry_delays: RetryDelays,
}

/// The delays of the second retry tier, in order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetryDelays(pub Vec<Duration>);

/// Parses `RETRY_DELAYS`: whole seconds, comma-separated, each at least 1.
pub fn parse_delays(s: &str) -> Result<RetryDelays, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let secs: u64 = part
            .trim_end_matches('s')
            .parse()
            .map_err(|_| format!("{part:?} is not a whole number of seconds"))?;
        if secs == 0 {
            return Err("a retry delay must be at least 1 second".into());
        }
        out.push(Duration::from_secs(secs));
    }
    Ok(RetryDelays(out))
}

/// A secret value that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delays("").unwrap(), RetryDelays(vec![]));
        assert_eq!(
            parse_delays("5, 30,300s").unwrap().0,
            vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(300)
            ]
        );
        assert!(parse_delays("5,x").is_err());
        assert!(parse_delays("0").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
