//! The broker in a resource alarm (it blocks publishing connections without failing their
//! publishes). A test binary of its own: an alarm blocks every publisher of the broker,
//! so these tests must not run beside the others (cargo runs test binaries one after the
//! other), and they run one at a time here.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use imagejobs_testkit::nodes::node_sh;
use imagejobs_testkit::*;
use tokio::sync::Mutex;

const T: Duration = Duration::from_secs(30);

/// One alarm at a time.
static ALARM: Mutex<()> = Mutex::const_new(());

/// A memory alarm on node 1 until dropped (taken back from a thread of its own).
struct MemoryAlarm;

impl MemoryAlarm {
    /// Raises it and waits until the broker reports it.
    async fn raise() -> MemoryAlarm {
        node_sh(&["ctl", "set_vm_memory_high_watermark", "absolute", "1"]).await;
        eventually(T, "the memory alarm", || async {
            let out = node_sh(&["diagnostics", "-q", "alarms"]).await;
            out.contains("Memory alarm").then_some(())
        })
        .await;
        MemoryAlarm
    }

    /// Raises it once the worker has started the pipeline's one job, and returns once the
    /// worker has ended it: the job's outcome is then published during the alarm.
    async fn around_the_end(p: &Pipeline) -> MemoryAlarm {
        let stubs = &p.stubs;
        eventually(T, "the worker to start the job", || async {
            (stubs.stats().jobs_started >= 1).then_some(())
        })
        .await;
        let alarm = MemoryAlarm::raise().await;
        eventually(T, "the job to end at the worker", || async {
            (stubs.stats().jobs_succeeded >= 1).then_some(())
        })
        .await;
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let cleared = std::thread::spawn(|| {
            std::process::Command::new(nodes::node_script())
                .args(["ctl", "set_vm_memory_high_watermark", "0.4"])
                .status()
        });
        let _ = cleared.join();
    }
}

#[tokio::test]
async fn a_blocked_broker_gets_a_quick_503_and_the_ingress_recovers() {
    let _one = ALARM.lock().await;
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let img = png(8, 8);
    assert_eq!(ing.submit_raw(&img).await.status(), 202);

    let alarm = MemoryAlarm::raise().await;
    // The broker tells a connection it is blocked when it next publishes: that submit is
    // the first 503, at once rather than after the confirm timeout.
    let started = Instant::now();
    let first = ing.submit_raw(&img).await;
    assert_eq!(first.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "503 at once: {:?}",
        started.elapsed()
    );
    let ready = eventually(T, "/readyz to report the alarm", || async {
        let r = ing
            .http
            .get(format!("{}/readyz", ing.url))
            .send()
            .await
            .ok()?;
        let code = r.status();
        let text = r.text().await.ok()?;
        (code == 503 && text.contains("blocks publishers")).then_some(text)
    })
    .await;
    assert!(ready.contains("alarm"), "{ready}");
    let started = Instant::now();
    let resp = ing.submit_raw(&img).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "503 at once, not after the confirm timeout: {:?}",
        started.elapsed()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], 503);
    assert!(
        body["details"].as_str().unwrap().contains("memory or disk"),
        "{body}"
    );

    drop(alarm);
    ing.wait_ready().await;
    assert_eq!(ing.submit_raw(&img).await.status(), 202);
}

#[tokio::test]
async fn a_consumer_waits_out_a_short_alarm_and_loses_nothing() {
    let _one = ALARM.lock().await;
    let p = Pipeline::with_stubs(|c| c.running_ms = 1500).await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let id = ing.submit_id(&png(12, 12)).await;
    // The job ends during the alarm: its SUCCESS waits for the broker.
    let alarm = MemoryAlarm::around_the_end(&p).await;
    // Only the consumer publishes now (its SUCCESS): a blocked connection is its.
    eventually(
        T,
        "the consumer's publish to be held by the broker",
        || async {
            let conns = nodes::node_sh_json(&["ctl", "-q", "list_connections", "state"]).await;
            conns
                .as_array()?
                .iter()
                .any(|c| c["state"] == "blocked")
                .then_some(())
        },
    )
    .await;
    drop(alarm);
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    eventually(T, "the delivery acked", || async {
        (consumer.acked() >= 1).then_some(())
    })
    .await;
}

/// An outcome whose confirm does not come within the publish timeout (the broker holds the
/// publish for as long as the alarm lasts) is published again, the delivery held meanwhile:
/// returned to the queue instead, the job would run a second time beside an outcome that
/// lands once the alarm clears, and could end otherwise.
#[tokio::test]
async fn an_outcome_held_past_the_confirm_timeout_is_published_again_not_run_again() {
    let _one = ALARM.lock().await;
    let p = Pipeline::with_stubs(|c| c.running_ms = 1500).await;
    let ing = p.ingress().await;
    let consumer = p.consumer_with(|c| c.metrics_port = Some(0)).await;
    let metrics = format!("http://{}/metrics", consumer.metrics_addr.unwrap());
    let id = ing.submit_id(&png(12, 12)).await;
    let alarm = MemoryAlarm::around_the_end(&p).await;
    // The alarm stays until the first publish of the SUCCESS timed out and it went again.
    eventually(T, "the consumer to publish its outcome again", || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| l.starts_with(r#"imagejobs_retries_total{tier="outcome"}"#))
            .then_some(())
    })
    .await;
    drop(alarm);
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    eventually(T, "the delivery acked", || async {
        (consumer.acked() >= 1).then_some(())
    })
    .await;
    assert_eq!(
        consumer.requeued(),
        0,
        "the delivery was held, not returned"
    );
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("imagejobs_deliveries_total 1\n"),
        "delivered once: {text}"
    );
}
