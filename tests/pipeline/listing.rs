//! `GET /api/v1/jobs` and `GET /api/v1/job/{id}/result` against the real stack.

use std::time::Duration;

use imagejobs_testkit::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn listing_is_newest_first_filtered_paginated_and_per_tenant() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let mut done = vec![];
    for i in 0..3 {
        let id = ing.submit_id(&png(20 + i, 20)).await;
        assert_eq!(ing.wait_terminal(&id, 1, T).await["status"], "SUCCESS");
        done.push(id);
    }
    consumer.stop().await;
    let mut queued = vec![];
    for i in 0..2 {
        queued.push(ing.submit_id(&png(30 + i, 20)).await);
    }
    let other = ing.submit_as(&png(40, 20), 2).await;

    // Newest first, across pages of two, without gaps or repeats.
    let mut all_newest_first: Vec<String> = done.iter().chain(&queued).cloned().collect();
    all_newest_first.reverse();
    let (code, page1) = ing.get_json("/api/v1/jobs?limit=2", 1).await;
    assert_eq!(code, 200, "{page1}");
    let next = page1["next"].as_str().expect("more pages").to_owned();
    let (_, page2) = ing
        .get_json(&format!("/api/v1/jobs?limit=2&after={next}"), 1)
        .await;
    let next = page2["next"].as_str().expect("a third page").to_owned();
    let (_, page3) = ing
        .get_json(&format!("/api/v1/jobs?limit=2&after={next}"), 1)
        .await;
    assert!(
        page3.get("next").is_none(),
        "the last page has no next: {page3}"
    );
    let walked: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| ids(p))
        .collect();
    assert_eq!(walked, all_newest_first);
    let created: Vec<&str> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["created_at"].as_str().unwrap())
        .collect();
    assert!(created[0] >= created[1], "{created:?}");
    // Every job is shown as GET /api/v1/job/{id} shows it.
    let (_, one) = ing.get_json(&format!("/api/v1/job/{}", done[0]), 1).await;
    assert_eq!(page3["jobs"][0], one);

    // Filters.
    let (_, succeeded) = ing.get_json("/api/v1/jobs?status=SUCCESS", 1).await;
    assert_eq!(
        ids(&succeeded),
        done.iter().rev().cloned().collect::<Vec<_>>()
    );
    let (_, waiting) = ing
        .get_json("/api/v1/jobs?status=QUEUED&limit=1000", 1)
        .await;
    assert_eq!(
        ids(&waiting),
        queued.iter().rev().cloned().collect::<Vec<_>>()
    );

    // Tenants see their own jobs only.
    let (_, theirs) = ing.get_json("/api/v1/jobs", 2).await;
    assert_eq!(ids(&theirs), vec![other.clone()]);
    let (_, nobody) = ing.get_json("/api/v1/jobs", 3).await;
    assert_eq!(nobody, serde_json::json!({ "jobs": [] }));

    // Bad queries are 400s of the documented shape; no token is a 401.
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "status=DONE",
        "after=zzz",
    ] {
        let (code, body) = ing.get_json(&format!("/api/v1/jobs?{bad}"), 1).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["code"], 400);
        assert!(
            body["details"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    let anon = ing
        .http
        .get(format!("{}/api/v1/jobs", ing.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    // Another replica, started now, lists the same from the stream.
    let replica = p.ingress().await;
    let (_, again) = replica.get_json("/api/v1/jobs?limit=1000", 1).await;
    assert_eq!(ids(&again), all_newest_first);
    replica.stop().await;
    ing.stop().await;
}

#[tokio::test]
async fn results_stream_the_thumbnail_to_the_jobs_tenant_only() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let id = ing.submit_id(&png(300, 200)).await;
    let result = format!("/api/v1/job/{id}/result");
    let r = ing.call(reqwest::Method::GET, &result, 1).await;
    assert_eq!(r.status(), 404, "no result while QUEUED");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 404);

    let consumer = p.consumer().await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS");
    let r = ing.call(reqwest::Method::GET, &result, 1).await;
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("image/"), "{content_type}");
    let bytes = r.bytes().await.unwrap();
    let direct = reqwest::get(job["payload_location"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes, direct, "the blob service's bytes, relayed");
    let thumb = image::load_from_memory(&bytes).expect("an image");
    assert!(thumb.width() < 300, "the thumbnail, not the upload");

    // The dashboard's figures: this tenant's finished job, the empty work queue.
    let (code, stats) = ing.get_json("/api/v1/stats", 1).await;
    assert_eq!(code, 200, "{stats}");
    let completed: u64 = stats["completed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        (completed, stats["bucket_secs"].as_u64()),
        (1, Some(10)),
        "{stats}"
    );
    assert_eq!(stats["completed"].as_array().unwrap().len(), 30);
    assert_eq!(
        (stats["queue_depth"].as_u64(), stats["consumers"].as_u64()),
        (Some(0), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["lanes"], 16, "{stats}");
    assert_eq!(
        stats["backlog"],
        serde_json::json!({"queued": 0, "running": 0, "retrying": 0}),
        "its one job finished: {stats}"
    );
    let (_, theirs) = ing.get_json("/api/v1/stats", 2).await;
    assert!(
        theirs["completed"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n == 0),
        "{theirs}"
    );

    let r = ing.call(reqwest::Method::GET, &result, 2).await;
    assert_eq!(r.status(), 404, "another tenant's result");
    let unknown = format!("/api/v1/job/{}/result", uuid::Uuid::new_v4());
    assert_eq!(
        ing.call(reqwest::Method::GET, &unknown, 1).await.status(),
        404
    );

    // The blob service gone: 502, not a hang or a 500.
    p.stubs.faults().set_error_rate(1.0);
    let r = ing.call(reqwest::Method::GET, &result, 1).await;
    assert_eq!(r.status(), 502);
    p.stubs.faults().set_error_rate(0.0);
    consumer.stop().await;
    ing.stop().await;
}
