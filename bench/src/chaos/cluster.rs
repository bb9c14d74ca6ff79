//! The broker nodes under test, driven through `rabbitmq/node.sh` (the script that started
//! them): stop and start a node, find a queue's leader, raise and clear resource alarms.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::Command;

/// How long one node.sh command may take (a node start waits for the cluster).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(150);

pub struct Cluster {
    script: PathBuf,
    /// The virtual host of the deployment's queues.
    vhost: String,
    /// Nodes of the deployment, 1-based; whether each runs.
    up: Vec<bool>,
}

impl Cluster {
    pub fn new(script: PathBuf, nodes: usize, vhost: String) -> Cluster {
        Cluster {
            script,
            vhost,
            up: vec![true; nodes.max(1)],
        }
    }

    pub fn nodes(&self) -> usize {
        self.up.len()
    }

    /// A node that runs, for the commands that need one to talk to.
    fn live_node(&self) -> usize {
        self.up.iter().position(|u| *u).map_or(1, |i| i + 1)
    }

    async fn run(&self, args: &[&str], via: Option<usize>) -> anyhow::Result<String> {
        let mut cmd = Command::new("bash");
        if std::env::var_os("CHAOS_TRACE").is_some() {
            cmd.arg("-x");
        }
        cmd.arg(&self.script).args(args).kill_on_drop(true);
        cmd.env(
            "BROKER_NODE",
            via.unwrap_or_else(|| self.live_node()).to_string(),
        );
        let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("rabbitmq/node.sh {} timed out", args.join(" ")))?
            .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "rabbitmq/node.sh {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops node `i` as a machine loss would, but cleanly (`rabbitmqctl stop`).
    pub async fn stop_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.run(&["stop-node", &i.to_string()], None).await?;
        if let Some(u) = self.up.get_mut(i - 1) {
            *u = false;
        }
        Ok(())
    }

    /// Starts node `i` again; returns when it runs and is back in the cluster.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.run(&["start-node", &i.to_string()], None).await?;
        if let Some(u) = self.up.get_mut(i - 1) {
            *u = true;
        }
        Ok(())
    }

    /// The node (1-based) that leads `queue`.
    pub async fn leader_of(&self, queue: &str) -> anyhow::Result<usize> {
        self.leader_of_most(&[queue.to_owned()]).await
    }

    /// The node that leads the most of `queues` (the work queue's lanes spread their
    /// leaders over the nodes).
    pub async fn leader_of_most(&self, queues: &[String]) -> anyhow::Result<usize> {
        let out = self
            .run(
                &[
                    "ctl",
                    "-q",
                    "list_queues",
                    "-p",
                    &self.vhost,
                    "name",
                    "leader",
                    "--formatter",
                    "json",
                ],
                None,
            )
            .await?;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&out).context("reading list_queues' JSON")?;
        let mut led: std::collections::BTreeMap<usize, usize> = Default::default();
        for r in &rows {
            let name = r["name"].as_str().unwrap_or_default();
            if !queues.iter().any(|q| q == name) {
                continue;
            }
            let leader = r["leader"]
                .as_str()
                .with_context(|| format!("{name} has no leader in {out}"))?;
            let node = node_index(leader).with_context(|| format!("which node is {leader}?"))?;
            *led.entry(node).or_default() += 1;
        }
        led.into_iter()
            .max_by_key(|&(node, n)| (n, std::cmp::Reverse(node)))
            .map(|(node, _)| node)
            .with_context(|| format!("none of {queues:?} in {out}"))
    }

    /// Puts node `i` in a memory alarm (`on`) or takes it out.
    pub async fn memory_alarm(&self, i: usize, on: bool) -> anyhow::Result<()> {
        let node = i.to_string();
        let args: &[&str] = if on {
            &[
                "ctl-node",
                &node,
                "set_vm_memory_high_watermark",
                "absolute",
                "1",
            ]
        } else {
            &["ctl-node", &node, "set_vm_memory_high_watermark", "0.4"]
        };
        self.run(args, Some(i)).await.map(drop)
    }

    /// Puts node `i` in a disk alarm (`on`) or takes it out.
    pub async fn disk_alarm(&self, i: usize, on: bool) -> anyhow::Result<()> {
        let node = i.to_string();
        let limit = if on { "1000000GB" } else { "50MB" };
        self.run(&["ctl-node", &node, "set_disk_free_limit", limit], Some(i))
            .await
            .map(drop)
    }

    /// How many members `queue` has (rabbitmq-queues quorum_status), for the report.
    pub async fn quorum_members(&self, queue: &str) -> anyhow::Result<usize> {
        let out = self
            .run(
                &[
                    "queues",
                    "-q",
                    "quorum_status",
                    queue,
                    "--vhost",
                    &self.vhost,
                    "--formatter",
                    "json",
                ],
                None,
            )
            .await?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        Ok(rows.len())
    }
}

/// `imagejobs-<hash>-<i>@localhost` → i.
fn node_index(name: &str) -> Option<usize> {
    let short = name.split('@').next()?;
    short.rsplit('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_give_their_index() {
        assert_eq!(node_index("imagejobs-5698e34d-2@localhost"), Some(2));
        assert_eq!(node_index("nonsense"), None);
    }
}
