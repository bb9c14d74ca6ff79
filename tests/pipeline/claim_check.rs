//! The claim check (DESIGN §10.1) against the real stack: which images travel by
//! reference, what such a job message holds, what a failing blob service makes of a
//! submit, keyed retries, a direct publisher's reference, and results by redirect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

use imagejobs_core::config::ByteSize;
use imagejobs_core::ids::Md5;
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);

/// A PNG of exactly `len` bytes (at least a small PNG's): bytes after IEND are ignored by
/// decoders and sniffing alike.
fn png_of(len: usize) -> Vec<u8> {
    let mut img = png(16, 16);
    assert!(img.len() <= len, "a 16×16 PNG is {} bytes", img.len());
    img.resize(len, 0);
    img
}

fn header<'a>(msg: &'a lapin::message::BasicGetMessage, name: &str) -> Option<&'a AMQPValue> {
    msg.delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

#[tokio::test]
async fn images_from_the_threshold_up_travel_by_reference() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.claim_check_min_bytes = ByteSize(70_000))
        .await;
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;

    let below = png_of(69_999);
    let id = ing.submit_id(&below).await;
    let msg = get_one(&ch, &topo.work_queue(), T).await;
    assert_eq!(
        msg.delivery.data, below,
        "just below the threshold: in the body"
    );
    assert!(header(&msg, "payload_location").is_none());
    assert!(p.stubs.blob(&id).is_none(), "nothing stored for it");

    let at = png_of(70_000);
    let id = ing.submit_id(&at).await;
    // The image is stored before the 202: no consumer runs.
    let (stored, ct) = p
        .stubs
        .blob(&id)
        .expect("stored at the job id before the 202");
    assert_eq!(&stored[..], &at[..]);
    assert_eq!(ct, "image/png");
    let msg = get_one(&ch, &topo.work_queue(), T).await;
    assert!(
        msg.delivery.data.is_empty(),
        "at the threshold: an empty body"
    );
    let location = match header(&msg, "payload_location") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("payload_location: {other:?}"),
    };
    assert!(location.ends_with(&format!("/blob/{id}")), "{location}");
    assert_eq!(
        header(&msg, "payload_size"),
        Some(&AMQPValue::LongLongInt(70_000))
    );
    assert_eq!(
        header(&msg, "md5"),
        Some(&AMQPValue::LongString(Md5::of(&at).to_string().into()))
    );
    assert_eq!(
        msg.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("image/png")
    );
    assert_eq!(queue_len(&ch, &topo.work_queue()).await, 0);

    // With a consumer, both kinds succeed, and a reference is not stored again.
    let consumer = p.consumer().await;
    let by_body = ing.submit_id(&png_of(69_999)).await;
    let by_ref = ing.submit_id(&png_of(70_000)).await;
    for id in [&by_body, &by_ref] {
        let job = ing.wait_terminal(id, 1, T).await;
        assert_eq!(job["status"], "SUCCESS", "{job}");
    }
    assert_eq!(
        p.stubs.stats().blob_puts_for(&by_ref),
        1,
        "the ingress's PUT only"
    );
    assert_eq!(
        p.stubs.stats().blob_puts_for(&by_body),
        1,
        "the consumer's PUT"
    );
    let job = ing.wait_terminal(&by_ref, 1, T).await;
    assert_eq!(job["payload_size"], 70_000);
    assert_eq!(job["md5"], Md5::of(&png_of(70_000)).to_string());
    consumer.stop().await;
}

#[tokio::test]
async fn zero_sends_every_image_by_reference_and_above_the_limit_none() {
    let p = Pipeline::new().await;
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    let all = p
        .ingress_with(|c| c.claim_check_min_bytes = ByteSize(0))
        .await;
    let tiny = png(4, 4);
    let id = all.submit_id(&tiny).await;
    let msg = get_one(&ch, &topo.work_queue(), T).await;
    assert!(
        msg.delivery.data.is_empty(),
        "0: even {} bytes go by reference",
        tiny.len()
    );
    assert!(p.stubs.blob(&id).is_some());
    all.stop().await;

    let none = p
        .ingress_with(|c| c.claim_check_min_bytes = ByteSize(c.max_body_bytes.0 + 1))
        .await;
    let large = png_of(500_000);
    let id = none.submit_id(&large).await;
    let msg = get_one(&ch, &topo.work_queue(), T).await;
    assert_eq!(msg.delivery.data.len(), large.len(), "off: in the body");
    assert!(p.stubs.blob(&id).is_none());
}

/// A blob service that answers every PUT with `status` (0: never answers), or, with 200,
/// stores nothing but answers a location.
struct FakeBlob {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
}

async fn fake_blob() -> FakeBlob {
    let status = Arc::new(AtomicU16::new(503));
    let answer = status.clone();
    let app = axum::Router::new().route(
        "/api/v1/blob/{id}",
        axum::routing::put(
            move |axum::extract::Path(id): axum::extract::Path<String>| {
                let answer = answer.clone();
                async move {
                    let code = answer.load(Ordering::Relaxed);
                    if code == 0 {
                        std::future::pending::<()>().await;
                    }
                    let code = axum::http::StatusCode::from_u16(code)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    let body = format!(r#"{{"payload_location":"http://fake/blob/{id}"}}"#);
                    (code, body)
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeBlob { addr, status }
}

async fn submit(ing: &TestIngress, img: &[u8], key: Option<&str>) -> reqwest::Response {
    let mut req = ing
        .http
        .post(format!("{}/api/v1/job", ing.url))
        .bearer_auth(token(1, 1))
        .header("content-type", "image/png")
        .body(img.to_vec());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.expect("request sent")
}

async fn error_of(resp: reqwest::Response, code: u16) -> serde_json::Value {
    assert_eq!(resp.status(), code);
    let body: serde_json::Value = resp.json().await.expect("error JSON");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].is_string() && body["details"].is_string(),
        "{body}"
    );
    body
}

#[tokio::test]
async fn a_blob_service_that_fails_gets_503_or_502_and_nothing_is_published() {
    let p = Pipeline::new().await;
    let fake = fake_blob().await;
    let url = reqwest::Url::parse(&format!("http://{}/api/v1", fake.addr)).unwrap();
    let ing = p
        .ingress_with(|c| {
            c.claim_check_min_bytes = ByteSize(0);
            c.blob_put_timeout = Duration::from_secs(1);
            c.blob_service_url = url;
        })
        .await;
    let img = png(10, 10);
    for (status, expect) in [(503, 503), (500, 503), (429, 503), (400, 502), (404, 502)] {
        fake.status.store(status, Ordering::Relaxed);
        let resp = submit(&ing, &img, None).await;
        if expect == 503 {
            assert!(resp.headers().contains_key("retry-after"), "{status}");
        }
        error_of(resp, expect).await;
    }
    // Slower than BLOB_PUT_TIMEOUT_MS: a 503 when the timeout ends.
    fake.status.store(0, Ordering::Relaxed);
    let started = Instant::now();
    error_of(submit(&ing, &img, None).await, 503).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // Nobody there at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = reqwest::Url::parse(&format!("http://{closed}/api/v1")).unwrap();
    let down = p
        .ingress_with(|c| {
            c.claim_check_min_bytes = ByteSize(0);
            c.blob_service_url = url;
        })
        .await;
    error_of(submit(&down, &img, None).await, 503).await;

    let (_c, ch) = p.deployment.channel().await;
    assert_eq!(
        queue_len(&ch, &p.deployment.topology.work_queue()).await,
        0,
        "nothing published"
    );
    let (_, page) = ing.get_json("/api/v1/jobs", 1).await;
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(0), "{page}");
    let metrics = ing
        .http
        .get(format!("{}/metrics", ing.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let unavailable: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("imagejobs_rejections_total") && l.contains("blob_unavailable"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unavailable, 4.0, "503, 500, 429 and the hang:\n{metrics}");
}

#[tokio::test]
async fn a_keyed_submit_retried_after_a_503_makes_one_job() {
    let p = Pipeline::new().await;
    let fake = fake_blob().await;
    let url = reqwest::Url::parse(&format!("http://{}/api/v1", fake.addr)).unwrap();
    let ing = p
        .ingress_with(|c| {
            c.claim_check_min_bytes = ByteSize(0);
            c.blob_service_url = url;
        })
        .await;
    let img = png(12, 12);
    fake.status.store(503, Ordering::Relaxed);
    error_of(submit(&ing, &img, Some("order-7")).await, 503).await;
    fake.status.store(201, Ordering::Relaxed);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = submit(&ing, &img, Some("order-7")).await;
        assert_eq!(resp.status(), 202);
        let body: serde_json::Value = resp.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1], "one job for the key");
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    let msg = get_one(&ch, &topo.work_queue(), T).await;
    assert_eq!(
        msg.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(ids[0].as_str())
    );
    assert_eq!(queue_len(&ch, &topo.work_queue()).await, 0, "one message");
}

/// A job by reference as a direct publisher sends it.
fn reference(id: &str, location: &str, size: i64, md5: Md5, content_type: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("tenant_id".into(), AMQPValue::LongLongInt(1));
    headers.insert("client_id".into(), AMQPValue::LongLongInt(1));
    headers.insert(
        "payload_location".into(),
        AMQPValue::LongString(LongString::from(location)),
    );
    headers.insert("payload_size".into(), AMQPValue::LongLongInt(size));
    headers.insert(
        "md5".into(),
        AMQPValue::LongString(LongString::from(md5.to_string())),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_content_type(content_type.into())
        .with_headers(headers)
}

#[tokio::test]
async fn a_direct_publishers_reference_runs_and_a_bad_one_is_dead_lettered() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p
        .consumer_with(|c| c.max_body_bytes = ByteSize(1_000_000))
        .await;
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    let img = png(40, 30);
    let stored = uuid::Uuid::new_v4().to_string();
    let put = reqwest::Client::new()
        .put(format!("{}/blob/{stored}", p.stubs.blob_url))
        .header("content-type", "image/png")
        .body(img.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let location = format!("{}/blob/{stored}", p.stubs.blob_url);
    let publish = |props: BasicProperties| {
        let ch = ch.clone();
        let exchange = topo.jobs_exchange();
        async move {
            ch.basic_publish(
                exchange.as_str().into(),
                "submit".into(),
                BasicPublishOptions::default(),
                &[],
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    let md5 = Md5::of(&img);
    let good = uuid::Uuid::new_v4().to_string();
    publish(reference(
        &good,
        &location,
        img.len() as i64,
        md5,
        "image/png",
    ))
    .await;
    let job = ing.wait_terminal(&good, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(
        p.stubs.stats().blob_puts_for(&good),
        0,
        "the consumer stored nothing"
    );

    let svg = uuid::Uuid::new_v4().to_string();
    publish(reference(
        &svg,
        &location,
        img.len() as i64,
        md5,
        "image/svg+xml",
    ))
    .await;
    let huge = uuid::Uuid::new_v4().to_string();
    publish(reference(&huge, &location, 2_000_000, md5, "image/png")).await;
    for (id, why) in [(&svg, "image type"), (&huge, "MAX_BODY_BYTES")] {
        let job = ing.wait_terminal(id, 1, T).await;
        assert_eq!(job["status"], "FAILED", "{job}");
        assert!(
            job["error"].as_str().unwrap_or_default().contains(why),
            "{job}"
        );
    }
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let dead = get_one(&ch, &topo.dead_queue(), T).await;
        let headers = dead.delivery.properties.headers().clone().unwrap();
        reasons
            .push(imagejobs_core::message::header_string(&headers, "x-error").unwrap_or_default());
    }
    assert!(
        reasons.iter().any(|r| r.contains("image type")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("MAX_BODY_BYTES")),
        "{reasons:?}"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn results_stream_or_redirect_and_the_cli_follows_either() {
    let p = Pipeline::new().await;
    let streaming = p.ingress().await;
    let redirecting = p.ingress_with(|c| c.result_redirect = true).await;
    let consumer = p.consumer().await;
    let id = streaming.submit_id(&png(90, 60)).await;
    let job = redirecting.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let location = job["payload_location"].as_str().unwrap().to_owned();
    let thumb = reqwest::get(&location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(!thumb.is_empty());

    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let path = format!("/api/v1/job/{id}/result");
    let resp = no_follow
        .get(format!("{}{path}", redirecting.url))
        .bearer_auth(token(1, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(location.as_str())
    );
    let resp = no_follow
        .get(format!("{}{path}", streaming.url))
        .bearer_auth(token(1, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "streamed by default");
    assert_eq!(resp.bytes().await.unwrap(), thumb);

    // The CLI, against both.
    let dir = std::env::temp_dir().join(format!("imagejobs-result-{}", p.deployment.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, ing) in [("redirected", &redirecting), ("streamed", &streaming)] {
        let file = dir.join(format!("{name}.png"));
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagejobs"))
            .args(["result", &id, "-o", &file.display().to_string()])
            .env("IMAGEJOBS_URL", &ing.url)
            .env("IMAGEJOBS_TOKEN", token(1, 1))
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&file).unwrap(), thumb.to_vec(), "{name}");
    }
    consumer.stop().await;
}
