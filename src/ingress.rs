//! The ingress process: configuration, start-up and serving until shutdown.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

use imagejobs_core::broker::{Broker, BrokerConfig, WhenBlocked};
use imagejobs_core::config::{self, BrokerArgs, ByteSize, Secret};
use imagejobs_core::events::EventSink;
use imagejobs_core::topology::Topology;

use imagejobs_serve::{InFlight, Limits};
use jsonwebtoken::Algorithm;
use tokio_rustls::TlsAcceptor;

use crate::auth::{self, TokenKey, Verifier};
use crate::blob::BlobService;
use crate::http::{self, AppState, Shared};
use crate::idempotency::IdempotencyCache;
use crate::index::follow::{Follower, Progress};
use crate::index::JobIndex;
use crate::metrics::IngressMetrics;
use crate::outbox::Outbox;
use crate::ratelimit::TenantLimiter;
use crate::snapshots::{SnapshotSettings, Snapshots};
use crate::submitter::{ClaimCheck, Submitter};

/// `imagejobs-ingress`: the HTTP API that validates and publishes image jobs.
#[derive(Parser, Clone, Debug, PartialEq, serde::Serialize)]
#[command(name = "imagejobs-ingress", version, about, args_override_self = true)]
pub struct IngressConfig {
    #[command(flatten)]
    #[serde(flatten)]
    pub broker: BrokerArgs,

    /// Address to listen on.
    #[arg(long, env = "SERVER_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "SERVER_PORT", default_value_t = 9000)]
    pub port: u16,

    /// HS256 secret that client tokens are signed with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    #[serde(skip)] // in the environment, where `ps` does not show it
    pub jwt_secret: Option<Secret>,

    /// File holding the JWT secret (used when JWT_SECRET is unset).
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Audience tokens must carry; unset = not checked.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Refuse tokens without `exp`.
    #[arg(long, env = "JWT_REQUIRE_EXP", action = ArgAction::Set, default_value_t = false)]
    pub jwt_require_exp: bool,

    /// Largest image accepted (bytes, or with a unit: 3MiB); a base64 JSON body may be 4/3
    /// of it.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "3145728")]
    pub max_body_bytes: ByteSize,

    /// Submits per second per tenant; 0 = unlimited.
    #[arg(long, env = "TENANT_RATE", default_value_t = 0)]
    pub tenant_rate: u32,

    /// Burst a tenant may send above its rate (default: one second's worth).
    #[arg(long, env = "TENANT_BURST")]
    pub tenant_burst: Option<u32>,

    /// Confirm channels kept open for publishing.
    #[arg(long, env = "AMQP_CHANNELS", default_value_t = 8)]
    pub amqp_channels: usize,

    /// How long a submit waits for the broker's confirm before answering 503 (ms).
    #[arg(long = "publish-timeout-ms", env = "PUBLISH_TIMEOUT_MS", default_value = "5000", value_parser = config::millis)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::millis")]
    pub publish_timeout: Duration,

    /// Public key (PEM) that client tokens are checked with, instead of a shared secret.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// The one token algorithm accepted: HS256 (with JWT_SECRET), or RS256, ES256, EdDSA
    /// (with JWT_PUBLIC_KEY_FILE).
    #[arg(long, env = "JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,

    /// Certificate chain (PEM) to serve HTTPS with; with TLS_KEY_FILE.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Seconds a client has to send a request's head, counted from the connection's start
    /// or the end of the previous response (so idle keep-alive connections close too).
    #[arg(long = "header-timeout-secs", env = "HEADER_TIMEOUT_SECS", default_value = "10", value_parser = config::secs)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::secs")]
    pub header_timeout: Duration,

    /// Seconds a client has to send a submit's whole body.
    #[arg(long = "body-timeout-secs", env = "BODY_TIMEOUT_SECS", default_value = "30", value_parser = config::secs)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::secs")]
    pub body_timeout: Duration,

    /// Requests in flight at most; beyond them the answer is 503 with Retry-After.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// On SIGTERM, seconds to let requests in flight finish before closing the rest.
    #[arg(long = "drain-timeout-secs", env = "DRAIN_TIMEOUT_SECS", default_value = "30", value_parser = config::secs)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::secs")]
    pub drain_timeout: Duration,

    /// Base URL of the blob service, where `GET /api/v1/job/{id}/result` fetches results
    /// whose location is not an absolute URL.
    #[arg(
        long,
        env = "BLOB_SERVICE_URL",
        default_value = "http://127.0.0.1:8081/api/v1"
    )]
    #[serde(serialize_with = "imagejobs_core::flags::ser::display")]
    pub blob_service_url: reqwest::Url,

    /// CA certificates (PEM) to trust for an `https://` blob service, besides the system's.
    #[arg(long, env = "SERVICE_CA_FILE")]
    pub service_ca_file: Option<PathBuf>,

    /// Images of at least this many bytes are stored in the blob service first and travel
    /// by reference (the claim check); `0` = every image, above MAX_BODY_BYTES = never.
    #[arg(long, env = "CLAIM_CHECK_MIN_BYTES", default_value = "65536")]
    pub claim_check_min_bytes: ByteSize,

    /// How long a submit waits for the blob service's answer to its PUT before it answers
    /// 503 (ms).
    #[arg(long = "blob-put-timeout-ms", env = "BLOB_PUT_TIMEOUT_MS", default_value = "10000", value_parser = config::millis)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::millis")]
    pub blob_put_timeout: Duration,

    /// Answer `GET /api/v1/job/{id}/result` with a 307 to the result's absolute URL (a CDN
    /// or object store in front) instead of streaming it.
    #[arg(long, env = "RESULT_REDIRECT", action = ArgAction::Set, default_value_t = false)]
    pub result_redirect: bool,

    /// Seconds between the comment lines that keep an idle event stream open.
    #[arg(long = "sse-heartbeat-secs", env = "SSE_HEARTBEAT_SECS", default_value = "15", value_parser = config::secs)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::secs")]
    pub sse_heartbeat: Duration,

    /// Event streams (`/events`) open at once at most; beyond them the answer is 503.
    #[arg(long, env = "MAX_WATCHERS", default_value_t = 10_000)]
    pub max_watchers: usize,

    /// Directory where the job index is snapshotted (with the stream offset it covers), so
    /// that a restart replays only the stream's tail; unset = no snapshots.
    #[arg(long, env = "INDEX_SNAPSHOT_DIR")]
    pub index_snapshot_dir: Option<PathBuf>,

    /// How often the index is snapshotted (also at a graceful shutdown): `5m`, `30s`, ...
    #[arg(long, env = "INDEX_SNAPSHOT_INTERVAL", default_value = "5m", value_parser = config::duration)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::duration")]
    pub index_snapshot_interval: Duration,

    /// Base URL of a blob store (PUT/GET `{url}/{name}`) where replicas share snapshots,
    /// so that a new replica with an empty disk starts from the newest; unset = not shared.
    #[arg(long, env = "INDEX_SNAPSHOT_URL")]
    #[serde(serialize_with = "imagejobs_core::flags::ser::display_opt")]
    pub index_snapshot_url: Option<reqwest::Url>,

    /// Finished jobs leave the index this long after their final status (404 afterwards);
    /// unfinished jobs never do: `7d`, `36h`, ...
    #[arg(long, env = "INDEX_RETENTION", default_value = "7d", value_parser = config::duration)]
    #[serde(serialize_with = "imagejobs_core::flags::ser::duration")]
    pub index_retention: Duration,
}

impl Default for IngressConfig {
    /// The command line's defaults, without reading the environment (no JWT secret).
    fn default() -> Self {
        imagejobs_core::flags::defaults()
    }
}

impl IngressConfig {
    /// The key tokens are checked with: a public key (JWT_PUBLIC_KEY_FILE, with an
    /// asymmetric JWT_ALGORITHM) or the HS256 secret. There is no default.
    pub fn token_key(&self) -> anyhow::Result<TokenKey> {
        let algorithm = auth::parse_algorithm(&self.jwt_algorithm)?;
        match &self.jwt_public_key_file {
            Some(path) => {
                anyhow::ensure!(
                    self.jwt_secret.is_none() && self.jwt_secret_file.is_none(),
                    "JWT_PUBLIC_KEY_FILE and a JWT secret both set: the ingress takes one key"
                );
                if algorithm == Algorithm::HS256 {
                    return Err(auth::KeyError::NeedsAsymmetric.into());
                }
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading JWT_PUBLIC_KEY_FILE {}", path.display()))?;
                Ok(TokenKey::Public { algorithm, pem })
            }
            None => {
                if algorithm != Algorithm::HS256 {
                    return Err(auth::KeyError::NeedsPublicKey(algorithm).into());
                }
                Ok(TokenKey::Secret(self.secret()?))
            }
        }
    }

    /// The JWT secret from `JWT_SECRET` or `JWT_SECRET_FILE`; there is no default.
    pub fn secret(&self) -> anyhow::Result<Secret> {
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading JWT_SECRET_FILE {}", path.display()))?;
                Secret::new(text.trim_end_matches(['\r', '\n']))
            }
            (None, None) => anyhow::bail!("no JWT secret: set JWT_SECRET or JWT_SECRET_FILE"),
        };
        anyhow::ensure!(!secret.expose().is_empty(), "the JWT secret is empty");
        Ok(secret)
    }

    /// The flags that give a child process these settings, secrets excepted: pass those
    /// in the environment (`JWT_SECRET`, `AMQP_URL`), where `ps` does not show them.
    pub fn to_args(&self) -> Vec<String> {
        imagejobs_core::flags::to_args(self)
    }
}

/// QUEUED events kept for the broker at most (about 300 bytes each).
const OUTBOX_CAPACITY: usize = 100_000;

/// A built ingress: listening, connected in the background, not yet serving.
pub struct Ingress {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    in_flight: InFlight,
    state: AppState,
    shutdown: CancellationToken,
    /// Stops the broker connection (and the index follower) when dropped: after serving,
    /// or with an ingress that never served.
    broker_guard: DropGuard,
    /// The index follower, which writes a last snapshot when it stops.
    follower: tokio::task::JoinHandle<()>,
}

/// How long a stopping ingress waits for the follower's last snapshot.
const LAST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

impl Ingress {
    pub async fn build(config: IngressConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let verifier = Verifier::with_key(
            &config.token_key()?,
            config.jwt_audience.as_deref(),
            config.jwt_require_exp,
        )?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(imagejobs_serve::tls_acceptor(cert, key)?),
            _ => None,
        };
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let topology = Topology::new(&config.broker.topology);
        let mut broker_config =
            BrokerConfig::new(config.broker.urls()?, "imagejobs-ingress", topology);
        broker_config.tls_ca = config.broker.ca_pem()?;
        broker_config.channels = config.amqp_channels;
        broker_config.publish_timeout = config.publish_timeout;
        // A blocked broker would hold a submit for the whole confirm timeout: say 503 now.
        broker_config.when_blocked = WhenBlocked::FailFast;
        // The connection outlives the HTTP server's drain: submits in flight at shutdown
        // still get their confirms. It closes when `run_until_stopped` returns.
        let broker_stop = CancellationToken::new();
        let broker = Broker::start(broker_config, broker_stop.clone());
        let events = EventSink::with_limits(broker.clone(), config.broker.group_limits());
        let index = JobIndex::new();
        let metrics = Arc::new(IngressMetrics::new());
        let ca_pem = config
            .service_ca_file
            .as_deref()
            .map(imagejobs_core::tls::read_pem)
            .transpose()?;
        let events_max_age = config.broker.topology.events_max_age.duration();
        if events_max_age < config.index_retention {
            tracing::warn!(
                events_max_age = %config::format_duration(events_max_age),
                index_retention = %config::format_duration(config.index_retention),
                "the events stream keeps less than INDEX_RETENTION: a replica that replays it \
                 (no snapshot) knows finished jobs for EVENTS_MAX_AGE only"
            );
        }
        let snapshots = Snapshots::new(
            SnapshotSettings {
                dir: config.index_snapshot_dir.clone(),
                url: config.index_snapshot_url.clone(),
                interval: config.index_snapshot_interval,
                prefix: config.broker.topology.amqp_prefix.clone(),
            },
            ca_pem.as_deref(),
        )?;
        let progress = Arc::new(Progress::new());
        let follower = Follower {
            broker: broker.clone(),
            sink: events.clone(),
            index: index.clone(),
            metrics: metrics.clone(),
            snapshots,
            progress: progress.clone(),
            retention: config.index_retention,
        };
        let follower = tokio::spawn(follower.run(broker_stop.clone()));
        let blobs = BlobService::new(
            &config.blob_service_url,
            ca_pem.as_deref(),
            config.blob_put_timeout,
        )?;
        let submitter = Submitter {
            broker: broker.clone(),
            events: events.clone(),
            index: index.clone(),
            outbox: Outbox::start(events.clone(), OUTBOX_CAPACITY, broker_stop.clone()),
            idempotency: IdempotencyCache::new(Duration::from_secs(24 * 3600), 1_000_000),
            metrics: metrics.clone(),
            blobs: blobs.clone(),
            claim_check: ClaimCheck {
                min_bytes: config.claim_check_min_bytes.0,
                max_image: config.max_body_bytes.0,
            },
        };
        let dashboard_csp = http::dashboard::csp(config.result_redirect, blobs.origin().as_deref());
        let state = AppState::new(Shared {
            progress,
            dashboard_csp,
            blobs,
            result_redirect: config.result_redirect,
            submitter,
            sse_heartbeat: config.sse_heartbeat,
            watchers: Arc::new(tokio::sync::Semaphore::new(config.max_watchers.max(1))),
            shutdown: shutdown.clone(),
            queue_depth: Default::default(),
            broker,
            events,
            verifier,
            max_body: config.max_body_bytes.as_usize(),
            body_timeout: config.body_timeout,
            limiter: TenantLimiter::new(config.tenant_rate, config.tenant_burst),
            index,
            metrics,
        });
        Ok(Ingress {
            listener,
            tls,
            limits: Limits {
                header_timeout: config.header_timeout,
                drain_timeout: config.drain_timeout,
            },
            in_flight: InFlight::new(config.max_in_flight),
            state,
            shutdown,
            broker_guard: broker_stop.drop_guard(),
            follower,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until the shutdown token is cancelled, then lets requests in flight finish
    /// for at most the drain timeout.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Ingress {
            listener,
            tls,
            limits,
            in_flight,
            state,
            shutdown,
            broker_guard,
            follower,
        } = self;
        let metrics = state.metrics.clone();
        let router = http::router(state)
            .layer(axum::middleware::from_fn_with_state(
                in_flight,
                InFlight::limit,
            ))
            .layer(axum::middleware::from_fn_with_state(
                metrics,
                IngressMetrics::track,
            ));
        let served = imagejobs_serve::serve(listener, tls, router, limits, shutdown)
            .await
            .context("serving HTTP");
        drop(broker_guard);
        if tokio::time::timeout(LAST_SNAPSHOT_TIMEOUT, follower)
            .await
            .is_err()
        {
            tracing::warn!("the index follower did not stop in time; no last snapshot");
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Default` is the command line without flags, and `to_args` round-trips.
    #[test]
    fn defaults_and_args_round_trip() {
        let url = imagejobs_core::config::DEFAULT_AMQP_URL;
        let mut parsed = IngressConfig::parse_from(["x", "--amqp-url", url]);
        // `make test` exports AMQP_CA_FILE for its TLS listener.
        parsed.broker.amqp_ca_file = None;
        // JWT_* may come from the environment of whoever runs the tests.
        let expected = IngressConfig {
            jwt_secret: parsed.jwt_secret.clone(),
            jwt_secret_file: parsed.jwt_secret_file.clone(),
            jwt_audience: parsed.jwt_audience.clone(),
            ..IngressConfig::default()
        };
        assert_eq!(parsed, expected);
        let custom = IngressConfig {
            port: 0,
            publish_timeout: Duration::from_millis(1500),
            max_body_bytes: ByteSize(1000),
            tenant_burst: Some(3),
            claim_check_min_bytes: ByteSize(0),
            blob_put_timeout: Duration::from_millis(1500),
            result_redirect: true,
            index_snapshot_dir: Some("/tmp/snapshots".into()),
            index_snapshot_interval: Duration::from_millis(1500),
            index_snapshot_url: Some(
                reqwest::Url::parse("http://127.0.0.1:1/api/v1/blob").unwrap(),
            ),
            index_retention: Duration::from_secs(36 * 3600),
            jwt_audience: Some("aud".into()),
            ..IngressConfig::default()
        };
        let mut back = IngressConfig::parse_from(
            ["x", "--amqp-url", url]
                .into_iter()
                .map(str::to_owned)
                .chain(custom.to_args()),
        );
        back.broker.amqp_ca_file = None;
        assert_eq!(
            IngressConfig {
                jwt_secret: None,
                ..back
            },
            custom
        );
    }
}
