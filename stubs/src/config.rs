//! Settings of the stubs process: ports, where the worker finds the blob service, how much
//! the blob store may hold, and the fault knobs.
//!
//! One typed struct, parsed once by clap from `--flags` or environment variables, and just as
//! easy to build in code: tests start from [`StubConfig::default()`] and change what they need.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use clap::Parser;
use reqwest::Url;

/// Default number of blobs kept in memory before the oldest are evicted.
pub const DEFAULT_BLOB_CAPACITY: usize = 100_000;

/// Default number of bytes of blob content kept in memory before the oldest are evicted:
/// 4 GiB.
///
/// With the claim check (docs/http-api.md, "Images by reference") the ingress stores an
/// image at submit time, so the store must hold every input still queued: an input evicted
/// before its worker ran is a false FAILED. 4 GiB holds a backlog of about 1,360 images of
/// 3 MiB (1 GiB held only 340, a few seconds of submits by reference under `make run`) or
/// 28,000 of 145 KiB, with room for the thumbnails; `make chaos` stays below 300 MiB. A
/// real object store expires inputs with a lifecycle rule instead.
pub const DEFAULT_BLOB_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Default largest image decoded: 40 megapixels (160 MB as RGBA8).
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Default number of images decoded at once.
pub const DEFAULT_MAX_DECODES: usize = 2;

/// Default number of worker jobs remembered (for deduplication and status) before the oldest
/// are forgotten.
pub const DEFAULT_JOB_CAPACITY: usize = 1_000_000;

/// Settings of `imagejobs-stubs`.
///
/// With no knob set the stubs inject no faults and do the real image work.
///
/// [`StubConfig::default()`] is meant for code (tests, benchmarks): it reads no environment
/// variable and binds both services to OS-assigned ports on 127.0.0.1 (port 0), unlike the
/// command line whose ports default to 8080 (worker) and 8081 (blob) as the seed's did.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "imagejobs-stubs",
    version,
    about = "Local stand-ins for the worker and blob services, with fault injection",
    long_about = None
)]
pub struct StubConfig {
    /// Address both services bind to.
    #[arg(long, env = "STUB_BIND_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,

    /// Port of the worker service; 0 picks a free port (logged at start).
    #[arg(long, env = "WORKER_PORT", default_value_t = 8080)]
    pub worker_port: u16,

    /// Port of the blob service; 0 picks a free port (logged at start).
    #[arg(long, env = "BLOB_PORT", default_value_t = 8081)]
    pub blob_port: u16,

    /// Blob service the worker fetches images from and stores thumbnails in
    /// (e.g. `http://127.0.0.1:8081/api/v1`); unset means this process's own blob service.
    #[arg(long, env = "BLOB_SERVICE_URL")]
    pub blob_service_url: Option<Url>,

    /// Base URL the blob service puts in the `payload_location` it returns
    /// (`<base>/blob/{id}`); unset means `http://127.0.0.1:<blob port>/api/v1`.
    #[arg(long, env = "STUB_BLOB_PUBLIC_URL")]
    pub blob_public_url: Option<Url>,

    /// Most blobs kept in memory; the oldest are evicted first. 0 is treated as 1.
    #[arg(long, env = "STUB_BLOB_CAPACITY", default_value_t = DEFAULT_BLOB_CAPACITY)]
    pub blob_capacity: usize,

    /// Most bytes of blob content kept in memory; the oldest blobs are evicted first
    /// (the newest blob is always kept, however large).
    #[arg(long, env = "STUB_BLOB_MAX_BYTES", default_value_t = DEFAULT_BLOB_MAX_BYTES)]
    pub blob_max_bytes: u64,

    /// Most worker jobs remembered for deduplication and status; the oldest are forgotten first.
    /// 0 is treated as 1.
    #[arg(long, env = "STUB_JOB_CAPACITY", default_value_t = DEFAULT_JOB_CAPACITY)]
    pub job_capacity: usize,

    /// Milliseconds added to every API request (not to `/ping` or `/stats`).
    #[arg(long, env = "STUB_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Share (0.0–1.0) of API requests answered 503 (not `/ping` or `/stats`).
    #[arg(long, env = "STUB_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Share (0.0–1.0) of blob PUTs answered 503, on top of STUB_ERROR_RATE: a failing blob
    /// store under the ingress's claim check and the consumers' uploads, while the worker and
    /// blob GETs go on. The worker's own calls are never hit.
    #[arg(long, env = "STUB_BLOB_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub blob_error_rate: f64,

    /// Milliseconds each blob PUT waits before it is handled (a slow blob store, to push the
    /// ingress past its BLOB_PUT_TIMEOUT_MS). The worker's own calls are never hit.
    #[arg(long, env = "STUB_BLOB_HANG_MS", default_value_t = 0)]
    pub blob_hang_ms: u64,

    /// Share (0.0–1.0) of worker jobs that end FAILED.
    #[arg(long, env = "STUB_JOB_FAIL_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub job_fail_rate: f64,

    /// Milliseconds a worker job stays RUNNING before it ends. With 0 the worker does the job
    /// while answering the POST and returns the final result in that answer.
    #[arg(long, env = "STUB_RUNNING_MS", default_value_t = 0)]
    pub running_ms: u64,

    /// Skip fetching, decoding and thumbnailing: every job that does not fail reports SUCCESS
    /// with its original payload location (for benchmarks of the pipeline itself).
    #[arg(
        long,
        env = "STUB_SKIP_IMAGE_WORK",
        default_value_t = false,
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true",
    )]
    pub skip_image_work: bool,

    /// Answer every worker `POST /job` with this HTTP status (e.g. 422) instead of taking the
    /// job, to test how callers treat permanent errors.
    #[arg(long, env = "STUB_FORCE_JOB_STATUS", value_parser = clap::value_parser!(u16).range(100..=599))]
    pub force_job_status: Option<u16>,

    /// Certificate chain (PEM) to serve both services over HTTPS with; with STUB_TLS_KEY_FILE.
    #[arg(long, env = "STUB_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) of STUB_TLS_CERT_FILE.
    #[arg(long, env = "STUB_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// CA certificates (PEM) the worker trusts for an `https://` blob service, besides the
    /// system's roots.
    #[arg(long, env = "SERVICE_CA_FILE")]
    pub service_ca_file: Option<std::path::PathBuf>,

    /// Largest image the worker decodes, in pixels (width × height), checked from the
    /// header before anything is decoded: a 20000×20000 PNG of a few KiB would otherwise
    /// take 400 MB to decode.
    #[arg(long, env = "STUB_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,

    /// Images decoded at once at most (each may take width × height × 4 bytes).
    #[arg(long, env = "STUB_MAX_DECODES", default_value_t = DEFAULT_MAX_DECODES)]
    pub max_decodes: usize,

    /// Seed of the random fault decisions; the same seed makes the same decisions for the same
    /// job ids and the same sequence of requests. Unset means a random seed (logged at start).
    #[arg(long, env = "STUB_SEED")]
    pub seed: Option<u64>,
}

impl Default for StubConfig {
    /// No faults, real work, OS-assigned ports on 127.0.0.1, no environment read.
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            worker_port: 0,
            blob_port: 0,
            blob_service_url: None,
            blob_public_url: None,
            blob_capacity: DEFAULT_BLOB_CAPACITY,
            blob_max_bytes: DEFAULT_BLOB_MAX_BYTES,
            job_capacity: DEFAULT_JOB_CAPACITY,
            latency_ms: 0,
            error_rate: 0.0,
            blob_error_rate: 0.0,
            blob_hang_ms: 0,
            job_fail_rate: 0.0,
            running_ms: 0,
            skip_image_work: false,
            force_job_status: None,
            tls_cert_file: None,
            tls_key_file: None,
            service_ca_file: None,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_decodes: DEFAULT_MAX_DECODES,
            seed: None,
        }
    }
}

impl StubConfig {
    /// Latency added to every API request.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// How long each blob PUT waits before it is handled.
    pub fn blob_hang(&self) -> Duration {
        Duration::from_millis(self.blob_hang_ms)
    }

    /// How long a worker job stays RUNNING.
    pub fn running(&self) -> Duration {
        Duration::from_millis(self.running_ms)
    }
}

/// Parses a share of requests or jobs, rejecting anything outside 0.0–1.0 (and NaN) at the
/// edge so that the fault code never sees it.
fn parse_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .trim()
        .parse()
        .map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is outside 0.0–1.0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_to_one_are_rejected() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("half").is_err());
    }

    #[test]
    fn command_line_defaults_are_the_seed_ports_without_faults() {
        let config = StubConfig::try_parse_from(["imagejobs-stubs"]).expect("defaults parse");
        assert_eq!(config.worker_port, 8080);
        assert_eq!(config.blob_port, 8081);
        assert_eq!(config.error_rate, 0.0);
        assert!(!config.skip_image_work);
        assert_eq!(config.force_job_status, None);
    }

    /// `Default` (for code) and the command line without flags agree on everything but the
    /// ports, so a knob added to one and forgotten in the other shows here.
    #[test]
    fn default_matches_the_command_line_but_for_the_ports() {
        let parsed = StubConfig::try_parse_from(["imagejobs-stubs"]).expect("defaults parse");
        let default = StubConfig {
            worker_port: parsed.worker_port,
            blob_port: parsed.blob_port,
            ..StubConfig::default()
        };
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
        assert_eq!(default.blob_error_rate, 0.0);
        assert_eq!(default.blob_hang(), Duration::ZERO);
    }

    #[test]
    fn blob_knobs_come_from_the_environment_names() {
        let config = StubConfig::try_parse_from([
            "imagejobs-stubs",
            "--blob-error-rate",
            "1",
            "--blob-hang-ms",
            "250",
        ])
        .expect("flags parse");
        assert_eq!(config.blob_error_rate, 1.0);
        assert_eq!(config.blob_hang_ms, 250);
        assert!(
            StubConfig::try_parse_from(["imagejobs-stubs", "--blob-error-rate=2"]).is_err(),
            "a share above 1 is refused at the edge"
        );
        let command = <StubConfig as clap::CommandFactory>::command();
        let envs: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        for name in ["STUB_BLOB_ERROR_RATE", "STUB_BLOB_HANG_MS"] {
            assert!(envs.iter().any(|e| e == name), "{name} in {envs:?}");
        }
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let config = StubConfig::try_parse_from([
            "imagejobs-stubs",
            "--worker-port=0",
            "--error-rate=0.5",
            "--blob-error-rate=0.25",
            "--blob-hang-ms=4000",
            "--skip-image-work",
            "--force-job-status=422",
            "--seed=7",
            "--blob-service-url=http://127.0.0.1:9/api/v1",
        ])
        .expect("flags parse");
        assert_eq!(config.worker_port, 0);
        assert_eq!(config.error_rate, 0.5);
        assert_eq!(config.blob_error_rate, 0.25);
        assert_eq!(config.blob_hang(), Duration::from_secs(4));
        assert!(config.skip_image_work);
        assert_eq!(config.force_job_status, Some(422));
        assert_eq!(config.seed, Some(7));
        assert!(config.blob_service_url.is_some());

        let off = StubConfig::try_parse_from(["imagejobs-stubs", "--skip-image-work=false"])
            .expect("explicit false parses");
        assert!(!off.skip_image_work);
    }
}
