//! Fault knobs: injected 503s, forced statuses, failed jobs, latency and in-flight counting,
//! and reproducible seeded decisions.

use std::time::Duration;

use imagejobs_stubs::faults::INTERNAL_HEADER;
use imagejobs_stubs::{Endpoint, StubConfig};
use tokio::task::JoinSet;

use crate::support::{assert_error_shape, eventually, png, spawn, TestStubs};

#[tokio::test]
async fn error_rate_one_answers_503_except_ping() {
    let t = spawn(StubConfig::default()).await;
    t.stubs.faults().set_error_rate(1.0);

    let response = t.http.get(t.blob("/blob/x")).send().await.expect("GET");
    assert_eq!(response.status(), 503);
    assert_error_shape(&response.json().await.expect("json"), 503);
    let (code, body) = t.post_job("j", "http://127.0.0.1:1/blob/j").await;
    assert_eq!(code, 503);
    assert_error_shape(&body, 503);
    let ping = t
        .http
        .get(format!("http://{}/ping", t.stubs.worker_addr))
        .send()
        .await
        .expect("ping");
    assert_eq!(ping.status(), 200);

    t.stubs.faults().set_error_rate(0.0);
    let response = t.http.get(t.blob("/blob/x")).send().await.expect("GET");
    assert_eq!(response.status(), 404);
    // Requests answered 503 are counted per endpoint, but never reached the handler.
    let stats = t.stubs.stats();
    assert_eq!(stats.endpoint(Endpoint::BlobGet).requests, 2);
    assert_eq!(stats.job_posts_for("j"), 0);
}

#[tokio::test]
async fn error_rate_from_config_applies_from_the_start() {
    let t = spawn(StubConfig {
        error_rate: 1.0,
        ..StubConfig::default()
    })
    .await;
    let response = t
        .http
        .post(t.blob("/blob"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn forced_status_answers_every_job_post() {
    let t = spawn(StubConfig::default()).await;
    t.stubs.faults().set_forced_status(Some(422));
    let (code, body) = t.post_job("job-422", "http://127.0.0.1:1/x").await;
    assert_eq!(code, 422);
    assert_error_shape(&body, 422);
    assert_eq!(t.stubs.stats().jobs_started, 0);
    assert_eq!(t.stubs.stats().job_posts_for("job-422"), 1);

    t.stubs.faults().set_forced_status(None);
    let location = t.put_blob("job-422", png(8, 8), "image/png").await;
    let (code, body) = t.post_job("job-422", &location).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], 1);
}

#[tokio::test]
async fn job_fail_rate_one_fails_every_job() {
    let t = spawn(StubConfig {
        job_fail_rate: 1.0,
        running_ms: 50,
        ..StubConfig::default()
    })
    .await;
    let location = t.put_blob("job-x", png(8, 8), "image/png").await;
    let (_, answer) = t.post_job("job-x", &location).await;
    let worker_id = answer["id"].as_str().expect("id").to_owned();
    let status = eventually(Duration::from_secs(10), "job fails", || async {
        let status = t.job_status(&worker_id).await;
        (status["status"] != 0).then_some(status)
    })
    .await;
    assert_eq!(status["status"], 2);
    assert!(status["error"].is_string());
    assert!(t.stubs.blob("job-x.thumb").is_none());
}

/// Status codes of `n` sequential GETs of an unknown blob.
async fn error_pattern(t: &TestStubs, n: usize) -> Vec<u16> {
    let mut codes = Vec::with_capacity(n);
    for _ in 0..n {
        let response = t
            .http
            .get(t.blob("/blob/unknown"))
            .send()
            .await
            .expect("GET");
        codes.push(response.status().as_u16());
    }
    codes
}

/// Fates (SUCCESS 1 or FAILED 2) of jobs `job-0..n`.
async fn job_fates(t: &TestStubs, n: usize) -> Vec<u64> {
    let location = format!("{}/blob/whatever", t.stubs.blob_url);
    let mut fates = Vec::with_capacity(n);
    for i in 0..n {
        let (_, answer) = t.post_job(&format!("job-{i}"), &location).await;
        fates.push(answer["status"].as_u64().expect("final status"));
    }
    fates
}

#[tokio::test]
async fn seeded_fault_decisions_are_reproducible() {
    let seeded = |seed| StubConfig {
        seed: Some(seed),
        error_rate: 0.5,
        ..StubConfig::default()
    };
    let (a, b, c) = (
        spawn(seeded(42)).await,
        spawn(seeded(42)).await,
        spawn(seeded(43)).await,
    );
    let (pa, pb, pc) = (
        error_pattern(&a, 48).await,
        error_pattern(&b, 48).await,
        error_pattern(&c, 48).await,
    );
    assert_eq!(pa, pb);
    assert_ne!(pa, pc);
    assert!(pa.contains(&503) && pa.contains(&404), "{pa:?}");

    for t in [&a, &b] {
        t.stubs.faults().set_error_rate(0.0);
        t.stubs.faults().set_job_fail_rate(0.5);
        t.stubs.faults().set_skip_image_work(true);
    }
    let (fa, fb) = (job_fates(&a, 32).await, job_fates(&b, 32).await);
    assert_eq!(fa, fb);
    assert!(fa.contains(&1) && fa.contains(&2), "{fa:?}");
}

#[tokio::test]
async fn in_flight_counts_concurrent_requests_including_latency() {
    let t = spawn(StubConfig {
        latency_ms: 300,
        ..StubConfig::default()
    })
    .await;
    let mut requests = JoinSet::new();
    for i in 0..6 {
        let http = t.http.clone();
        let url = t.blob(&format!("/blob/c{i}"));
        requests.spawn(async move { http.put(url).body("x").send().await.map(|r| r.status()) });
    }
    // While they sleep in the latency, they are in flight.
    eventually(Duration::from_secs(5), "requests in flight", || async {
        (t.stubs.stats().endpoint(Endpoint::BlobPut).in_flight >= 2).then_some(())
    })
    .await;
    while let Some(result) = requests.join_next().await {
        assert!(result.expect("task").expect("PUT").is_success());
    }
    let put = t.stubs.stats().endpoint(Endpoint::BlobPut);
    assert_eq!(put.requests, 6);
    assert_eq!(put.in_flight, 0);
    assert!(put.max_in_flight >= 2 && put.max_in_flight <= 6, "{put:?}");

    t.stubs.reset_max_in_flight();
    assert_eq!(t.stubs.stats().endpoint(Endpoint::BlobPut).max_in_flight, 0);

    t.stubs.faults().set_latency(Duration::ZERO);
    let started = tokio::time::Instant::now();
    t.put_blob("fast", vec![1], "x/y").await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

/// The blob-only knobs fail or slow blob PUTs, and nothing else: GETs and the worker go on.
#[tokio::test]
async fn blob_faults_hit_blob_puts_only() {
    let t = spawn(StubConfig::default()).await;
    let put = |id: &str| {
        t.http
            .put(t.blob(&format!("/blob/{id}")))
            .header("content-type", "image/png")
            .body(png(4, 4))
            .send()
    };
    assert!(put("before").await.expect("PUT").status().is_success());
    t.stubs.faults().set_blob_error_rate(1.0);
    let refused = put("refused").await.expect("PUT");
    assert_eq!(refused.status(), 503);
    assert_error_shape(&refused.json().await.expect("json"), 503);
    let get = t
        .http
        .get(t.blob("/blob/before"))
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 200, "a GET is not a PUT");
    let (code, _) = t.post_job("j", &t.blob("/blob/before")).await;
    assert_eq!(code, 200, "the worker is not the blob service");

    t.stubs.faults().set_blob_error_rate(0.0);
    t.stubs.faults().set_blob_hang(Duration::from_millis(600));
    let started = std::time::Instant::now();
    assert!(put("slow").await.expect("PUT").status().is_success());
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    t.stubs.faults().set_blob_hang(Duration::ZERO);

    // Both knobs through PUT /faults, as a demo or the chaos run sets them.
    let knobs = t
        .http
        .put(format!("http://{}/faults", t.stubs.blob_addr))
        .body(r#"{"blob_error_rate": 1, "blob_hang_ms": 0}"#)
        .send()
        .await
        .expect("PUT /faults");
    let knobs: serde_json::Value = knobs.json().await.expect("json");
    assert_eq!(knobs["blob_error_rate"], 1.0);
    assert_eq!(put("again").await.expect("PUT").status(), 503);
}

/// The worker's own calls (marked internal) pass a failing or hanging blob store untouched,
/// and every blob fault is counted by kind in `/metrics`.
#[tokio::test]
async fn blob_faults_spare_internal_calls_and_are_counted() {
    let t = spawn(StubConfig {
        blob_error_rate: 1.0,
        blob_hang_ms: 300,
        ..StubConfig::default()
    })
    .await;
    let put = |id: &str, internal: bool| {
        let request = t
            .http
            .put(t.blob(&format!("/blob/{id}")))
            .header("content-type", "image/png")
            .body(png(4, 4));
        let request = if internal {
            request.header(INTERNAL_HEADER, "1")
        } else {
            request
        };
        request.send()
    };
    let started = std::time::Instant::now();
    assert_eq!(put("inside", true).await.expect("PUT").status(), 201);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "an internal PUT does not hang: {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    assert_eq!(put("outside", false).await.expect("PUT").status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(t.stubs.blob("outside").is_none());
    assert_eq!(t.stubs.stats().blob_puts_for("outside"), 0);

    // The worker stores its thumbnail through the failing store: the job still succeeds.
    let (stored, _) = t.stubs.blob("inside").expect("stored");
    assert!(!stored.is_empty());
    let (code, answer) = t.post_job("job-b", &t.blob("/blob/inside")).await;
    assert_eq!(code, 200);
    assert_eq!(answer["status"], 1, "{answer}");
    assert!(t.stubs.blob("job-b.thumb").is_some());

    let metrics = t
        .http
        .get(format!("http://{}/metrics", t.stubs.blob_addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for kind in ["blob_error_503", "blob_hang"] {
        let line = format!("imagejobs_stub_faults_injected_total{{kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

/// A share of 0.5 fails some blob PUTs and not others, the same ones under the same seed.
#[tokio::test]
async fn blob_error_rate_is_a_seeded_share() {
    let seeded = |seed| StubConfig {
        seed: Some(seed),
        blob_error_rate: 0.5,
        ..StubConfig::default()
    };
    let (a, b) = (spawn(seeded(8)).await, spawn(seeded(8)).await);
    let mut patterns = Vec::new();
    for t in [&a, &b] {
        let mut codes = Vec::new();
        for i in 0..32 {
            let response = t
                .http
                .put(t.blob(&format!("/blob/s{i}")))
                .body("x")
                .send()
                .await
                .expect("PUT");
            codes.push(response.status().as_u16());
        }
        patterns.push(codes);
    }
    assert_eq!(patterns[0], patterns[1]);
    assert!(
        patterns[0].contains(&503) && patterns[0].contains(&201),
        "{:?}",
        patterns[0]
    );
}
