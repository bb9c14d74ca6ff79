//! Settings shared by every process that talks to the broker, parsed once by clap from
//! flags or environment variables (README.md, "Configuration") into domain types:
//! durations, sizes, URLs. Nothing past this module converts a `u64` of milliseconds or
//! re-parses a string.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::events::GroupLimits;

/// The default `AMQP_URL`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the broker is and how our part of it is laid out.
#[derive(Args, Clone, Debug, PartialEq, Serialize)]
pub struct BrokerArgs {
    /// AMQP URL of the RabbitMQ node, or a comma-separated list of a cluster's nodes.
    /// Give credentials in the environment or in AMQP_URL_FILE, not as this flag: `ps`
    /// shows flags to everyone on the machine.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    #[serde(skip)] // credentials: to_env, never a flag
    pub amqp_url: AmqpUrls,

    /// File holding AMQP_URL (one URL or a comma-separated list); wins over AMQP_URL.
    #[arg(long, env = "AMQP_URL_FILE")]
    pub amqp_url_file: Option<PathBuf>,

    /// CA certificates (PEM) to trust for `amqps://` nodes, beyond the system's roots.
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub topology: TopologyArgs,

    /// Most status events in one group-committed publish (they share one confirm).
    #[arg(long, env = "EVENTS_GROUP_MAX", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub events_group_max: u32,

    /// Most bytes of status events in one group-committed publish.
    #[arg(long, env = "EVENTS_GROUP_MAX_BYTES", default_value = "1MiB")]
    pub events_group_max_bytes: ByteSize,

    /// Publish again the status events confirmed while the events stream fails over (the
    /// workaround for rabbitmq-server#9457, RELIABILITY.md). Keep it on: `false` is only
    /// for measuring whether a RabbitMQ still loses such events.
    #[arg(long, env = "EVENTS_REPLAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub events_replay: bool,
}

impl Default for BrokerArgs {
    /// The command line's defaults, without reading the environment.
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl BrokerArgs {
    /// The nodes to connect to: AMQP_URL_FILE's list when it is set, else AMQP_URL.
    pub fn urls(&self) -> anyhow::Result<AmqpUrls> {
        use anyhow::Context;
        match &self.amqp_url_file {
            None => Ok(self.amqp_url.clone()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading AMQP_URL_FILE {}", path.display()))?;
                text.trim()
                    .parse()
                    .map_err(|e| anyhow::anyhow!("AMQP_URL_FILE {}: {e}", path.display()))
            }
        }
    }

    /// The CA certificates of AMQP_CA_FILE, as PEM.
    pub fn ca_pem(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context;
        self.amqp_ca_file
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading AMQP_CA_FILE {}", p.display()))
            })
            .transpose()
    }

    /// The environment that gives a child process the URL: credentials stay out of its
    /// command line (see [`BrokerArgs::to_args`]).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        vec![("AMQP_URL", self.amqp_url.to_string_exposed())]
    }

    /// The flags that give a child process these settings, all but the URL (pass
    /// [`BrokerArgs::to_env`] along).
    pub fn to_args(&self) -> Vec<String> {
        crate::flags::to_args(self)
    }

    /// How large a group of status events may grow.
    pub fn group_limits(&self) -> GroupLimits {
        GroupLimits {
            max_events: self.events_group_max as usize,
            max_bytes: self.events_group_max_bytes.as_usize(),
            replay: self.events_replay,
        }
    }
}

/// The names and limits of the topology (docs/amqp.md).
#[derive(Args, Clone, Debug, PartialEq, Serialize)]
pub struct TopologyArgs {
    /// Prefix of every exchange and queue name, so several deployments share one broker.
    #[arg(long, env = "AMQP_PREFIX", default_value = "imagejobs")]
    pub amqp_prefix: String,

    /// Most jobs each lane of the work queue holds; publishes beyond it are refused (HTTP 503).
    #[arg(long, env = "QUEUE_MAX_LENGTH", default_value_t = 1_000_000)]
    pub queue_max_length: u64,

    /// Lanes of the work queue (ARCHITECTURE.md, "Fair share"): jobs are spread over this
    /// many quorum queues by a consistent hash of their `tenant_id`, and every consumer
    /// serves its lanes in turn, so one tenant's backlog holds up only the tenants that
    /// share its lane. The same on every ingress and consumer of a deployment; raising it
    /// moves a few tenants to new lanes, lowering it strands the removed lanes' jobs (drain
    /// them first).
    #[arg(long, env = "JOB_LANES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub job_lanes: u16,

    /// Deliveries of one message before the broker dead-letters it by itself (a job that
    /// keeps crashing its consumer).
    #[arg(long, env = "QUEUE_DELIVERY_LIMIT", default_value_t = 10)]
    pub queue_delivery_limit: u32,

    /// How long the events stream keeps events (RabbitMQ's `x-max-age` syntax: 7D, 12h).
    #[arg(long, env = "EVENTS_MAX_AGE", default_value = "7D")]
    pub events_max_age: MaxAge,

    /// Most bytes the events stream keeps (a number of bytes, or with a unit: 5GB, 512MiB).
    #[arg(long, env = "EVENTS_MAX_BYTES", default_value = "5000000000")]
    pub events_max_bytes: ByteSize,

    /// How long the control stream keeps cancel requests (`x-max-age` syntax): a job
    /// cancelled longer ago than this that is still queued would run. Longer than any job
    /// waits in the queues.
    #[arg(long, env = "CONTROL_MAX_AGE", default_value = "7D")]
    pub control_max_age: MaxAge,

    /// Delays in seconds of the delayed-retry queues, comma-separated; empty for none.
    #[arg(long, env = "RETRY_DELAYS", default_value = "5,30,300", value_parser = parse_delays)]
    pub retry_delays: RetryDelays,
}

impl Default for TopologyArgs {
    /// The command line's defaults, without reading the environment.
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl TopologyArgs {
    /// Defaults with another prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        TopologyArgs {
            amqp_prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// The flags that give a child process these settings.
    pub fn to_args(&self) -> Vec<String> {
        crate::flags::to_args(self)
    }
}

/// One AMQP URL, checked when parsed; shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    /// The URL with its password, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// host:port of the URL (for logs and for proxies in tests).
    pub fn authority(&self) -> String {
        let rest = self.0.split_once("://").map_or(&self.0[..], |(_, r)| r);
        let hostpath = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        hostpath.split('/').next().unwrap_or_default().to_owned()
    }

    /// The virtual host the URL names (`/` when it names none).
    pub fn vhost(&self) -> String {
        let rest = self.0.split_once("://").map_or(&self.0[..], |(_, r)| r);
        let hostpath = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        match hostpath.split_once('/') {
            Some((_, v)) if !v.is_empty() => v.replace("%2f", "/").replace("%2F", "/"),
            _ => "/".into(),
        }
    }

    /// The same URL with host:port replaced by `authority`.
    pub fn with_authority(&self, authority: &str) -> AmqpUrl {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("amqp", &self.0));
        let (auth, hostpath) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let path = hostpath.find('/').map_or("", |i| &hostpath[i..]);
        AmqpUrl(format!("{scheme}://{auth}{authority}{path}"))
    }
}

impl FromStr for AmqpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        lapin::uri::AMQPUri::from_str(s)
            .map_err(|e| format!("{:?} is not an AMQP URL: {e}", redact(s)))?;
        Ok(AmqpUrl(s.to_owned()))
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

/// The nodes a process may connect to: `AMQP_URL`, one URL or a comma-separated list.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AmqpUrls(pub Vec<AmqpUrl>);

impl AmqpUrls {
    pub fn first(&self) -> Option<&AmqpUrl> {
        self.0.first()
    }

    /// The list as `AMQP_URL` takes it, passwords included (for child processes).
    pub fn to_string_exposed(&self) -> String {
        let urls: Vec<&str> = self.0.iter().map(AmqpUrl::expose).collect();
        urls.join(",")
    }
}

impl FromStr for AmqpUrls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let urls = s
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(AmqpUrl::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err("no AMQP URL given".into());
        }
        Ok(AmqpUrls(urls))
    }
}

impl fmt::Display for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, u) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{u}")?;
        }
        Ok(())
    }
}

/// A URL with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A number of bytes: plain (`3145728`) or with a unit (`3MiB`, `5GB`, `512 KiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }

    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 3145728, 3MiB, 5GB)"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} (B, KB, KiB, MB, MiB, GB, GiB)"
                ))
            }
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

/// Settings serialize to the text their parsers read back (`crate::flags::to_args`).
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(ByteSize, MaxAge, RetryDelays);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stream retention age in RabbitMQ's `x-max-age` syntax (`7D`, `12h`, `30m`, `90s`,
/// `1M`, `1Y`), kept both as the broker's text and as a `Duration` for the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxAge {
    text: String,
    duration: Duration,
}

impl MaxAge {
    pub fn days(n: u64) -> Self {
        MaxAge {
            text: format!("{n}D"),
            duration: Duration::from_secs(n * 86_400),
        }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The value for the stream's `x-max-age` argument.
    pub fn as_rabbitmq(&self) -> &str {
        &self.text
    }
}

impl FromStr for MaxAge {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not an age like 7D, 12h, 30m, 90s, 1M or 1Y");
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "D" => 86_400,
            "M" => 30 * 86_400,
            "Y" => 365 * 86_400,
            _ => return Err(bad()),
        };
        let secs = n.checked_mul(secs).ok_or_else(bad)?;
        if secs == 0 {
            return Err("the events stream's retention must be longer than 0".into());
        }
        Ok(MaxAge {
            text: s.to_owned(),
            duration: Duration::from_secs(secs),
        })
    }
}

impl fmt::Display for MaxAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The delays of the second retry tier, in order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RetryDelays(pub Vec<Duration>);

impl fmt::Display for RetryDelays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", d.as_secs())?;
        }
        Ok(())
    }
}

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

/// Parses a whole number of milliseconds (settings named `*_MS`).
pub fn millis(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds"))
}

/// Parses a duration with a unit (`5m`, `30s`, `7d`, `1h 30m`, `250ms`): settings whose
/// natural unit varies.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

/// A duration as [`duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses a whole number of seconds (settings named `*_SECS`).
pub fn secs(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))
}

/// A secret value that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        broker: BrokerArgs,
    }

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
        assert_eq!(parse_delays("1,2").unwrap().to_string(), "1,2");
    }

    #[test]
    fn the_url_file_wins_over_the_url() {
        let path = std::env::temp_dir().join(format!("amqp-url-{}", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            "amqps://u:secret@h1:5671/v\namqps://u:secret@h2:5671/v\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--amqp-url-file", &path.display().to_string()]);
        let urls = cli.broker.urls().unwrap();
        assert_eq!(urls.0.len(), 2);
        assert_eq!(urls.0[1].authority(), "h2:5671");
        // Children get the file's name, never the password, on their command line.
        let args = cli.broker.to_args().join(" ");
        assert!(
            !args.contains("secret") && args.contains("--amqp-url-file"),
            "{args}"
        );
        std::fs::remove_file(&path).unwrap();
        let missing = Cli::parse_from(["x", "--amqp-url-file", "/nonexistent/amqp-url"]);
        assert!(missing.broker.urls().is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!("3145728".parse(), Ok(ByteSize::mib(3)));
        assert_eq!("3MiB".parse(), Ok(ByteSize::mib(3)));
        assert_eq!("5 GB".parse(), Ok(ByteSize(5_000_000_000)));
        assert!("5 XB".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        let age: MaxAge = "12h".parse().unwrap();
        assert_eq!(age.duration(), Duration::from_secs(12 * 3600));
        assert_eq!(age.as_rabbitmq(), "12h");
        assert_eq!(MaxAge::days(7), "7D".parse().unwrap());
        assert!("7d".parse::<MaxAge>().is_err());
        assert!("x".parse::<MaxAge>().is_err());
        assert!("0s".parse::<MaxAge>().is_err());
        assert_eq!(millis("250"), Ok(Duration::from_millis(250)));
        assert!(secs("1.5").is_err());
    }

    #[test]
    fn url_lists_parse_and_hide_passwords() {
        let urls: AmqpUrls = "amqp://u:pw@127.0.0.1:1/%2f, amqp://u:pw@127.0.0.1:2/%2f"
            .parse()
            .unwrap();
        assert_eq!(urls.0.len(), 2);
        assert_eq!(urls.0[1].authority(), "127.0.0.1:2");
        assert!(!urls.to_string().contains("pw"), "{urls}");
        assert!(urls.to_string_exposed().contains("pw"));
        assert_eq!(
            urls.0[0].with_authority("127.0.0.1:9").expose(),
            "amqp://u:pw@127.0.0.1:9/%2f"
        );
        assert!("".parse::<AmqpUrls>().is_err());
        let lines: AmqpUrls = "amqp://u:pw@h1:1/v\namqps://u:pw@h2:2/v\n".parse().unwrap();
        assert_eq!(lines.0.len(), 2);
        assert!("http://x".parse::<AmqpUrls>().is_err());
    }

    /// `Default` is what the command line gives without flags (the URL comes from the
    /// environment under `make test`, so it is given here).
    #[test]
    fn defaults_are_the_command_line_defaults() {
        let mut cli = Cli::parse_from(["x", "--amqp-url", DEFAULT_AMQP_URL]);
        // `make test` exports AMQP_CA_FILE for its TLS listener.
        cli.broker.amqp_ca_file = None;
        assert_eq!(cli.broker, BrokerArgs::default());
        let args = cli.broker.to_args();
        assert!(
            !args.iter().any(|a| a.contains("guest")),
            "no credentials in {args:?}"
        );
        let mut back = Cli::parse_from(
            ["x", "--amqp-url", DEFAULT_AMQP_URL]
                .into_iter()
                .map(str::to_owned)
                .chain(args),
        );
        back.broker.amqp_ca_file = None;
        assert_eq!(back.broker, cli.broker, "to_args round-trips");
    }

    /// A setting away from its default goes through `to_args` too (a bool that takes a value).
    #[test]
    fn changed_settings_round_trip() {
        let broker = BrokerArgs {
            events_replay: false,
            events_group_max: 7,
            amqp_ca_file: Some("/ca.pem".into()),
            topology: TopologyArgs::with_prefix("p"),
            ..BrokerArgs::default()
        };
        let back = Cli::parse_from(
            ["x", "--amqp-url", DEFAULT_AMQP_URL]
                .into_iter()
                .map(str::to_owned)
                .chain(broker.to_args()),
        );
        assert_eq!(back.broker, broker);
    }
}
