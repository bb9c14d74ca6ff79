//! `GET /api/v1/job/{id}/events` and `GET /api/v1/jobs/events` (server-sent events).

use std::time::Duration;

use imagejobs::sse::{SseEvent, SseStream};
use imagejobs_testkit::*;
use serde_json::Value;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(20);

async fn open(ing: &TestIngress, path: &str, last_id: Option<&str>) -> SseStream {
    let mut req = ing
        .http
        .get(format!("{}{path}", ing.url))
        .bearer_auth(token(1, 1));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.expect("stream opened");
    assert_eq!(resp.status(), 200, "{path}");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    SseStream::new(resp)
}

/// The next event within `T`; `None` when the stream ended.
async fn next(s: &mut SseStream) -> Option<SseEvent> {
    tokio::time::timeout(T, s.next())
        .await
        .expect("an event or the end within the deadline")
        .map(|e| e.expect("a well-formed stream"))
}

fn job_of(e: &SseEvent) -> Value {
    assert_eq!(e.event, "status", "{e:?}");
    serde_json::from_str(&e.data).expect("job JSON")
}

#[tokio::test]
async fn a_jobs_events_come_in_order_and_end_after_its_final_status() {
    let p = Pipeline::with_stubs(|s| s.running_ms = 300).await;
    let ing = p.ingress().await;
    let id = ing.submit_id(&png(40, 30)).await;
    let mut s = open(&ing, &format!("/api/v1/job/{id}/events"), None).await;
    let first = next(&mut s).await.expect("the current state at once");
    assert_eq!(job_of(&first)["status"], "QUEUED");
    assert_eq!(job_of(&first)["id"], id.as_str());
    let consumer = p.consumer().await;
    let mut seen = vec![first];
    while let Some(e) = next(&mut s).await {
        seen.push(e);
    }
    let ended = Instant::now();
    let statuses: Vec<String> = seen
        .iter()
        .map(|e| job_of(e)["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["QUEUED", "RUNNING", "SUCCESS"], "{seen:?}");
    let ids: Vec<u64> = seen
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    assert!(job_of(&seen[2])["payload_location"].is_string());
    assert!(ended.elapsed() < Duration::from_secs(1));

    // A client that saw the end and comes back gets nothing more and is closed at once.
    let last = seen[2].id.clone();
    let mut again = open(&ing, &format!("/api/v1/job/{id}/events"), last.as_deref()).await;
    assert!(next(&mut again).await.is_none());
    // Unknown ids and other tenants' jobs are 404s, as everywhere.
    let r = ing
        .http
        .get(format!("{}/api/v1/job/{id}/events", ing.url))
        .bearer_auth(token(2, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    consumer.stop().await;
    ing.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.sse_heartbeat = Duration::from_secs(1))
        .await;
    let id = ing.submit_id(&png(10, 10)).await;
    let mut s = open(&ing, &format!("/api/v1/job/{id}/events"), None).await;
    assert_eq!(job_of(&next(&mut s).await.unwrap())["status"], "QUEUED");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.comments < 2 {
        assert!(Instant::now() < deadline, "two heartbeats within 10 s");
        // Reading blocks until something comes; the comments are counted as they do.
        let _ = tokio::time::timeout(Duration::from_millis(200), s.next()).await;
    }
    ing.stop().await;
}

#[tokio::test]
async fn a_client_resumes_across_an_ingress_restart_and_misses_nothing() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let port = ing.addr.port();
    let id = ing.submit_id(&png(50, 50)).await;
    let path = format!("/api/v1/job/{id}/events");
    let mut s = open(&ing, &path, None).await;
    let queued = next(&mut s).await.unwrap();
    assert_eq!(job_of(&queued)["status"], "QUEUED");

    // The ingress goes away: the stream ends (it is closed at shutdown, not left hanging).
    ing.stop().await;
    assert!(next(&mut s).await.is_none());
    // The job runs to its end while no ingress is up.
    let consumer = p.consumer().await;
    eventually(T, "the job to be acked", || async {
        (consumer.acked() == 1).then_some(())
    })
    .await;

    // A new ingress on the same address: the client reconnects with the id it last saw
    // and gets the job's final state, then the end.
    let back = p.ingress_with(|c| c.port = port).await;
    let mut s = open(&back, &path, queued.id.as_deref()).await;
    let last = next(&mut s).await.expect("what changed while away");
    let job = job_of(&last);
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert!(last.id.unwrap().parse::<u64>().unwrap() > queued.id.unwrap().parse().unwrap());
    assert!(next(&mut s).await.is_none());
    consumer.stop().await;
    back.stop().await;
}

#[tokio::test]
async fn the_tenant_stream_carries_every_change_of_the_tenants_jobs_only() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let mut s = open(&ing, "/api/v1/jobs/events", None).await;
    let mine = ing.submit_id(&png(20, 20)).await;
    let _theirs = ing.submit_as(&png(21, 20), 2).await;
    let consumer = p.consumer().await;
    let mut statuses = vec![];
    while statuses.last().map(String::as_str) != Some("SUCCESS") {
        let job = job_of(&next(&mut s).await.expect("the stream stays open"));
        assert_eq!(job["id"], mine.as_str(), "only this tenant's jobs: {job}");
        statuses.push(job["status"].as_str().unwrap().to_owned());
    }
    // Each event is the job as it is when the stream reads it: a change that came
    // with the next one in a batch may show as that one (twice), never out of order.
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("QUEUED"),
        "{statuses:?}"
    );
    let rank = |s: &str| {
        ["QUEUED", "RUNNING", "SUCCESS"]
            .iter()
            .position(|x| *x == s)
    };
    assert!(
        statuses.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{statuses:?}"
    );
    assert!(ing.state.index.watchers() >= 1);
    drop(s);
    eventually(T, "the watcher to be gone", || async {
        (ing.state.index.watchers() == 0).then_some(())
    })
    .await;
    consumer.stop().await;
    ing.stop().await;
}

#[tokio::test]
async fn event_streams_are_capped() {
    let p = Pipeline::new().await;
    let ing = p.ingress_with(|c| c.max_watchers = 1).await;
    let _held = open(&ing, "/api/v1/jobs/events", None).await;
    let r = ing
        .call(reqwest::Method::GET, "/api/v1/jobs/events", 1)
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    ing.stop().await;
}
