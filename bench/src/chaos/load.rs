//! Steady load during the chaos: HTTP submits to the ingress replicas (retried with the
//! same `Idempotency-Key` on 503 or a lost connection, moving to the other replica) and
//! direct confirmed AMQP publishes (retried until confirmed). Every accepted job is in the
//! [`Ledger`], with the moment it was accepted, the size of its image and how long each
//! replica took to know it.
//!
//! The HTTP submits take turns over a few images of different sizes, some below the
//! ingress's claim-check threshold (they travel in the message) and some above it (the
//! ingress stores them in the blob service first), so that both paths meet every fault.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use imagejobs_core::broker::{Broker, BrokerConfig};
use imagejobs_core::ids::{ClientId, JobId, Md5, TenantId};
use imagejobs_core::message::JobMeta;
use imagejobs_core::topology::SUBMIT_KEY;
use imagejobs_testkit::Deployment;

use super::fleet::Readiness;

/// How long a client keeps retrying one submit before it gives up.
const GIVE_UP: Duration = Duration::from_secs(120);
/// Pause between the retries of one submit.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long a replica may take to know an accepted job before it counts as not knowing.
const VISIBLE_WITHIN: Duration = Duration::from_secs(60);

/// How a job came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Http,
    Direct,
}

#[derive(Clone, Debug)]
pub struct Accepted {
    pub id: JobId,
    pub at: Instant,
    pub via: Via,
    /// Bytes of the image submitted: with the ingress's threshold, whether it went by
    /// reference.
    pub bytes: usize,
    pub tenant: i64,
}

/// The heavy tenant: three HTTP submits of four.
pub const HEAVY_TENANT: i64 = 1;
/// The light tenant: every fourth HTTP submit, and every direct publish (so that its jobs
/// take both ways in, in their own lane unless the hash puts them with the heavy one).
pub const LIGHT_TENANT: i64 = 2;

/// The tenant of HTTP submit `n`.
fn tenant_of_submit(n: usize) -> i64 {
    if n % 4 == 3 {
        LIGHT_TENANT
    } else {
        HEAVY_TENANT
    }
}

#[derive(Default)]
pub struct Ledger {
    pub accepted: Vec<Accepted>,
    /// When a client attempt failed (503, 5xx, a refused or broken connection).
    pub failed_attempts: Vec<Instant>,
    /// Submits given up after [`GIVE_UP`] of retries (never accepted: not a loss).
    pub gave_up: usize,
    /// Answers that are neither 202 nor worth a retry (a bug: they fail the run).
    pub unexpected: Vec<String>,
    /// Per HTTP-accepted job: the longest time a replica took to know it after its 202
    /// (time a replica was down or restarting excluded); `None`: one never did.
    pub visible_after: Vec<(JobId, Instant, Option<Duration>)>,
}

pub type SharedLedger = Arc<Mutex<Ledger>>;

fn lock(l: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// The load generators; [`Load::stop`] ends them.
pub struct Load {
    stop: CancellationToken,
    tasks: TaskTracker,
    broker_stop: CancellationToken,
}

pub struct LoadConfig {
    pub ingress_urls: Vec<String>,
    pub ready: Readiness,
    /// A bearer token of each tenant.
    pub tokens: std::collections::HashMap<i64, String>,
    /// HTTP submits per second, over all replicas.
    pub http_rate: f64,
    /// Direct AMQP publishes per second.
    pub direct_rate: f64,
    /// The images of the HTTP submits, taken in turn (submit `n` sends `images[n % len]`).
    pub images: Vec<Bytes>,
    /// The image of the direct publishes (they carry it in the message).
    pub direct_image: Bytes,
    pub http: reqwest::Client,
}

impl Load {
    pub fn start(ledger: SharedLedger, config: LoadConfig, deployment: &Deployment) -> Load {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let broker_stop = CancellationToken::new();
        let config = Arc::new(config);
        if config.http_rate > 0.0 {
            let (ledger, config, stop2, tasks2) =
                (ledger.clone(), config.clone(), stop.clone(), tasks.clone());
            tasks.spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / config.http_rate));
                let mut n = 0usize;
                loop {
                    tokio::select! {
                        _ = stop2.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    n += 1;
                    let (ledger, config) = (ledger.clone(), config.clone());
                    tasks2.spawn(submit(ledger, config, n));
                }
            });
        }
        if config.direct_rate > 0.0 {
            let mut broker_config = BrokerConfig::new(
                deployment.urls.clone(),
                "imagejobs-chaos-publisher",
                deployment.topology.clone(),
            );
            broker_config.publish_timeout = Duration::from_secs(3);
            let broker = Broker::start(broker_config, broker_stop.clone());
            let (ledger, config, stop2, tasks2) =
                (ledger.clone(), config.clone(), stop.clone(), tasks.clone());
            let exchange = deployment.topology.jobs_exchange();
            tasks.spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / config.direct_rate));
                loop {
                    tokio::select! {
                        _ = stop2.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let (ledger, broker, image, exchange) = (
                        ledger.clone(),
                        broker.clone(),
                        config.direct_image.clone(),
                        exchange.clone(),
                    );
                    tasks2.spawn(publish(ledger, broker, exchange, image));
                }
            });
        }
        Load {
            stop,
            tasks,
            broker_stop,
        }
    }

    /// Stops sending new jobs and waits for the submits in flight (each bounded by its
    /// retries) to be accepted or given up.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.broker_stop.cancel();
    }
}

async fn submit(ledger: SharedLedger, config: Arc<LoadConfig>, n: usize) {
    let key = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let urls = &config.ingress_urls;
    let mut replica = n % urls.len().max(1);
    let Some(image) = config.images.get(n % config.images.len().max(1)).cloned() else {
        lock(&ledger)
            .unexpected
            .push("the load has no image to send".into());
        return;
    };
    let tenant = tenant_of_submit(n);
    let token = config.tokens.get(&tenant).cloned().unwrap_or_default();
    loop {
        let url = format!("{}/api/v1/job", urls[replica]);
        let sent = config
            .http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "image/png")
            .header("idempotency-key", &key)
            .timeout(Duration::from_secs(10))
            .body(image.clone())
            .send()
            .await;
        let now = Instant::now();
        match sent {
            Ok(resp) if resp.status() == 202 => {
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                match body["id"].as_str().and_then(|s| s.parse::<JobId>().ok()) {
                    Some(id) => {
                        lock(&ledger).accepted.push(Accepted {
                            id,
                            at: now,
                            via: Via::Http,
                            bytes: image.len(),
                            tenant,
                        });
                        watch_visibility(ledger, config, token, id, now).await;
                    }
                    None => lock(&ledger)
                        .unexpected
                        .push(format!("a 202 without an id: {body}")),
                }
                return;
            }
            Ok(resp) if resp.status() == 429 || resp.status().is_server_error() => {
                lock(&ledger).failed_attempts.push(now);
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                lock(&ledger)
                    .unexpected
                    .push(format!("submit answered {status}: {text}"));
                return;
            }
            Err(_) => lock(&ledger).failed_attempts.push(now),
        }
        if started.elapsed() > GIVE_UP {
            lock(&ledger).gave_up += 1;
            return;
        }
        tokio::time::sleep(RETRY_EVERY).await;
        replica = (replica + 1) % urls.len().max(1);
    }
}

/// Polls every replica until it knows `id`; records the slowest, not counting time a
/// replica spent down or restarting.
async fn watch_visibility(
    ledger: SharedLedger,
    config: Arc<LoadConfig>,
    token: String,
    id: JobId,
    at: Instant,
) {
    let polls = config.ingress_urls.iter().enumerate().map(|(r, base)| {
        let url = format!("{base}/api/v1/job/{id}");
        let (http, token, ready) = (config.http.clone(), token.clone(), config.ready.clone());
        async move {
            let end = at + VISIBLE_WITHIN;
            loop {
                let known = http
                    .get(&url)
                    .bearer_auth(&token)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                let now = Instant::now();
                let since = ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(r)
                    .copied()
                    .flatten();
                if known {
                    // Counted from the 202, or from when a restarted replica became ready.
                    let from = since.map_or(at, |s| s.max(at));
                    return Some(now.saturating_duration_since(from));
                }
                if now > end && since.is_some_and(|s| now > s + VISIBLE_WITHIN) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let seen: Vec<Option<Duration>> = futures::future::join_all(polls).await;
    let slowest = seen
        .iter()
        .try_fold(Duration::ZERO, |m, d| d.map(|d| m.max(d)));
    lock(&ledger).visible_after.push((id, at, slowest));
}

async fn publish(ledger: SharedLedger, broker: Broker, exchange: String, image: Bytes) {
    let meta = JobMeta {
        id: JobId::new(),
        tenant_id: TenantId(LIGHT_TENANT),
        client_id: ClientId(2),
        content_type: Some("image/png".into()),
        md5: Some(Md5::of(&image)),
        attempt: 1,
        payload_location: None,
        payload_size: None,
    };
    let started = Instant::now();
    loop {
        let sent = broker
            .publish(&exchange, SUBMIT_KEY, &image, meta.to_properties())
            .await;
        let now = Instant::now();
        match sent {
            Ok(()) => {
                lock(&ledger).accepted.push(Accepted {
                    id: meta.id,
                    at: now,
                    via: Via::Direct,
                    bytes: image.len(),
                    tenant: LIGHT_TENANT,
                });
                return;
            }
            Err(_) => lock(&ledger).failed_attempts.push(now),
        }
        if started.elapsed() > GIVE_UP {
            lock(&ledger).gave_up += 1;
            return;
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
