//! imagejobs-consumer: takes jobs from the work queue and drives each through the blob
//! and worker services, reporting every status change as an event.
//!
//! # Layout
//! - [`config`]: the settings. This file: [`Consumer`], the process (build, subscribe
//!   again after any failure, drain on shutdown).
//! - `cancels`: the cancels read from the control stream, and the jobs they stop.
//! - `subscription`: the consume loop on one connection, one task per delivery.
//! - `delivery`: one delivery from validation to ack or requeue.
//! - [`outcome`]: the rules of docs/consumer.md as a pure function, from how an attempt ended to
//!   what is published and whether the delivery is acked.
//! - `pipeline`: the service calls of one attempt; [`retry`]: the in-process retry tier;
//!   [`services`]: the HTTP clients.
//!
//! Dependencies run one way: `Consumer` → `subscription` → `delivery` → `outcome`,
//! `pipeline` → `services`, `retry`. The crate depends on `imagejobs-core` and never on
//! the ingress.

mod cancels;
pub mod config;
mod delivery;
pub mod metrics;
pub mod outcome;
mod pipeline;
pub mod retry;
pub mod services;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::Channel;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use imagejobs_core::backoff::Backoff;
use imagejobs_core::broker::{Broker, BrokerConfig};
use imagejobs_core::events::EventSink;
use imagejobs_core::topology::Topology;

use cancels::Cancels;
pub use config::ConsumerConfig;
use delivery::Handler;
pub use delivery::Stats;
use metrics::ConsumerMetrics;
use pipeline::Pipeline;
use retry::RetryPolicy;
use services::Services;
use subscription::Subscription;

/// How long abandoned jobs get to return their deliveries after the drain timeout.
const REQUEUE_GRACE: Duration = Duration::from_secs(5);

/// How long the broker connection gets to close with its handshake at exit.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A built consumer: connecting in the background, not consuming yet.
pub struct Consumer {
    handler: Arc<Handler>,
    prefetch: u16,
    drain_timeout: Duration,
    shutdown: CancellationToken,
    /// Stops the broker connection; cancelled only after the drain, since the acks of
    /// finishing jobs travel on it.
    broker_stop: CancellationToken,
    /// Where `GET /metrics` is served (METRICS_PORT), when it is.
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Consumer {
    pub async fn build(
        config: ConsumerConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let topology = Topology::new(&config.broker.topology);
        let mut broker_config =
            BrokerConfig::new(config.broker.urls()?, "imagejobs-consumer", topology);
        broker_config.tls_ca = config.broker.ca_pem()?;
        broker_config.channels = 4;
        let services = Services::new(
            &config.blob_service_url,
            &config.worker_service_url,
            config.http_timeout,
            usize::from(config.prefetch),
            config
                .service_ca_file
                .as_deref()
                .map(imagejobs_core::tls::read_pem)
                .transpose()?
                .as_deref(),
        )?;
        let broker_stop = CancellationToken::new();
        let broker = Broker::start(broker_config, broker_stop.clone());
        let metrics = Arc::new(ConsumerMetrics::new());
        let cancels = Arc::new(Cancels::default());
        tokio::spawn(cancels::follow(
            cancels.clone(),
            broker.clone(),
            config.broker.topology.control_max_age.duration(),
            broker_stop.clone(),
        ));
        let metrics_addr = match config.metrics_port {
            None => None,
            Some(port) => {
                let (m, b) = (metrics.clone(), broker.clone());
                let render = Arc::new(move || m.render(&b));
                let addr = imagejobs_core::metrics::listen(port, render, broker_stop.clone())
                    .await
                    .with_context(|| format!("binding METRICS_PORT {port}"))?;
                Some(addr)
            }
        };
        let handler = Arc::new(Handler {
            events: EventSink::with_limits(broker.clone(), config.broker.group_limits()),
            broker,
            pipeline: Pipeline {
                services,
                retry: RetryPolicy {
                    max_attempts: config.retry_max_attempts,
                    base: config.retry_base_delay,
                    max_delay: config.retry_max_delay,
                },
                job_timeout: config.job_timeout,
                metrics: metrics.clone(),
            },
            stats: Arc::default(),
            cancels,
            metrics,
            max_body: config.max_body_bytes.as_usize(),
        });
        Ok(Consumer {
            handler,
            metrics_addr,
            prefetch: config.prefetch,
            drain_timeout: config.drain_timeout,
            shutdown,
            broker_stop,
        })
    }

    /// The address of the metrics listener, when METRICS_PORT is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Counters of this consumer (acked, requeued).
    pub fn stats(&self) -> Arc<Stats> {
        self.handler.stats.clone()
    }

    /// Consumes until shutdown, then stops taking deliveries, lets the jobs in flight
    /// finish (up to the drain timeout), returns the rest to the queue, and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let abandon = CancellationToken::new();
        let subscription = Subscription {
            handler: &self.handler,
            prefetch: self.prefetch,
            tracker: &tracker,
            abandon: &abandon,
        };
        let broker = &self.handler.broker;
        let mut pause = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut held: Option<Channel> = None;
        loop {
            let live = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                live = broker.wait_live() => live,
            };
            // No job before every cancel published so far is known (see `cancels`).
            let connection = broker.connections_made();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.handler.cancels.synced(connection) => {}
            }
            match subscription.run(&live, &self.shutdown).await {
                Ok(channel) => {
                    held = Some(channel);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "job subscription ended; resubscribing")
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause.next_delay()) => {}
            }
        }
        tracker.close();
        tracing::info!(in_flight = tracker.len(), "draining jobs in flight");
        if tokio::time::timeout(self.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tracker.len(),
                "drain timeout; returning the jobs left to the queue"
            );
            abandon.cancel();
            if tokio::time::timeout(REQUEUE_GRACE, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = tracker.len(),
                    "the broker will redeliver what is left"
                );
            }
        }
        drop(held);
        self.broker_stop.cancel();
        if tokio::time::timeout(CLOSE_GRACE, broker.stopped())
            .await
            .is_err()
        {
            tracing::warn!("the broker connection did not close in time");
        }
        Ok(())
    }
}
