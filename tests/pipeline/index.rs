//! The job index and status API: tenant isolation, restarts, replicas.

use std::time::Duration;

use serde_json::Value;

use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(20);

async fn status_of(ing: &TestIngress, id: &str, tenant: i64) -> (u16, Value) {
    let resp = ing
        .http
        .get(format!("{}/api/v1/job/{id}/status", ing.url))
        .bearer_auth(token(tenant, 1))
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn status_api_with_tenant_isolation() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let img = png(120, 80);
    let id = ing.submit_id(&img).await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS");
    for key in [
        "id",
        "tenant_id",
        "client_id",
        "status",
        "payload_location",
        "payload_size",
        "content_type",
        "attempts",
        "created_at",
        "updated_at",
    ] {
        assert!(job.get(key).is_some(), "{key} missing in {job}");
    }
    assert!(
        job.get("error").is_none(),
        "absent values are omitted: {job}"
    );
    let loc = job["payload_location"].as_str().unwrap();
    let fetched = reqwest::get(loc).await.unwrap();
    assert_eq!(fetched.status(), 200, "payload_location is fetchable");
    assert!(image::load_from_memory(&fetched.bytes().await.unwrap()).is_ok());

    assert_eq!(
        status_of(&ing, &id, 1).await,
        (200, serde_json::json!({"status": "SUCCESS"}))
    );
    let (code, body) = status_of(&ing, &id, 2).await;
    let (code_unknown, body_unknown) = status_of(&ing, &uuid::Uuid::new_v4().to_string(), 2).await;
    assert_eq!((code, code_unknown), (404, 404));
    assert_eq!(
        body, body_unknown,
        "another tenant's job looks exactly like an unknown one"
    );
    assert_eq!(ing.get_job(&id, 2).await.status(), 404);
    assert_eq!(ing.get_job("not-a-uuid", 1).await.status(), 404);
    let no_token = ing
        .http
        .get(format!("{}/api/v1/job/{id}", ing.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);

    consumer.stop().await;
}

#[tokio::test]
async fn a_restarted_ingress_and_a_second_replica_know_every_job() {
    let p = Pipeline::with_stubs(|c| c.running_ms = 100).await;
    let first = p.ingress().await;
    let consumer = p.consumer().await;
    let img = png(20, 20);
    let mut ids = vec![];
    for _ in 0..10 {
        ids.push(first.submit_id(&img).await);
    }
    // A replica that starts while jobs are running catches up and then follows.
    let second = p.ingress().await;
    // Restart the first one under load: jobs in flight while it is away and comes back.
    first.stop().await;
    let restarted = p.ingress().await;
    for id in &ids {
        let (code, _) = status_of(&restarted, id, 1).await;
        assert_eq!(
            code, 200,
            "the restarted ingress answers for {id} as soon as it is ready"
        );
    }
    ids.extend(futures::future::join_all((0..10).map(|_| restarted.submit_id(&img))).await);
    for id in &ids {
        let a = second.wait_terminal(id, 1, T).await;
        let b = restarted.wait_terminal(id, 1, T).await;
        assert_eq!(a, b, "replicas agree on {id}");
        assert_eq!(a["status"], "SUCCESS");
    }
    consumer.stop().await;
    // A job still queued when an ingress restarts is QUEUED after it.
    let queued = restarted.submit_id(&img).await;
    restarted.stop().await;
    let again = p.ingress().await;
    assert_eq!(status_of(&again, &queued, 1).await.1["status"], "QUEUED");
    assert_eq!(status_of(&again, &ids[0], 1).await.1["status"], "SUCCESS");
    second.stop().await;
}
