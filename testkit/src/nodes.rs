//! The broker nodes `make test` started, through `rabbitmq/node.sh`: how many there are,
//! and running its commands (rabbitmqctl, rabbitmq-queues, ...) against them.

use std::path::PathBuf;
use std::time::Duration;

use crate::deployment::amqp_urls;

/// `rabbitmq/node.sh` of this checkout.
pub fn node_script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../rabbitmq/node.sh"))
}

/// Nodes of the test broker: one URL per node in `AMQP_URL`.
pub fn broker_nodes() -> usize {
    amqp_urls().0.len()
}

/// Runs `rabbitmq/node.sh ARGS...` and returns its standard output; panics when it fails.
pub async fn node_sh(args: &[&str]) -> String {
    let run = tokio::process::Command::new(node_script())
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("rabbitmq/node.sh {} timed out", args.join(" ")))
        .expect("rabbitmq/node.sh runs");
    assert!(
        out.status.success(),
        "rabbitmq/node.sh {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `node_sh` with `--formatter json`, parsed.
pub async fn node_sh_json(args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--formatter", "json"]);
    let out = node_sh(&all).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}
