//! The worker service: real thumbnails, deduplication, failures, status polling.

use std::time::Duration;

use image::ImageFormat;
use imagejobs_stubs::{Endpoint, StubConfig};

use crate::support::{assert_error_shape, eventually, png, spawn, TestStubs};

const DEADLINE: Duration = Duration::from_secs(10);

/// Polls the worker job until it is no longer RUNNING and returns the final status answer.
async fn final_status(t: &TestStubs, worker_id: &str) -> serde_json::Value {
    eventually(DEADLINE, "job ends", || async {
        let status = t.job_status(worker_id).await;
        (status["status"] != 0).then_some(status)
    })
    .await
}

async fn thumbnail_dimensions(t: &TestStubs, location: &str) -> (u32, u32) {
    let response = t.http.get(location).send().await.expect("GET thumbnail");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.expect("bytes");
    let thumbnail =
        image::load_from_memory_with_format(&bytes, ImageFormat::Png).expect("thumbnail is a PNG");
    (thumbnail.width(), thumbnail.height())
}

#[tokio::test]
async fn a_job_makes_a_real_thumbnail_reported_through_status() {
    let t = spawn(StubConfig {
        running_ms: 100,
        ..StubConfig::default()
    })
    .await;
    let location = t.put_blob("job-a", png(400, 300), "image/png").await;

    let (code, answer) = t.post_job("job-a", &location).await;
    assert_eq!(code, 200);
    assert!(answer.get("status").is_none(), "still running: {answer}");
    let worker_id = answer["id"].as_str().expect("worker job id").to_owned();
    assert_ne!(worker_id, "job-a");

    let status = final_status(&t, &worker_id).await;
    assert_eq!(status["status"], 1, "{status}");
    let thumbnail = status["payload_location"]
        .as_str()
        .expect("result location");
    assert_eq!(thumbnail, format!("{}/blob/job-a.thumb", t.stubs.blob_url));
    assert_eq!(thumbnail_dimensions(&t, thumbnail).await, (128, 96));

    let stats = t.stubs.stats();
    assert_eq!(stats.jobs_started, 1);
    assert_eq!(stats.jobs_succeeded, 1);
    // The worker's own fetch and store are not the pipeline's requests.
    assert_eq!(stats.internal_requests, 2);
    assert_eq!(stats.endpoint(Endpoint::BlobGet).requests, 1); // the test's GET above
    assert_eq!(stats.blob_puts_for("job-a.thumb"), 1);
}

#[tokio::test]
async fn with_no_running_time_the_post_answers_the_final_result() {
    let t = spawn(StubConfig::default()).await;
    let location = t.put_blob("job-b", png(100, 500), "image/png").await;

    let (code, answer) = t.post_job("job-b", &location).await;
    assert_eq!(code, 200);
    assert_eq!(answer["status"], 1, "{answer}");
    let thumbnail = answer["payload_location"]
        .as_str()
        .expect("result location");
    assert_eq!(thumbnail_dimensions(&t, thumbnail).await, (26, 128));

    // Status agrees with the answer.
    let status = t.job_status(answer["id"].as_str().expect("id")).await;
    assert_eq!(status["status"], 1);
    assert_eq!(status["payload_location"], thumbnail);
}

#[tokio::test]
async fn a_repeated_post_returns_the_same_job_and_starts_nothing() {
    let t = spawn(StubConfig {
        running_ms: 300,
        ..StubConfig::default()
    })
    .await;
    let location = t.put_blob("job-c", png(10, 10), "image/png").await;

    let (_, first) = t.post_job("job-c", &location).await;
    let (_, second) = t.post_job("job-c", &location).await;
    assert_eq!(first["id"], second["id"]);
    let worker_id = first["id"].as_str().expect("id");
    final_status(&t, worker_id).await;
    let (_, third) = t.post_job("job-c", &location).await;
    assert_eq!(third["id"], first["id"]);
    assert_eq!(
        third["status"], 1,
        "a finished job answers its result: {third}"
    );

    let (_, other) = t.post_job("job-d", &location).await;
    assert_ne!(other["id"], first["id"]);

    let stats = t.stubs.stats();
    assert_eq!(stats.job_posts_for("job-c"), 3);
    assert_eq!(stats.jobs_started, 2);
}

#[tokio::test]
async fn undecodable_or_missing_images_fail_the_job_with_an_error() {
    let t = spawn(StubConfig::default()).await;
    let garbage = t
        .put_blob("job-e", b"not an image".to_vec(), "image/png")
        .await;
    let (_, answer) = t.post_job("job-e", &garbage).await;
    assert_eq!(answer["status"], 2, "{answer}");
    assert!(
        answer["error"].as_str().expect("error").contains("image"),
        "{answer}"
    );

    let missing = format!("{}/blob/never-stored", t.stubs.blob_url);
    let (_, answer) = t.post_job("job-f", &missing).await;
    assert_eq!(answer["status"], 2, "{answer}");
    assert!(
        answer["error"].as_str().expect("error").contains("404"),
        "{answer}"
    );

    let stats = t.stubs.stats();
    assert_eq!((stats.jobs_started, stats.jobs_failed), (2, 2));
}

#[tokio::test]
async fn skipping_image_work_reports_the_original_location() {
    let t = spawn(StubConfig {
        skip_image_work: true,
        ..StubConfig::default()
    })
    .await;
    // Nothing needs to exist at the location.
    let location = format!("{}/blob/anything", t.stubs.blob_url);
    let (_, answer) = t.post_job("job-g", &location).await;
    assert_eq!(answer["status"], 1);
    assert_eq!(answer["payload_location"], location.as_str());
    assert_eq!(t.stubs.stats().internal_requests, 0);
}

#[tokio::test]
async fn malformed_submissions_get_json_errors() {
    let t = spawn(StubConfig::default()).await;
    let cases: [(&str, &str); 4] = [
        ("{not json", "application/json"),
        (r#"{"id": 5}"#, "application/json"),
        (
            r#"{"id": "", "payload_location": "http://x/"}"#,
            "application/json",
        ),
        (
            r#"{"id": "j", "payload_location": "ftp://x/y"}"#,
            "application/json",
        ),
    ];
    for (body, content_type) in cases {
        let response = t
            .http
            .post(t.worker("/job"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST");
        let code = response.status().as_u16();
        assert!((400..500).contains(&code), "{body}: {code}");
        assert_error_shape(&response.json().await.expect("json"), code);
    }
    for id in ["not-a-uuid", "6d1f3c1e-8b0a-4f5e-9a57-2b1c0e4d7a30"] {
        let response = t
            .http
            .get(t.worker(&format!("/job/{id}/status")))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 404);
        assert_error_shape(&response.json().await.expect("json"), 404);
    }
}

#[tokio::test]
async fn an_external_blob_service_is_used_when_configured() {
    // One stubs process as the blob service, another as the worker using it.
    let blobs = spawn(StubConfig::default()).await;
    let worker = spawn(StubConfig {
        blob_service_url: Some(blobs.stubs.blob_url.parse().expect("url")),
        ..StubConfig::default()
    })
    .await;
    let location = blobs.put_blob("job-h", png(300, 300), "image/png").await;
    let (_, answer) = worker.post_job("job-h", &location).await;
    assert_eq!(answer["status"], 1, "{answer}");
    assert!(blobs.stubs.blob("job-h.thumb").is_some());
    assert!(worker.stubs.blob("job-h.thumb").is_none());
}
