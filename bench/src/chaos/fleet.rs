//! The pipeline's processes under chaos: two ingress replicas on fixed ports (a restarted
//! one answers where the clients look for it) and the consumers, all child processes of
//! the built binaries so that they can be killed for real.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use imagejobs::ingress::IngressConfig;
use imagejobs_consumer::ConsumerConfig;
use imagejobs_testkit::deployment::{connect, wait_consumers};
use imagejobs_testkit::process::{free_port, Service};
use imagejobs_testkit::ready::probe;
use imagejobs_testkit::{wait_ready, Deployment};

use super::SECRET;

/// When each ingress replica last became ready; `None` while it is down.
pub type Readiness = Arc<Mutex<Vec<Option<Instant>>>>;

pub struct Fleet {
    pub deployment: Deployment,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    ingress_config: IngressConfig,
    consumer_config: ConsumerConfig,
    ingresses: Vec<(u16, Option<Service>)>,
    pub consumers: Vec<Service>,
    started_consumers: usize,
    restarts: usize,
    pub ready: Readiness,
    http: reqwest::Client,
}

/// Keeps `ready` true to what the replicas say: a replica whose `/readyz` stops answering
/// 200 (no broker node, a blocked broker, its index catching up) counts as restarting
/// until it answers 200 again, and `ready` then holds that moment. A 202 cannot reach a
/// replica that cannot read the stream, so the visibility check counts from there, as it
/// does after a process restart. Polls every 100 ms until aborted.
pub fn watch_readiness(
    urls: Vec<String>,
    ready: Readiness,
    http: reqwest::Client,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_ready = vec![true; urls.len()];
        loop {
            for (i, base) in urls.iter().enumerate() {
                let ok = probe(&http, base, Duration::from_secs(2)).await.is_ok();
                let mut ready = ready.lock().unwrap_or_else(|p| p.into_inner());
                match (ok, was_ready[i]) {
                    (true, false) => ready[i] = Some(Instant::now()),
                    (false, true) => ready[i] = None,
                    _ => {}
                }
                was_ready[i] = ok;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

impl Fleet {
    pub fn new(
        deployment: Deployment,
        bin_dir: PathBuf,
        log_dir: PathBuf,
        ingress_config: IngressConfig,
        consumer_config: ConsumerConfig,
        http: reqwest::Client,
    ) -> Fleet {
        Fleet {
            deployment,
            bin_dir,
            log_dir,
            ingress_config,
            consumer_config,
            ingresses: Vec::new(),
            consumers: Vec::new(),
            started_consumers: 0,
            restarts: 0,
            ready: Arc::default(),
            http,
        }
    }

    /// The base URLs of the ingress replicas.
    pub fn ingress_urls(&self) -> Vec<String> {
        self.ingresses
            .iter()
            .map(|(port, _)| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    /// Starts `n` ingress replicas and waits until each is ready.
    pub async fn start_ingresses(&mut self, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            let port = free_port()?;
            self.ingresses.push((port, None));
            self.ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(None);
            self.spawn_ingress(i).await?;
        }
        Ok(())
    }

    async fn spawn_ingress(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.ingresses[i].0;
        let config = IngressConfig {
            port,
            ..self.ingress_config.clone()
        };
        self.restarts += 1;
        let name = format!("chaos-ingress{}-{}", i + 1, self.restarts);
        let mut env = config.broker.to_env();
        env.extend([
            ("JWT_SECRET", SECRET.into()),
            ("RUST_LOG", "info,lapin=warn".into()),
        ]);
        let mut service = Service::spawn(
            &name,
            &self.bin_dir.join("imagejobs-ingress"),
            &config.to_args(),
            &env,
            &self.log_dir,
            false,
        )?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(
            &self.http,
            &url,
            Duration::from_secs(60),
            Some(&mut service),
        )
        .await?;
        self.ingresses[i].1 = Some(service);
        self.ready.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(Instant::now());
        Ok(())
    }

    /// SIGKILLs ingress `i` and starts it again on the same port; returns once it is ready.
    pub async fn kill_and_restart_ingress(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(service) = self.ingresses[i].1.take() {
            service.signal("KILL").await?;
            let mut service = service;
            service.wait(Duration::from_secs(10)).await?;
        }
        self.ready.lock().unwrap_or_else(|p| p.into_inner())[i] = None;
        self.spawn_ingress(i).await
    }

    /// Starts a consumer process and waits until the work queue has `expect` consumers.
    pub async fn start_consumer(&mut self, expect: u32) -> anyhow::Result<()> {
        self.started_consumers += 1;
        let name = format!("chaos-consumer{}", self.started_consumers);
        let mut env = self.consumer_config.broker.to_env();
        env.push(("RUST_LOG", "info,lapin=warn".into()));
        let service = Service::spawn(
            &name,
            &self.bin_dir.join("imagejobs-consumer"),
            &self.consumer_config.to_args(),
            &env,
            &self.log_dir,
            false,
        )?;
        self.consumers.push(service);
        let conn = connect(&self.deployment.urls, "imagejobs-chaos-look").await?;
        let queue = self.deployment.topology.work_queue();
        let waited = wait_consumers(&conn, &queue, expect, Duration::from_secs(60)).await;
        let _ = conn.close(200, "looked".into()).await;
        waited
    }

    /// Takes the oldest consumer out of the fleet (to kill or stop it).
    pub fn take_consumer(&mut self) -> Option<Service> {
        (!self.consumers.is_empty()).then(|| self.consumers.remove(0))
    }

    /// SIGTERM to every process, then what is left is killed.
    pub async fn stop(mut self) {
        let mut all: Vec<Service> = self.consumers.drain(..).collect();
        all.extend(self.ingresses.iter_mut().filter_map(|(_, s)| s.take()));
        let stops = all.into_iter().map(|s| s.stop(Duration::from_secs(15)));
        futures::future::join_all(stops).await;
    }
}
