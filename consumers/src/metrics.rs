//! The consumer's Prometheus metrics (`GET /metrics` on `METRICS_PORT`, docs/http-api.md).
//!
//! Labels are bounded by construction: a status, a retry tier, a dead-letter reason class,
//! a stage of the pipeline.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use imagejobs_core::broker::Broker;
use imagejobs_core::metrics::{latency_histogram, render, BrokerMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// A stage of one attempt, timed by `imagejobs_stage_duration_seconds`.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    /// The blob PUT, its in-process retries included.
    Blob,
    /// The worker submit, retries included.
    WorkerSubmit,
    /// From the worker's answer to the job's end (status polls).
    WorkerRun,
    /// The outcome event's publish until its confirm.
    Event,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Blob => "blob",
            Stage::WorkerSubmit => "worker_submit",
            Stage::WorkerRun => "worker_run",
            Stage::Event => "event",
        }
    }
}

/// Why a job went to the dead queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// Not a valid job message.
    Invalid,
    /// A service refused it (4xx).
    Permanent,
    /// Transient failures on every attempt.
    Exhausted,
    /// Delivered up to the queue's delivery limit without an outcome.
    DeliveryLimit,
}

impl DeadReason {
    fn label(self) -> &'static str {
        match self {
            DeadReason::Invalid => "invalid",
            DeadReason::Permanent => "permanent",
            DeadReason::Exhausted => "exhausted",
            DeadReason::DeliveryLimit => "delivery_limit",
        }
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one consumer process.
pub struct ConsumerMetrics {
    registry: Registry,
    deliveries: Counter,
    redeliveries: Counter,
    in_flight: Gauge,
    jobs: Family<StatusLabels, Counter>,
    retries: Family<TierLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    stages: Histograms<StageLabels>,
    broker: BrokerMetrics,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsumerMetrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let deliveries = Counter::default();
        r.register(
            "imagejobs_deliveries",
            "Job deliveries taken from the work queue",
            deliveries.clone(),
        );
        let redeliveries = Counter::default();
        r.register(
            "imagejobs_redeliveries",
            "Deliveries the broker marked as redelivered (a consumer or connection was lost holding them)",
            redeliveries.clone(),
        );
        let in_flight = Gauge::default();
        r.register(
            "imagejobs_jobs_in_flight",
            "Deliveries being worked on now",
            in_flight.clone(),
        );
        let jobs = Family::<StatusLabels, Counter>::default();
        r.register(
            "imagejobs_jobs",
            "Attempts settled, by the status they reported (SUCCESS, FAILED, RETRYING)",
            jobs.clone(),
        );
        let retries = Family::<TierLabels, Counter>::default();
        r.register(
            "imagejobs_retries",
            "Retries by tier: call (in-process, one service call again), delayed (a retry queue) and outcome (a decided outcome published again after its confirm did not come)",
            retries.clone(),
        );
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        r.register(
            "imagejobs_dead_letters",
            "Jobs sent to the dead queue, by reason class",
            dead_letters.clone(),
        );
        let stages: Histograms<StageLabels> = Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "imagejobs_stage_duration",
            "Duration of each stage of an attempt",
            Unit::Seconds,
            stages.clone(),
        );
        let broker = BrokerMetrics::register(&mut r);
        ConsumerMetrics {
            registry: r,
            deliveries,
            redeliveries,
            in_flight,
            jobs,
            retries,
            dead_letters,
            stages,
            broker,
        }
    }

    pub fn render(&self, broker: &Broker) -> String {
        self.broker.refresh(broker);
        render(&self.registry)
    }

    /// A delivery arrived; the returned guard counts it in flight until dropped.
    pub fn delivered(&self, redelivered: bool) -> InFlightGuard {
        self.deliveries.inc();
        if redelivered {
            self.redeliveries.inc();
        }
        self.in_flight.inc();
        InFlightGuard(self.in_flight.clone())
    }

    pub fn stage(&self, stage: Stage, started: Instant) {
        self.stages
            .get_or_create(&StageLabels {
                stage: stage.label(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// `n` in-process retries of service calls.
    pub fn call_retries(&self, n: u64) {
        if n > 0 {
            self.retries
                .get_or_create(&TierLabels { tier: "call" })
                .inc_by(n);
        }
    }

    /// A settlement's copy or event is published again: its confirm did not come.
    pub fn outcome_retry(&self) {
        self.retries
            .get_or_create(&TierLabels { tier: "outcome" })
            .inc();
    }

    /// The label of a reported status: a fixed set, whatever the event holds.
    pub fn status_label(status: &str) -> &'static str {
        match status {
            "SUCCESS" => "SUCCESS",
            "FAILED" => "FAILED",
            "RETRYING" => "RETRYING",
            "CANCELLED" => "CANCELLED",
            _ => "other",
        }
    }

    /// An attempt was settled (its copy and event confirmed): what it reported (a
    /// [`ConsumerMetrics::status_label`]).
    pub fn settled(
        &self,
        status: Option<&'static str>,
        dead: Option<DeadReason>,
        delayed_retry: bool,
    ) {
        if let Some(status) = status {
            self.jobs.get_or_create(&StatusLabels { status }).inc();
        }
        if let Some(reason) = dead {
            self.dead_letters
                .get_or_create(&ReasonLabels {
                    reason: reason.label(),
                })
                .inc();
        }
        if delayed_retry {
            self.retries
                .get_or_create(&TierLabels { tier: "delayed" })
                .inc();
        }
    }
}

/// Counts one delivery in flight while it lives.
pub struct InFlightGuard(Gauge);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
