//! The pipeline under test: a deployment, stub services, and the ingresses and consumers a
//! test starts on them, from typed configs. Everything stops when the [`Pipeline`] (or the
//! handle of one process) is dropped, and the deployment's queues are deleted with it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio_util::sync::{CancellationToken, DropGuard};

use imagejobs::http::AppState;
use imagejobs::ingress::{Ingress, IngressConfig};
use imagejobs_consumer::{Consumer, ConsumerConfig, Stats};
use imagejobs_core::config::Secret;
use imagejobs_stubs::{StubConfig, Stubs};

use crate::deployment::Deployment;
use crate::poll::eventually;
use crate::process::{bin, free_port, Service};
use crate::ready::wait_ready;
use crate::{init_logs, token, SECRET};

/// Stubs as tests want them: no faults, real image work, a fixed seed.
pub fn stub_config() -> StubConfig {
    StubConfig {
        seed: Some(7),
        ..StubConfig::default()
    }
}

/// A deployment with its stubs; see the module docs.
pub struct Pipeline {
    pub deployment: Deployment,
    pub stubs: Stubs,
    /// Parent of every process's shutdown token.
    stop: CancellationToken,
}

impl Pipeline {
    /// A fresh deployment and stubs without faults.
    pub async fn new() -> Pipeline {
        Self::with_stubs(|_| {}).await
    }

    /// A fresh deployment and stubs changed by `f`.
    pub async fn with_stubs(f: impl FnOnce(&mut StubConfig)) -> Pipeline {
        let mut config = stub_config();
        f(&mut config);
        Self::build(Deployment::new("t"), config).await
    }

    pub async fn build(deployment: Deployment, stubs: StubConfig) -> Pipeline {
        init_logs();
        let stop = CancellationToken::new();
        let stubs = Stubs::start(stubs, stop.child_token())
            .await
            .expect("stubs start");
        Pipeline {
            deployment,
            stubs,
            stop,
        }
    }

    /// What a test ingress gets: 127.0.0.1:0, the test secret, a short confirm timeout.
    pub fn ingress_config(&self) -> IngressConfig {
        IngressConfig {
            broker: self.deployment.broker_args(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            jwt_secret: Some(Secret::new(SECRET)),
            publish_timeout: Duration::from_millis(1500),
            blob_service_url: reqwest::Url::parse(&self.stubs.blob_url)
                .expect("the stubs' URLs parse"),
            ..IngressConfig::default()
        }
    }

    /// What a test consumer gets: these stubs, quick in-process retries.
    pub fn consumer_config(&self) -> ConsumerConfig {
        let url = |s: &str| Url::parse(s).expect("the stubs' URLs parse");
        ConsumerConfig {
            broker: self.deployment.broker_args(),
            worker_service_url: url(&self.stubs.worker_url),
            blob_service_url: url(&self.stubs.blob_url),
            retry_max_attempts: 3,
            retry_base_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(10),
            ..ConsumerConfig::default()
        }
    }

    /// An ingress in this process, ready (`/readyz` 200).
    pub async fn ingress(&self) -> TestIngress {
        self.ingress_with(|_| {}).await
    }

    pub async fn ingress_with(&self, f: impl FnOnce(&mut IngressConfig)) -> TestIngress {
        self.ingress_over(reqwest::Client::new(), f).await
    }

    /// An ingress that `http` talks to (one that trusts its certificate, for HTTPS).
    pub async fn ingress_over(
        &self,
        http: reqwest::Client,
        f: impl FnOnce(&mut IngressConfig),
    ) -> TestIngress {
        let mut config = self.ingress_config();
        f(&mut config);
        TestIngress::start_over(config, self.stop.child_token(), http).await
    }

    /// A consumer in this process.
    pub async fn consumer(&self) -> TestConsumer {
        self.consumer_with(|_| {}).await
    }

    pub async fn consumer_with(&self, f: impl FnOnce(&mut ConsumerConfig)) -> TestConsumer {
        let mut config = self.consumer_config();
        f(&mut config);
        TestConsumer::start(config, self.stop.child_token()).await
    }

    /// An ingress as a child process of the built binary on a free port, ready; and its
    /// base URL.
    pub async fn child_ingress(&self, f: impl FnOnce(&mut IngressConfig)) -> (Service, String) {
        let mut config = self.ingress_config();
        config.port = free_port().expect("a free port");
        f(&mut config);
        let mut env = config.broker.to_env();
        env.extend([
            ("JWT_SECRET", SECRET.into()),
            ("RUST_LOG", "info,lapin=warn".into()),
        ]);
        let dir = std::env::temp_dir().join(format!("imagejobs-{}", self.deployment.prefix));
        let name = format!("ingress-{}", config.port);
        let mut service = Service::spawn(
            &name,
            &bin("imagejobs-ingress"),
            &config.to_args(),
            &env,
            &dir,
            false,
        )
        .expect("the ingress starts");
        let url = format!("http://127.0.0.1:{}", config.port);
        if let Err(e) = wait_ready(
            &reqwest::Client::new(),
            &url,
            Duration::from_secs(30),
            Some(&mut service),
        )
        .await
        {
            panic!("the child ingress gets ready: {e:#}");
        }
        (service, url)
    }

    /// A consumer as a child process of the built binary (to kill it for real).
    pub fn child_consumer(&self) -> Service {
        let config = self.consumer_config();
        let args = config.to_args();
        let mut env = config.broker.to_env();
        env.push(("RUST_LOG", "warn".into()));
        let dir = std::env::temp_dir().join(format!("imagejobs-{}", self.deployment.prefix));
        Service::spawn(
            "consumer",
            &bin("imagejobs-consumer"),
            &args,
            &env,
            &dir,
            false,
        )
        .expect("the consumer starts")
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
        // Drop cannot await, and the test's runtime is busy dropping us: delete the
        // deployment's queues from a thread with a runtime of its own.
        let deployment = self.deployment.clone();
        let removed = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), deployment.cleanup()).await;
                });
            }
        });
        let _ = removed.join();
    }
}

/// A running ingress; stops when dropped.
pub struct TestIngress {
    pub addr: SocketAddr,
    pub url: String,
    pub state: AppState,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _stop_on_drop: DropGuard,
}

impl TestIngress {
    pub async fn start(config: IngressConfig, shutdown: CancellationToken) -> TestIngress {
        Self::start_over(config, shutdown, reqwest::Client::new()).await
    }

    /// [`TestIngress::start`], talking to it with `http`.
    pub async fn start_over(
        config: IngressConfig,
        shutdown: CancellationToken,
        http: reqwest::Client,
    ) -> TestIngress {
        init_logs();
        let ingress = Ingress::build(config, shutdown.clone())
            .await
            .expect("ingress builds");
        let addr = ingress.local_addr();
        let scheme = if ingress.is_tls() { "https" } else { "http" };
        let state = ingress.state();
        let task = tokio::spawn(ingress.run_until_stopped());
        let t = TestIngress {
            addr,
            url: format!("{scheme}://{addr}"),
            state,
            http,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            task,
        };
        t.wait_ready().await;
        t
    }

    /// Waits until `/readyz` says 200 (at most 20 s; panics with the last answer then).
    pub async fn wait_ready(&self) {
        if let Err(e) = wait_ready(&self.http, &self.url, Duration::from_secs(20), None).await {
            panic!("ingress ready: {e:#}");
        }
    }

    /// Stops it and waits until it has finished serving.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Submits `image` as a raw body for tenant 1.
    pub async fn submit_raw(&self, image: &[u8]) -> reqwest::Response {
        self.submit_raw_as(image, 1).await
    }

    /// Submits `image` as a raw body for `tenant`.
    pub async fn submit_raw_as(&self, image: &[u8], tenant: i64) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/job", self.url))
            .bearer_auth(token(tenant, 1))
            .header("content-type", "image/png")
            .body(image.to_vec())
            .send()
            .await
            .expect("request sent")
    }

    /// Submits `image` for `tenant` and returns the job id.
    pub async fn submit_as(&self, image: &[u8], tenant: i64) -> String {
        let resp = self.submit_raw_as(image, tenant).await;
        assert_eq!(resp.status(), 202, "submit accepted");
        let v: serde_json::Value = resp.json().await.expect("json");
        v["id"].as_str().expect("id").to_owned()
    }

    /// Submits `image` for tenant 1 and returns the job id.
    pub async fn submit_id(&self, image: &[u8]) -> String {
        self.submit_as(image, 1).await
    }

    /// `method path` (e.g. `/api/v1/jobs?limit=2`) as `tenant`'s client 1.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        tenant: i64,
    ) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token(tenant, 1))
            .send()
            .await
            .expect("request sent")
    }

    /// `GET path` as `tenant`: the status and the JSON body (`Null` when not JSON).
    pub async fn get_json(&self, path: &str, tenant: i64) -> (u16, serde_json::Value) {
        let r = self.call(reqwest::Method::GET, path, tenant).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// `DELETE /api/v1/job/{id}` as `tenant`: the status and the JSON body.
    pub async fn cancel(&self, id: &str, tenant: i64) -> (u16, serde_json::Value) {
        let path = format!("/api/v1/job/{id}");
        let r = self.call(reqwest::Method::DELETE, &path, tenant).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    pub async fn get_job(&self, id: &str, tenant: i64) -> reqwest::Response {
        self.http
            .get(format!("{}/api/v1/job/{id}", self.url))
            .bearer_auth(token(tenant, 1))
            .send()
            .await
            .expect("request sent")
    }

    /// Waits until this ingress shows `id` (of `tenant`) in a terminal status, and
    /// returns the job JSON.
    pub async fn wait_terminal(
        &self,
        id: &str,
        tenant: i64,
        deadline: Duration,
    ) -> serde_json::Value {
        eventually(deadline, &format!("job {id} to end"), || async {
            let r = self.get_job(id, tenant).await;
            if r.status() != 200 {
                return None;
            }
            let v: serde_json::Value = r.json().await.ok()?;
            matches!(
                v["status"].as_str(),
                Some("SUCCESS" | "FAILED" | "CANCELLED")
            )
            .then_some(v)
        })
        .await
    }
}

/// A consumer running in this process; stops when dropped.
pub struct TestConsumer {
    pub stats: Arc<Stats>,
    /// Where it serves `/metrics`, with `metrics_port` set.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _stop_on_drop: DropGuard,
}

impl TestConsumer {
    pub async fn start(config: ConsumerConfig, shutdown: CancellationToken) -> TestConsumer {
        init_logs();
        let consumer = Consumer::build(config, shutdown.clone())
            .await
            .expect("consumer builds");
        let stats = consumer.stats();
        let metrics_addr = consumer.metrics_addr();
        let task = tokio::spawn(consumer.run_until_stopped());
        TestConsumer {
            stats,
            metrics_addr,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            task,
        }
    }

    pub fn acked(&self) -> u64 {
        self.stats.acked.load(Ordering::Relaxed)
    }

    /// Deliveries it returned to the queue.
    pub fn requeued(&self) -> u64 {
        self.stats.requeued.load(Ordering::Relaxed)
    }

    /// Stops it (draining) and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}
