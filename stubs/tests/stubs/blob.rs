//! The blob service: storing, reading, limits, errors.

use imagejobs_stubs::{Endpoint, StubConfig};

use crate::support::{assert_error_shape, png, spawn};

#[tokio::test]
async fn put_then_get_returns_the_bytes_and_content_type() {
    let t = spawn(StubConfig::default()).await;
    let image = png(40, 30);

    let first = t
        .http
        .put(t.blob("/blob/job-1"))
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(first.status(), 201);
    let body: serde_json::Value = first.json().await.expect("json");
    let location = format!("{}/blob/job-1", t.stubs.blob_url);
    assert_eq!(body["payload_location"], location.as_str());

    // The same id again is a harmless repeat.
    let location_again = t.put_blob("job-1", image.clone(), "image/png").await;
    assert_eq!(location_again, location);

    let got = t.http.get(&location).send().await.expect("GET");
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await.expect("bytes").as_ref(), image.as_slice());

    let (stored, content_type) = t.stubs.blob("job-1").expect("stored");
    assert_eq!(stored.as_ref(), image.as_slice());
    assert_eq!(content_type, "image/png");
    let stats = t.stubs.stats();
    assert_eq!(stats.blob_puts_for("job-1"), 2);
    assert_eq!(stats.endpoint(Endpoint::BlobPut).requests, 2);
    assert_eq!(stats.endpoint(Endpoint::BlobGet).requests, 1);
    assert_eq!(stats.blobs_stored, 1);
}

#[tokio::test]
async fn post_stores_under_a_new_id() {
    let t = spawn(StubConfig::default()).await;
    let response = t
        .http
        .post(t.blob("/blob"))
        .header("content-type", "image/png")
        .body(png(5, 5))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert!(t.stubs.blob(id).is_some());
}

#[tokio::test]
async fn bodies_above_axums_default_limit_are_accepted() {
    let t = spawn(StubConfig::default()).await;
    let big = vec![1u8; 5 * 1024 * 1024];
    t.put_blob("big", big, "application/octet-stream").await;
    assert_eq!(
        t.stubs.blob("big").expect("stored").0.len(),
        5 * 1024 * 1024
    );

    let too_big = vec![1u8; 40 * 1024 * 1024];
    let response = t
        .http
        .put(t.blob("/blob/too-big"))
        .body(too_big)
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 413);
    assert_error_shape(&response.json().await.expect("json"), 413);
}

#[tokio::test]
async fn unknown_blobs_and_routes_are_json_404s() {
    let t = spawn(StubConfig::default()).await;
    for url in [t.blob("/blob/nope"), t.blob("/nothing/here")] {
        let response = t.http.get(&url).send().await.expect("GET");
        assert_eq!(response.status(), 404, "{url}");
        assert_error_shape(&response.json().await.expect("json"), 404);
    }
}

#[tokio::test]
async fn the_oldest_blobs_are_evicted_beyond_capacity() {
    let t = spawn(StubConfig {
        blob_capacity: 2,
        ..StubConfig::default()
    })
    .await;
    for id in ["a", "b", "c"] {
        t.put_blob(id, vec![0u8; 10], "application/octet-stream")
            .await;
    }
    assert!(t.stubs.blob("a").is_none());
    assert!(t.stubs.blob("c").is_some());
    let stats = t.stubs.stats();
    assert_eq!((stats.blobs_stored, stats.blobs_evicted), (2, 1));
}

#[tokio::test]
async fn ping_and_stats_answer_on_both_ports() {
    let t = spawn(StubConfig::default()).await;
    for addr in [t.stubs.worker_addr, t.stubs.blob_addr] {
        let ping = t
            .http
            .get(format!("http://{addr}/ping"))
            .send()
            .await
            .expect("ping");
        assert_eq!(ping.status(), 200);
        assert_eq!(ping.text().await.expect("text"), "pong");

        let stats: serde_json::Value = t
            .http
            .get(format!("http://{addr}/stats?ids=true"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        assert!(
            stats["endpoints"]["job_post"]["requests"].is_u64(),
            "{stats}"
        );
    }
    // /ping and /stats are not API requests.
    let stats = t.stubs.stats();
    assert!(stats.endpoints.values().all(|e| e.requests == 0));
}

/// A browser that follows the ingress's 307 for a result (`RESULT_REDIRECT=true`) reads the
/// blob from another origin: the GET, found or not, says any origin may.
#[tokio::test]
async fn get_answers_any_origin() {
    let t = spawn(StubConfig::default()).await;
    let location = t.put_blob("cors", png(4, 4), "image/png").await;
    let got = t
        .http
        .get(&location)
        .header("origin", "http://127.0.0.1:9000")
        .send()
        .await
        .expect("GET");
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["access-control-allow-origin"], "*");
    let missing = t.http.get(t.blob("/blob/none")).send().await.expect("GET");
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["access-control-allow-origin"], "*");
}
