//! What every scenario shares: the settings and plan, the bench's broker connection and
//! HTTP client, and starting the pieces of the pipeline (ingress and consumer processes
//! from the release binaries, stubs in this process).

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use lapin::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use imagejobs::ingress::IngressConfig;
use imagejobs_consumer::ConsumerConfig;
use imagejobs_core::config::ByteSize;
use imagejobs_stubs::{StubConfig, Stubs};
use imagejobs_testkit::deployment::{connect, wait_consumers};
use imagejobs_testkit::process::{free_port, Service};
use imagejobs_testkit::{token_with, wait_ready, Deployment};

use crate::broker::RETRY_DELAYS;
use crate::config::BenchConfig;
use crate::cpu::CpuMeter;
use crate::plan::Plan;

/// The JWT secret of every ingress the bench starts.
pub(crate) const SECRET: &str = "imagejobs-bench-secret";

pub struct Harness {
    pub config: BenchConfig,
    pub plan: Plan,
    pub conn: Connection,
    pub http: reqwest::Client,
    started: Instant,
    /// Deployments not removed yet, to remove them if the run is interrupted.
    deployments: Mutex<Vec<Deployment>>,
}

/// An ingress process and where it answers.
pub struct IngressProcess {
    pub service: Service,
    pub url: String,
}

/// Stubs served by this process, and the token that stops them.
pub struct StubsHandle {
    pub stubs: Stubs,
    stop: CancellationToken,
}

impl StubsHandle {
    pub async fn stop(self) {
        self.stop.cancel();
        self.stubs.wait().await;
    }
}

impl Harness {
    pub async fn new(config: BenchConfig, plan: Plan) -> anyhow::Result<Harness> {
        let conn = connect(&config.amqp_url, "imagejobs-bench").await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Harness {
            config,
            plan,
            conn,
            http,
            started: Instant::now(),
            deployments: Mutex::default(),
        })
    }

    /// A fresh deployment (prefix `bench-<label>-…`), remembered until [`Harness::remove`].
    pub fn deployment(&self, label: &str) -> Deployment {
        let d = Deployment::on(
            self.config.amqp_url.clone(),
            &format!("bench-{label}"),
            RETRY_DELAYS,
        );
        self.deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(d.clone());
        d
    }

    /// [`Harness::deployment`] with its topology settings changed by `tweak` (the lanes).
    pub fn deployment_with(
        &self,
        label: &str,
        tweak: impl FnOnce(&mut imagejobs_core::config::TopologyArgs),
    ) -> Deployment {
        let d = self.deployment(label);
        let mut args = d.topology_args.clone();
        tweak(&mut args);
        let changed = Deployment::with_args(d.urls.clone(), args);
        let mut all = self.deployments.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|x| x.prefix != d.prefix);
        all.push(changed.clone());
        changed
    }

    /// Deletes a deployment's queues and exchanges (stop its processes first).
    pub async fn remove(&self, d: &Deployment) {
        d.remove(&self.conn).await;
        self.deployments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|x| x.prefix != d.prefix);
    }

    /// Removes what an interrupted run left behind.
    pub async fn remove_leftovers(&self) {
        let left = std::mem::take(&mut *self.deployments.lock().unwrap_or_else(|p| p.into_inner()));
        for d in left {
            eprintln!("removing {}", d.prefix);
            d.remove(&self.conn).await;
        }
    }

    /// Prints a progress line to stderr, with the time since the run started.
    pub fn progress(&self, msg: impl std::fmt::Display) {
        eprintln!("[{:6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts a CPU meter over the broker, the given services (labelled), and this
    /// process (labelled `bench`: load generator, stubs, events reader).
    pub fn cpu_meter(&self, services: Vec<(&'static str, Vec<u32>)>) -> CpuMeter {
        let mut groups = Vec::new();
        if let Some(pid) = self.config.broker_pid {
            groups.push(("broker", vec![pid]));
        }
        groups.extend(services);
        groups.push(("bench", vec![std::process::id()]));
        CpuMeter::start(groups)
    }

    /// A bearer token of `tenant` for the bench's ingresses.
    pub fn token(&self, tenant: i64) -> anyhow::Result<String> {
        Ok(token_with(SECRET, tenant, 1))
    }

    /// Starts `imagejobs-ingress` for `deployment` and waits until `/readyz` says 200
    /// (broker up, topology declared, index caught up), at most `ready_within`.
    pub async fn start_ingress(
        &self,
        deployment: &Deployment,
        name: &str,
        ready_within: Duration,
    ) -> anyhow::Result<IngressProcess> {
        // Every image in the job message, as the figures of the earlier issues measured;
        // the claim check's benchmark (`claimcheck`) starts its ingresses itself.
        self.start_ingress_with(deployment, name, ready_within, |c| {
            c.claim_check_min_bytes = ByteSize(u64::MAX)
        })
        .await
    }

    /// [`Harness::start_ingress`] with settings changed by `tweak`.
    pub async fn start_ingress_with(
        &self,
        deployment: &Deployment,
        name: &str,
        ready_within: Duration,
        tweak: impl FnOnce(&mut IngressConfig),
    ) -> anyhow::Result<IngressProcess> {
        let port = free_port()?;
        let mut config = IngressConfig {
            broker: deployment.broker_args(),
            host: [127, 0, 0, 1].into(),
            port,
            ..IngressConfig::default()
        };
        tweak(&mut config);
        let args = config.to_args();
        let program = self.config.bin_dir().join("imagejobs-ingress");
        let mut env = config.broker.to_env();
        env.extend([("JWT_SECRET", SECRET.into()), ("RUST_LOG", "info".into())]);
        let mut service = Service::spawn(
            name,
            &program,
            &args,
            &env,
            &self.config.log_dir,
            self.config.perf,
        )?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&self.http, &url, ready_within, Some(&mut service)).await?;
        Ok(IngressProcess { service, url })
    }

    /// Starts `n` `imagejobs-consumer` processes against `stubs` and waits until all of
    /// them consume from the work queue.
    pub async fn start_consumers(
        &self,
        deployment: &Deployment,
        stubs: &Stubs,
        n: usize,
        prefetch: u16,
        name: &str,
    ) -> anyhow::Result<Vec<Service>> {
        let config = ConsumerConfig {
            broker: deployment.broker_args(),
            prefetch,
            worker_service_url: stubs.worker_url.parse()?,
            blob_service_url: stubs.blob_url.parse()?,
            job_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
            ..ConsumerConfig::default()
        };
        let args = config.to_args();
        let mut env = config.broker.to_env();
        env.push(("RUST_LOG", "info".into()));
        let program = self.config.bin_dir().join("imagejobs-consumer");
        let mut services = Vec::with_capacity(n);
        for i in 1..=n {
            services.push(Service::spawn(
                &format!("{name}-consumer{i}"),
                &program,
                &args,
                &env,
                &self.config.log_dir,
                self.config.perf,
            )?);
        }
        let queue = deployment.topology.work_queue();
        let waited = wait_consumers(&self.conn, &queue, n as u32, Duration::from_secs(30)).await;
        if let Err(e) = waited {
            for s in &mut services {
                s.check_running()?;
            }
            return Err(e);
        }
        Ok(services)
    }

    /// Stub services in this process: no injected errors, `latency` on every request,
    /// the image work on or skipped.
    pub async fn start_stubs(
        &self,
        latency: Duration,
        image_work: bool,
    ) -> anyhow::Result<StubsHandle> {
        let config = StubConfig {
            seed: Some(7),
            latency_ms: latency.as_millis() as u64,
            skip_image_work: !image_work,
            blob_max_bytes: 256 * 1024 * 1024,
            ..StubConfig::default()
        };
        let stop = CancellationToken::new();
        let stubs = Stubs::start(config, stop.clone()).await?;
        Ok(StubsHandle { stubs, stop })
    }
}

/// Stops every service (each gets `grace` after SIGTERM).
pub async fn stop_all(services: Vec<Service>, grace: Duration) {
    let stops = services.into_iter().map(|s| async move {
        let name = s.name().to_owned();
        if let Err(e) = s.stop(grace).await {
            tracing::warn!(%name, error = %format!("{e:#}"), "stopping a child process");
        }
    });
    futures::future::join_all(stops).await;
}
