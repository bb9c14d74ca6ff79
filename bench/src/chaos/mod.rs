//! `imagejobs-bench chaos` (`make chaos`): the whole pipeline under steady load while
//! faults are injected on a schedule (RELIABILITY.md), then a reconciliation of every accepted
//! job, and one table per fault. Exits non-zero on any loss, flip or disagreement.
//!
//! # Layout
//! - [`cluster`]: the broker nodes, through `rabbitmq/node.sh`.
//! - [`fleet`]: two ingress replicas and the consumers, as child processes.
//! - [`load`]: HTTP submits and direct AMQP publishes, and the ledger of accepted jobs.
//! - [`faults`]: the schedule and how each fault is injected and taken back.
//! - [`reconcile`]: what must hold afterwards, and the table.

mod cluster;
mod faults;
mod fleet;
mod load;
mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use imagejobs::ingress::IngressConfig;
use imagejobs_consumer::ConsumerConfig;
use imagejobs_core::config::{AmqpUrls, BrokerArgs, Secret};
use imagejobs_core::events::Start;
use imagejobs_stubs::{StubConfig, Stubs};
use imagejobs_testkit::{png, token_with, Deployment, EventReader};

use cluster::Cluster;
use faults::{Fault, Target, Window};
use fleet::Fleet;
use load::{Ledger, Load, LoadConfig};

/// The JWT secret of the chaos run's ingresses.
pub const SECRET: &str = "imagejobs-chaos-secret";

/// The chaos ingresses' `CLAIM_CHECK_MIN_BYTES`: the default, so that the run checks the
/// threshold a deployment gets.
const CLAIM_CHECK_MIN_BYTES: u64 = 64 * 1024;

/// Bytes of the load's large image: half again the threshold, so it goes by reference,
/// yet small enough that a full run's inputs and thumbnails stay far below the blob
/// stub's byte bound (an evicted input would be a false FAILED; the reconcile checks).
const LARGE_IMAGE_BYTES: usize = 96 * 1024;

/// Settings of a chaos run.
#[derive(Args, Clone, Debug)]
pub struct ChaosArgs {
    /// The minute-long run of `make test`: one fault of each kind, shorter holds.
    #[arg(long)]
    pub short: bool,
    /// The script that runs the broker nodes (it stops and starts them).
    #[arg(long, env = "CHAOS_NODE_SCRIPT", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../rabbitmq/node.sh"))]
    pub node_script: PathBuf,
    /// HTTP submits per second (over both ingress replicas).
    #[arg(long, default_value_t = 20.0)]
    pub http_rate: f64,
    /// Direct AMQP publishes per second.
    #[arg(long, default_value_t = 4.0)]
    pub direct_rate: f64,
    /// Markdown file that gets the table between this run's markers (RELIABILITY.md).
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// Run the pipeline without its replay of status events after a stream failover, to
    /// measure whether the broker still loses confirmed stream messages (rabbitmq-server
    /// #9457); such a run is expected to fail where it does.
    #[arg(long)]
    pub no_events_replay: bool,
}

/// Runs the chaos against `urls`; `Ok(false)` when a promise was broken.
pub async fn run(
    urls: AmqpUrls,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    args: &ChaosArgs,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let nodes = urls.0.len();
    let progress = |msg: &str| eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());
    let hold = if args.short {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(5)
    };
    let settle = if args.short {
        Duration::from_secs(4)
    } else {
        Duration::from_secs(6)
    };
    let job_timeout = Duration::from_secs(3);
    let blob_put_timeout = Duration::from_secs(2);
    let base_error_rate = 0.02;

    let deployment = Deployment::on(urls.clone(), "chaos", &[1, 2]);
    progress(&format!(
        "chaos{} on {nodes} node(s), prefix {}; logs in {}",
        if args.short { " --short" } else { "" },
        deployment.prefix,
        log_dir.display()
    ));
    let stop_stubs = CancellationToken::new();
    let stubs = Stubs::start(
        StubConfig {
            seed: Some(11),
            latency_ms: 5,
            error_rate: base_error_rate,
            job_fail_rate: 0.02,
            running_ms: 100,
            ..StubConfig::default()
        },
        stop_stubs.clone(),
    )
    .await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()?;
    let ingress_config = IngressConfig {
        broker: BrokerArgs {
            events_replay: !args.no_events_replay,
            ..deployment.broker_args()
        },
        host: [127, 0, 0, 1].into(),
        jwt_secret: Some(Secret::new(SECRET)),
        publish_timeout: Duration::from_secs(2),
        // Half of the HTTP submits are above it and travel by reference (the others, and
        // the direct publishes, carry their bytes), so the blob store's faults meet the
        // claim check and the consumers' uploads alike.
        claim_check_min_bytes: imagejobs_core::config::ByteSize(CLAIM_CHECK_MIN_BYTES),
        blob_put_timeout,
        blob_service_url: stubs.blob_url.parse()?,
        ..IngressConfig::default()
    };
    let claim_check = reconcile::ClaimCheck {
        min_bytes: ingress_config.claim_check_min_bytes.0,
        max_body: ingress_config.max_body_bytes.0,
    };
    let small: bytes::Bytes = png(48, 32).into();
    let large =
        crate::image::Image::generate(crate::image::Size::new("chaos", LARGE_IMAGE_BYTES))?.png;
    anyhow::ensure!(
        !claim_check.by_reference(small.len()) && claim_check.by_reference(large.len()),
        "the load's images ({} and {} bytes) do not straddle the claim-check threshold of {} bytes",
        small.len(),
        large.len(),
        claim_check.min_bytes
    );
    let consumer_config = ConsumerConfig {
        broker: BrokerArgs {
            events_replay: !args.no_events_replay,
            ..deployment.broker_args()
        },
        prefetch: 8,
        worker_service_url: stubs.worker_url.parse()?,
        blob_service_url: stubs.blob_url.parse()?,
        retry_base_delay: Duration::from_millis(50),
        retry_max_delay: Duration::from_millis(500),
        job_timeout,
        http_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(20),
        ..ConsumerConfig::default()
    };
    let mut fleet = Fleet::new(
        deployment.clone(),
        bin_dir,
        log_dir,
        ingress_config,
        consumer_config,
        http.clone(),
    );
    let vhost = urls.first().map_or_else(|| "/".to_owned(), |u| u.vhost());
    let mut cluster = Cluster::new(args.node_script.clone(), nodes, vhost);
    let outcome = async {
        fleet
            .start_ingresses(2)
            .await
            .context("starting the ingress replicas")?;
        for n in 1..=2 {
            fleet
                .start_consumer(n)
                .await
                .context("starting the consumers")?;
        }
        let mut reader = EventReader::start(&deployment, Start::First).await;
        let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
        // Two tenants' load (fair share): their jobs meet in the lanes.
        let tokens: std::collections::HashMap<i64, String> =
            [load::HEAVY_TENANT, load::LIGHT_TENANT]
                .into_iter()
                .map(|t| (t, token_with(SECRET, t, 1)))
                .collect();
        let load = Load::start(
            ledger.clone(),
            LoadConfig {
                ingress_urls: fleet.ingress_urls(),
                ready: fleet.ready.clone(),
                tokens: tokens.clone(),
                http_rate: args.http_rate,
                direct_rate: args.direct_rate,
                images: vec![small.clone(), large.clone()],
                direct_image: small.clone(),
                http: http.clone(),
            },
            &deployment,
        );
        let readiness =
            fleet::watch_readiness(fleet.ingress_urls(), fleet.ready.clone(), http.clone());
        progress("load running; warming up");
        tokio::time::sleep(settle).await;

        let mut windows = Vec::new();
        let mut target = Target {
            fleet: &mut fleet,
            cluster: &mut cluster,
            stubs: &stubs,
            ledger: &ledger,
            hold,
            base_error_rate,
            job_timeout,
            blob_put_timeout,
            consumers: 2,
            last_stopped: None,
        };
        for fault in Fault::schedule(nodes, args.short) {
            progress(&format!("fault: {}", fault.name()));
            let start = Instant::now();
            let note = target
                .inject(fault)
                .await
                .with_context(|| format!("injecting {}", fault.name()))?;
            windows.push(Window {
                fault,
                note,
                start,
                end: Instant::now(),
            });
            tokio::time::sleep(settle).await;
        }
        progress("faults done; stopping the load and waiting for every accepted job to end");
        load.stop().await;
        readiness.abort();
        let ledger = std::mem::take(&mut *ledger.lock().unwrap_or_else(|p| p.into_inner()));
        let result = reconcile::run(reconcile::Inputs {
            deployment: &deployment,
            ingress_urls: &target.fleet.ingress_urls(),
            http: &http,
            tokens: &tokens,
            stubs: &stubs,
            reader: &mut reader,
            ledger: &ledger,
            windows: &windows,
            settle,
            cluster: target.cluster,
            claim_check,
        })
        .await;
        reader.stop().await;
        result
    }
    .await;
    progress("stopping the pipeline");
    fleet.stop().await;
    stop_stubs.cancel();
    deployment.cleanup().await;
    let report = outcome?;
    let section = format!(
        "Run of {} ({}; {} node{}; {:.0} s), command `{}`.\n\n{}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        if args.short { "short run" } else { "full run" },
        nodes,
        if nodes == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64(),
        std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "imagejobs-bench chaos".into()),
        report.markdown
    );
    println!("\n{section}");
    if let Some(path) = &args.write {
        let marker = format!(
            "chaos-{nodes}-node{}",
            if args.short { "-short" } else { "" }
        );
        crate::report::write_between(
            path,
            &format!("<!-- {marker}:begin (generated by imagejobs-bench chaos; edit outside these markers) -->"),
            &format!("<!-- {marker}:end -->"),
            "# Reliability\n\n",
            &section,
        )?;
        eprintln!("wrote the table to {}", path.display());
    }
    Ok(report.passed)
}
