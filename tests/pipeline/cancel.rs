//! `DELETE /api/v1/job/{id}` in every state, and the control stream that carries cancels
//! to consumers (also to one started after the cancel).

use std::time::Duration;

use imagejobs_testkit::*;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

async fn status(ing: &TestIngress, id: &str) -> String {
    let (_, job) = ing.get_json(&format!("/api/v1/job/{id}"), 1).await;
    job["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_queued_job_cancelled_before_any_consumer_starts_never_reaches_the_worker() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let cancelled = ing.submit_id(&png(30, 30)).await;
    let kept = ing.submit_id(&png(31, 30)).await;

    assert_eq!(
        ing.cancel(&cancelled, 2).await.0,
        404,
        "another tenant's job"
    );
    let (code, body) = ing.cancel(&cancelled, 1).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body, json!({ "id": cancelled, "status": "CANCELLED" }));
    assert_eq!(status(&ing, &cancelled).await, "CANCELLED", "final at once");
    let (code, body) = ing.cancel(&cancelled, 1).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], 409);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(ing.cancel(&unknown, 1).await.0, 404);

    // A consumer started now reads the cancel before it takes a job; the job behind the
    // cancelled one succeeding shows that it went past it.
    let consumer = p.consumer().await;
    let done = ing.wait_terminal(&kept, 1, T).await;
    assert_eq!(done["status"], "SUCCESS");
    eventually(T, "both deliveries acked", || async {
        (consumer.acked() == 2).then_some(())
    })
    .await;
    let stats = p.stubs.stats();
    assert_eq!(
        stats.job_posts_for(&cancelled),
        0,
        "the worker never saw it"
    );
    assert_eq!(stats.blob_puts_for(&cancelled), 0);
    assert_eq!(status(&ing, &cancelled).await, "CANCELLED");
    let (_conn, ch) = p.deployment.channel().await;
    assert_eq!(queue_len(&ch, &p.deployment.topology.dead_queue()).await, 0);
    assert_eq!(jobs_len(&ch, &p.deployment.topology).await, 0);

    // Every replica, also one started later, shows it CANCELLED.
    let replica = p.ingress().await;
    assert_eq!(status(&replica, &cancelled).await, "CANCELLED");
    let statuses = statuses_of(&p.deployment, &cancelled).await;
    assert!(
        statuses.iter().all(|s| s == "QUEUED" || s == "CANCELLED"),
        "{statuses:?}"
    );
    replica.stop().await;
    consumer.stop().await;
    ing.stop().await;
}

#[tokio::test]
async fn a_running_job_is_stopped_and_reported_cancelled() {
    let p = Pipeline::with_stubs(|s| s.running_ms = 60_000).await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let id = ing.submit_id(&png(30, 30)).await;
    eventually(T, "the worker running the job", || async {
        (p.stubs.stats().job_posts_for(&id) == 1 && status(&ing, &id).await == "RUNNING")
            .then_some(())
    })
    .await;
    let (code, body) = ing.cancel(&id, 1).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        json!({ "id": id, "status": "RUNNING", "cancel_requested": true })
    );
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "CANCELLED", "{job}");
    eventually(T, "the delivery acked", || async {
        (consumer.acked() == 1).then_some(())
    })
    .await;
    assert_eq!(ing.cancel(&id, 1).await.0, 409);
    consumer.stop().await;
    ing.stop().await;
}

#[tokio::test]
async fn a_retrying_job_cancelled_does_not_come_back() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    p.stubs.faults().set_forced_status(Some(503));
    let id = ing.submit_id(&png(30, 30)).await;
    eventually(T, "the job RETRYING", || async {
        (status(&ing, &id).await == "RETRYING").then_some(())
    })
    .await;
    p.stubs.faults().set_forced_status(None);
    let posts = p.stubs.stats().job_posts_for(&id);
    let (code, body) = ing.cancel(&id, 1).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    // Its next attempt comes back from the delay queue to a consumer that knows.
    eventually(T, "the next attempt acked", || async {
        (consumer.acked() == 2).then_some(())
    })
    .await;
    assert_eq!(
        p.stubs.stats().job_posts_for(&id),
        posts,
        "no further attempt ran"
    );
    assert_eq!(status(&ing, &id).await, "CANCELLED");
    consumer.stop().await;
    ing.stop().await;
}

/// Cancels sent while jobs finish: whatever each DELETE answered, every job ends with one
/// final status that every replica agrees on, and it is the one the answer promised.
#[tokio::test]
async fn a_cancel_racing_completion_has_one_final_status() {
    let p = Pipeline::with_stubs(|s| s.running_ms = 40).await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let mut answers = vec![];
    for i in 0..12u64 {
        let id = ing.submit_id(&png(20, 20)).await;
        // Spread the cancels over the job's life: before, while and after it runs.
        tokio::time::sleep(Duration::from_millis(i * 8)).await;
        let (code, body) = ing.cancel(&id, 1).await;
        answers.push((id, code, body));
    }
    let replica = p.ingress().await;
    for (id, code, body) in &answers {
        let job = ing.wait_terminal(id, 1, T).await;
        let end = job["status"].as_str().unwrap();
        let other = replica.wait_terminal(id, 1, T).await;
        assert_eq!(other["status"], end, "replicas agree on {id}");
        match (code, body["status"].as_str()) {
            (202, Some("CANCELLED")) => assert_eq!(end, "CANCELLED", "{id}"),
            (202, Some("RUNNING")) => assert!(matches!(end, "CANCELLED" | "SUCCESS"), "{id}"),
            (409, _) => assert_eq!(end, "SUCCESS", "{id}: {body}"),
            other => panic!("unexpected answer {other:?} {body}"),
        }
        let finals: Vec<String> = statuses_of(&p.deployment, id)
            .await
            .into_iter()
            .filter(|s| s == "SUCCESS" || s == "FAILED")
            .collect();
        assert!(finals.len() <= 1, "{id}: {finals:?}");
    }
    replica.stop().await;
    consumer.stop().await;
    ing.stop().await;
}

/// A consumer that lost the broker while a cancel was published reads it when it is back
/// (its control stream follower resumes after its offset) before it runs the job.
#[tokio::test]
async fn a_cancel_published_while_a_consumer_is_cut_off_is_read_when_it_is_back() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let proxy = Proxy::start(&p.deployment.urls.0[0]).await;
    let consumer = p.consumer_with(|c| c.broker.amqp_url = proxy.urls()).await;
    let warm = ing.submit_id(&png(10, 10)).await;
    assert_eq!(ing.wait_terminal(&warm, 1, T).await["status"], "SUCCESS");
    proxy.cut();
    let id = ing.submit_id(&png(11, 10)).await;
    assert_eq!(ing.cancel(&id, 1).await.0, 202);
    proxy.restore();
    let after = ing.submit_id(&png(12, 10)).await;
    assert_eq!(ing.wait_terminal(&after, 1, T).await["status"], "SUCCESS");
    eventually(T, "the cancelled job's delivery acked", || async {
        (consumer.acked() == 3).then_some(())
    })
    .await;
    assert_eq!(p.stubs.stats().job_posts_for(&id), 0);
    assert_eq!(status(&ing, &id).await, "CANCELLED");
    consumer.stop().await;
    ing.stop().await;
}
