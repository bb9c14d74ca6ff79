//! Index snapshots and retention (README.md, "The job index"), against the real stack: a
//! replica that restarts from its own snapshot, one that starts from the shared one,
//! snapshots that must be ignored (truncated, corrupt, another prefix, another version,
//! empty, noise), one whose offsets the stream no longer holds, and finished jobs leaving
//! the index. Every replica that loads a snapshot is compared, job by job and page by page,
//! with one that replayed the whole stream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use imagejobs::index::snapshot::VERSION_AT;
use imagejobs::index::JobIndex;
use imagejobs::ingress::IngressConfig;
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);
/// Present once a snapshot was loaded at start-up.
const LOADED: &str = "imagejobs_index_snapshot_duration_seconds{op=\"load\"}";

fn scratch(p: &Pipeline, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imagejobs-snap-{}-{name}", p.deployment.prefix));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn snapshots_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "snap"));
    found.sort();
    found
}

/// One sample of a metric of `ing`'s `/metrics` (the first line starting with `name `).
async fn metric(ing: &TestIngress, name: &str) -> Option<f64> {
    let text = ing
        .http
        .get(format!("{}/metrics", ing.url))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// With snapshots in `dir`, written only at shutdown (the interval is long).
fn snapshotting(dir: &Path) -> impl FnOnce(&mut IngressConfig) {
    let dir = dir.to_owned();
    move |c: &mut IngressConfig| {
        c.index_snapshot_dir = Some(dir);
        c.index_snapshot_interval = Duration::from_secs(3600);
    }
}

/// Submits `n` jobs through `ing` and waits until each has ended.
async fn run_jobs(ing: &TestIngress, n: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(ing.submit_as(&png(8 + i, 6), 1 + i64::from(i % 3)).await);
    }
    for (i, id) in ids.iter().enumerate() {
        ing.wait_terminal(id, 1 + (i as i64 % 3), T).await;
    }
    ids
}

/// Every job and every tenant's first page answer the same on both replicas.
async fn same_answers(a: &TestIngress, b: &TestIngress, ids: &[String]) {
    for (i, id) in ids.iter().enumerate() {
        let tenant = 1 + (i as i64 % 3);
        let path = format!("/api/v1/job/{id}");
        assert_eq!(
            a.get_json(&path, tenant).await,
            b.get_json(&path, tenant).await,
            "job {id}"
        );
    }
    for tenant in 1..=3 {
        let path = "/api/v1/jobs?limit=1000";
        let (sa, la) = a.get_json(path, tenant).await;
        assert_eq!(sa, 200);
        assert_eq!(
            (sa, la),
            b.get_json(path, tenant).await,
            "tenant {tenant}'s list"
        );
    }
}

#[tokio::test]
async fn a_restarted_replica_replays_only_what_came_after_its_snapshot() {
    let p = Pipeline::new().await;
    let dir = scratch(&p, "own");
    let a = p.ingress_with(snapshotting(&dir)).await;
    let _consumer = p.consumer().await;
    let mut ids = run_jobs(&a, 12).await;
    a.stop().await;
    let written = snapshots_in(&dir);
    assert_eq!(
        written.len(),
        1,
        "a graceful stop writes one snapshot: {written:?}"
    );

    // What happens after the snapshot, seen by a replica that replays everything.
    let full = p.ingress().await;
    ids.extend(run_jobs(&full, 9).await);
    let (code, _) = full.cancel(&ids[0], 1).await;
    assert_eq!(code, 409, "a finished job is not cancelled");

    let restarted = p.ingress_with(snapshotting(&dir)).await;
    assert!(
        metric(&restarted, LOADED).await.is_some(),
        "the snapshot was loaded"
    );
    let tail = metric(&restarted, "imagejobs_index_events_applied_total").await;
    let all = metric(&full, "imagejobs_index_events_applied_total").await;
    let (tail, all) = (tail.unwrap_or(f64::MAX), all.unwrap_or(0.0));
    assert!(
        tail < all && tail > 0.0,
        "replayed {tail} events after the snapshot, against {all} from the start"
    );
    same_answers(&restarted, &full, &ids).await;
}

#[tokio::test]
async fn a_new_replica_starts_from_the_shared_snapshot() {
    let p = Pipeline::new().await;
    let shared = reqwest::Url::parse(&format!("{}/blob", p.stubs.blob_url)).unwrap();
    let dir = scratch(&p, "writer");
    let url = shared.clone();
    let a = p
        .ingress_with(move |c| {
            snapshotting(&dir)(c);
            c.index_snapshot_url = Some(url);
        })
        .await;
    let _consumer = p.consumer().await;
    let ids = run_jobs(&a, 10).await;
    let written = metric(&a, "imagejobs_index_events_applied_total").await;
    assert!(written.is_some());
    a.stop().await;

    // An empty disk: only the shared snapshot to start from.
    let empty = scratch(&p, "newcomer");
    let url = shared.clone();
    let newcomer = p
        .ingress_with(move |c| {
            snapshotting(&empty)(c);
            c.index_snapshot_url = Some(url);
        })
        .await;
    assert!(
        metric(&newcomer, LOADED).await.is_some(),
        "the shared snapshot was loaded"
    );
    let full = p.ingress().await;
    same_answers(&newcomer, &full, &ids).await;
}

/// A snapshot file of `bytes`, under the name the ingress looks for.
fn plant(dir: &Path, prefix: &str, bytes: &[u8]) {
    std::fs::write(dir.join(format!("{prefix}.{:020}.snap", 5)), bytes).unwrap();
}

#[tokio::test]
async fn snapshots_that_are_not_whole_or_not_ours_are_ignored_for_a_full_replay() {
    let p = Pipeline::new().await;
    let prefix = p.deployment.prefix.clone();
    let dir = scratch(&p, "good");
    let a = p.ingress_with(snapshotting(&dir)).await;
    let _consumer = p.consumer().await;
    let ids = run_jobs(&a, 6).await;
    a.stop().await;
    let good = std::fs::read(&snapshots_in(&dir)[0]).unwrap();
    assert!(good.len() > 64, "a snapshot of {} bytes", good.len());

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let mut version = good.clone();
    version[VERSION_AT] ^= 0x7f;
    let noise: Vec<u8> = (0..good.len()).map(|i| (i * 7 + 3) as u8).collect();
    // A whole snapshot, of another deployment.
    let mut foreign = Vec::new();
    JobIndex::new()
        .write_snapshot(&mut foreign, "someone-else", 5)
        .unwrap();
    let full = p.ingress().await;
    for (case, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("cut before its checksum", good[..good.len() - 1].to_vec()),
        ("a flipped byte", flipped),
        ("another format version", version),
        ("another prefix", foreign),
        ("empty", Vec::new()),
        ("noise", noise),
    ] {
        let dir = scratch(&p, "bad");
        plant(&dir, &prefix, &bytes);
        let ing = p.ingress_with(snapshotting(&dir)).await;
        assert_eq!(metric(&ing, LOADED).await, None, "{case}: not loaded");
        same_answers(&ing, &full, &ids).await;
        ing.stop().await;
    }
}

#[tokio::test]
async fn a_snapshot_the_stream_no_longer_covers_is_dropped_for_a_full_replay() {
    let p = Pipeline::new().await;
    let dir = scratch(&p, "stale");
    let a = p.ingress_with(snapshotting(&dir)).await;
    let consumer = p.consumer().await;
    let ids = run_jobs(&a, 4).await;
    a.stop().await;
    consumer.stop().await;
    assert_eq!(snapshots_in(&dir).len(), 1);
    // The stream is gone and made anew (as after its retention dropped everything the
    // snapshot was followed by): its offsets start again.
    let (conn, ch) = p.deployment.channel().await;
    ch.queue_delete(
        format!("{}.events", p.deployment.prefix).into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
    let ing = p.ingress_with(snapshotting(&dir)).await;
    for (i, id) in ids.iter().enumerate() {
        let tenant = 1 + (i as i64 % 3);
        let (code, _) = ing.get_json(&format!("/api/v1/job/{id}"), tenant).await;
        assert_eq!(
            code, 404,
            "the stream no longer knows {id}, and neither does the index"
        );
    }
}

#[tokio::test]
async fn finished_jobs_leave_after_the_retention_and_unfinished_ones_stay() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.index_retention = Duration::from_secs(2))
        .await;
    let consumer = p.consumer().await;
    let done = ing.submit_id(&png(9, 9)).await;
    assert_eq!(ing.wait_terminal(&done, 1, T).await["status"], "SUCCESS");
    consumer.stop().await;
    let waiting = ing.submit_id(&png(7, 7)).await;
    eventually(T, "the finished job to leave the index", || async {
        let (code, _) = ing.get_json(&format!("/api/v1/job/{done}"), 1).await;
        (code == 404).then_some(())
    })
    .await;
    // Well past the retention, the queued job is still known.
    let (code, job) = ing.get_json(&format!("/api/v1/job/{waiting}"), 1).await;
    assert_eq!((code, job["status"].as_str()), (200, Some("QUEUED")));
    let (_, page) = ing.get_json("/api/v1/jobs", 1).await;
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .map(|a| a.iter().filter_map(|j| j["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, vec![waiting.as_str()]);
}
