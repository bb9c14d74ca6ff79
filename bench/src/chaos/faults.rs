//! The faults of a chaos run (RELIABILITY.md), in the order they are injected, and how each is
//! injected and taken back.

use std::time::Duration;

use tokio::time::Instant;

use imagejobs_stubs::Stubs;
use imagejobs_testkit::try_eventually;

use super::cluster::Cluster;
use super::fleet::Fleet;
use super::load::SharedLedger;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a consumer while the worker runs one of its jobs; start another.
    ConsumerKill,
    /// SIGTERM a consumer (it drains and exits 0); start another.
    ConsumerDrain,
    /// SIGKILL an ingress replica right after it answered a 202; start it again.
    IngressKill,
    /// Stop the single broker node and start it again.
    BrokerRestart,
    /// Stop the node that leads the most of the work queue's lanes; bring it back.
    LeaderNodeStop,
    /// Stop another node (the events stream's leader when that is another one); bring it back.
    OtherNodeStop,
    /// A memory alarm on one node: the cluster blocks publishers.
    MemoryAlarm,
    /// A disk alarm on one node.
    DiskAlarm,
    /// The services answer every request 503 for a while.
    Services503,
    /// The worker keeps one job RUNNING past the consumers' JOB_TIMEOUT_SECS.
    ServiceHang,
    /// The blob store fails the claim check's PUTs during submits: every PUT answered 503,
    /// then every PUT hanging twice the ingress's `BLOB_PUT_TIMEOUT_MS`. The submits by
    /// reference get 503s and are retried (not accepted, so not lost); the consumers'
    /// uploads of the smaller images meet the same store.
    BlobStore,
}

impl Fault {
    /// Whether the broker may take no events while it lasts (so a 202's QUEUED event can
    /// wait for its end).
    pub fn blocks_events(self) -> bool {
        matches!(
            self,
            Fault::BrokerRestart
                | Fault::LeaderNodeStop
                | Fault::OtherNodeStop
                | Fault::MemoryAlarm
                | Fault::DiskAlarm
        )
    }
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::ConsumerKill => "consumer SIGKILL mid-job",
            Fault::ConsumerDrain => "consumer SIGTERM (drain)",
            Fault::IngressKill => "ingress SIGKILL after 202s",
            Fault::BrokerRestart => "broker restart",
            Fault::LeaderNodeStop => "work queue leader's node stopped",
            Fault::OtherNodeStop => "another node stopped",
            Fault::MemoryAlarm => "memory alarm",
            Fault::DiskAlarm => "disk alarm",
            Fault::Services503 => "services answer 503",
            Fault::ServiceHang => "a job hangs past JOB_TIMEOUT",
            Fault::BlobStore => "blob store 503s, then hangs",
        }
    }

    /// Every fault of a run on `nodes` nodes; `short` keeps one of each kind of fault
    /// for the minute-long run of `make test` (the blob store's among them: the claim
    /// check's promise is the one the services' faults do not otherwise reach).
    pub fn schedule(nodes: usize, short: bool) -> Vec<Fault> {
        let broker: &[Fault] = if nodes > 1 {
            &[Fault::LeaderNodeStop, Fault::OtherNodeStop]
        } else {
            &[Fault::BrokerRestart]
        };
        let mut out = vec![Fault::ConsumerKill];
        if !short {
            out.push(Fault::ConsumerDrain);
        }
        out.push(Fault::IngressKill);
        out.extend_from_slice(broker);
        out.push(Fault::MemoryAlarm);
        if !short {
            out.extend([Fault::DiskAlarm, Fault::Services503, Fault::ServiceHang]);
        }
        out.push(Fault::BlobStore);
        out
    }
}

/// One fault as it happened.
#[derive(Clone, Debug)]
pub struct Window {
    pub fault: Fault,
    /// Which process or node it hit.
    pub note: String,
    pub start: Instant,
    /// When the fault was taken back (the process restarted, the alarm cleared).
    pub end: Instant,
}

/// What the faults act on.
pub struct Target<'a> {
    pub fleet: &'a mut Fleet,
    pub cluster: &'a mut Cluster,
    pub stubs: &'a Stubs,
    pub ledger: &'a SharedLedger,
    /// How long a fault is held (an alarm on, a node down, the services failing).
    pub hold: Duration,
    /// The share of requests the services fail outside of the 503 fault.
    pub base_error_rate: f64,
    pub job_timeout: Duration,
    /// The ingresses' `BLOB_PUT_TIMEOUT_MS`.
    pub blob_put_timeout: Duration,
    pub consumers: u32,
    /// The node stopped last, so that the next node stop picks another one.
    pub last_stopped: Option<usize>,
}

impl Target<'_> {
    /// Injects `fault` and takes it back; returns what it hit.
    pub async fn inject(&mut self, fault: Fault) -> anyhow::Result<String> {
        match fault {
            Fault::ConsumerKill => {
                let stubs = self.stubs;
                try_eventually(Duration::from_secs(20), "a job at the worker", || async {
                    let s = stubs.stats();
                    Ok((s.jobs_started > s.jobs_succeeded + s.jobs_failed).then_some(()))
                })
                .await?;
                let mut victim = self
                    .fleet
                    .take_consumer()
                    .ok_or_else(|| anyhow::anyhow!("no consumer to kill"))?;
                let name = victim.name().to_owned();
                victim.signal("KILL").await?;
                victim.wait(Duration::from_secs(10)).await?;
                self.fleet.start_consumer(self.consumers).await?;
                Ok(name)
            }
            Fault::ConsumerDrain => {
                let mut victim = self
                    .fleet
                    .take_consumer()
                    .ok_or_else(|| anyhow::anyhow!("no consumer to stop"))?;
                let name = victim.name().to_owned();
                victim.signal("TERM").await?;
                let code = victim.wait(Duration::from_secs(40)).await?;
                anyhow::ensure!(code == Some(0), "{name} exited with {code:?} after SIGTERM");
                self.fleet.start_consumer(self.consumers).await?;
                Ok(format!("{name}, exit 0"))
            }
            Fault::IngressKill => {
                let ledger = self.ledger;
                let before = ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .accepted
                    .len();
                try_eventually(Duration::from_secs(20), "a 202", || async {
                    let now = ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .accepted
                        .len();
                    Ok((now > before).then_some(()))
                })
                .await?;
                self.fleet.kill_and_restart_ingress(0).await?;
                Ok("ingress replica 1".into())
            }
            Fault::BrokerRestart => {
                self.cluster.stop_node(1).await?;
                tokio::time::sleep(self.hold).await;
                self.cluster.start_node(1).await?;
                Ok("node 1 of 1".into())
            }
            Fault::LeaderNodeStop => {
                let lanes = self.fleet.deployment.topology.job_queues();
                let node = self.cluster.leader_of_most(&lanes).await?;
                self.stop_and_start(node).await?;
                Ok(format!("node {node} of {}", self.cluster.nodes()))
            }
            Fault::OtherNodeStop => {
                let stream = self.fleet.deployment.topology.events_stream();
                let nodes = self.cluster.nodes();
                let mut node = self.cluster.leader_of(&stream).await.unwrap_or(1);
                if Some(node) == self.last_stopped {
                    node = node % nodes + 1;
                }
                self.stop_and_start(node).await?;
                Ok(format!("node {node} of {nodes}"))
            }
            Fault::MemoryAlarm => {
                let node = self.cluster.nodes().min(2);
                self.cluster.memory_alarm(node, true).await?;
                tokio::time::sleep(self.hold).await;
                self.cluster.memory_alarm(node, false).await?;
                Ok(format!("node {node}, {} s", self.hold.as_secs()))
            }
            Fault::DiskAlarm => {
                let node = self.cluster.nodes();
                self.cluster.disk_alarm(node, true).await?;
                tokio::time::sleep(self.hold).await;
                self.cluster.disk_alarm(node, false).await?;
                Ok(format!("node {node}, {} s", self.hold.as_secs()))
            }
            Fault::BlobStore => {
                let faults = self.stubs.faults();
                faults.set_blob_error_rate(1.0);
                tokio::time::sleep(self.hold).await;
                faults.set_blob_error_rate(0.0);
                // Past the ingress's timeout, so every PUT of the window times out there;
                // held at least one timeout long so that some do.
                let hang = self.blob_put_timeout * 2;
                let hanging = self
                    .hold
                    .max(self.blob_put_timeout + Duration::from_secs(1));
                faults.set_blob_hang(hang);
                tokio::time::sleep(hanging).await;
                faults.set_blob_hang(Duration::ZERO);
                Ok(format!(
                    "{} s of PUT 503s, {} s of PUTs hanging {} s (timeout {} s)",
                    self.hold.as_secs(),
                    hanging.as_secs(),
                    hang.as_secs(),
                    self.blob_put_timeout.as_secs()
                ))
            }
            Fault::Services503 => {
                self.stubs.faults().set_error_rate(1.0);
                tokio::time::sleep(self.hold).await;
                self.stubs.faults().set_error_rate(self.base_error_rate);
                Ok(format!("{} s of 503s", self.hold.as_secs()))
            }
            Fault::ServiceHang => {
                let hang = self.job_timeout * 3;
                self.stubs.faults().hang_next(1, hang);
                let stubs = self.stubs;
                try_eventually(Duration::from_secs(20), "a job to hang", || async {
                    Ok((stubs.faults().hangs_left() == 0).then_some(()))
                })
                .await?;
                // Long enough for the consumer to give up on it.
                tokio::time::sleep(self.job_timeout + Duration::from_secs(1)).await;
                Ok(format!("one job RUNNING for {} s", hang.as_secs()))
            }
        }
    }

    async fn stop_and_start(&mut self, node: usize) -> anyhow::Result<()> {
        self.cluster.stop_node(node).await?;
        self.last_stopped = Some(node);
        tokio::time::sleep(self.hold).await;
        self.cluster.start_node(node).await
    }
}
