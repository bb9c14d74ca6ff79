//! The claim check (docs/http-api.md, "Images by reference") against the real stack: which
//! images travel by reference, what such a job message holds, what a failing blob service
//! makes of a submit, keyed retries, a direct publisher's reference, and results by
//! redirect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
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
    let msg = get_job(&ch, topo, T).await;
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
    let msg = get_job(&ch, topo, T).await;
    assert!(
        msg.delivery.data.is_empty(),
        "at the threshold: an empty body"
    );
    let location = match header(&msg, "payload_location") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("payload_location: {other:?}"),
    };
    assert_eq!(
        location,
        format!("{}/blob/{id}", p.stubs.blob_url),
        "the location the stub answered for the ingress's PUT"
    );
    let fetched = reqwest::get(&location).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(
        &fetched.bytes().await.unwrap()[..],
        &at[..],
        "the location serves the image"
    );
    assert_eq!(
        p.stubs.stats().blob_puts_for(&id),
        1,
        "one PUT, the ingress's"
    );
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
    assert_eq!(jobs_len(&ch, topo).await, 0);

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

/// The three claim-check headers of a queued job message, checked against `img`.
fn assert_reference(msg: &lapin::message::BasicGetMessage, img: &[u8], location: &str) {
    assert!(msg.delivery.data.is_empty(), "by reference: an empty body");
    assert_eq!(
        header(msg, "payload_location"),
        Some(&AMQPValue::LongString(location.into()))
    );
    assert_eq!(
        header(msg, "payload_size"),
        Some(&AMQPValue::LongLongInt(img.len() as i64))
    );
    assert_eq!(
        header(msg, "md5"),
        Some(&AMQPValue::LongString(Md5::of(img).to_string().into()))
    );
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
    let msg = get_job(&ch, topo, T).await;
    assert_reference(&msg, &tiny, &format!("{}/blob/{id}", p.stubs.blob_url));
    let (stored, _) = p.stubs.blob(&id).expect("0: even a tiny image is stored");
    assert_eq!(&stored[..], &tiny[..]);
    all.stop().await;

    // Off: the default MAX_BODY_BYTES (3 MiB) + 1.
    let none = p
        .ingress_with(|c| c.claim_check_min_bytes = ByteSize(c.max_body_bytes.0 + 1))
        .await;
    let large = png_of(500_000);
    let id = none.submit_id(&large).await;
    let msg = get_job(&ch, topo, T).await;
    assert_eq!(msg.delivery.data, large, "off: over 64 KiB, in the body");
    assert!(header(&msg, "payload_location").is_none());
    assert!(p.stubs.blob(&id).is_none());
    none.stop().await;

    // The edge of "off": a threshold equal to MAX_BODY_BYTES still applies to an image
    // of exactly MAX_BODY_BYTES; one byte more and it never does.
    let max = 200_000;
    let edge = png_of(max);
    let at_max = p
        .ingress_with(|c| {
            c.max_body_bytes = ByteSize(max as u64);
            c.claim_check_min_bytes = ByteSize(max as u64);
        })
        .await;
    let id = at_max.submit_id(&edge).await;
    let msg = get_job(&ch, topo, T).await;
    assert_reference(&msg, &edge, &format!("{}/blob/{id}", p.stubs.blob_url));
    at_max.stop().await;
    let above_max = p
        .ingress_with(|c| {
            c.max_body_bytes = ByteSize(max as u64);
            c.claim_check_min_bytes = ByteSize(max as u64 + 1);
        })
        .await;
    let id = above_max.submit_id(&edge).await;
    let msg = get_job(&ch, topo, T).await;
    assert_eq!(msg.delivery.data, edge, "above MAX_BODY_BYTES: off");
    assert!(p.stubs.blob(&id).is_none());
    assert_eq!(jobs_len(&ch, topo).await, 0);
}

/// A blob service that answers every PUT with `status` (0: hangs for 3 s, longer than
/// the ingress's `BLOB_PUT_TIMEOUT_MS`, then 503). A 2xx is the real stub's answer when
/// `forward` (its API base) is given: the body is stored there; otherwise a made-up
/// location. `puts` counts the PUTs that reached it.
struct FakeBlob {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    puts: Arc<AtomicU64>,
}

impl FakeBlob {
    fn url(&self) -> reqwest::Url {
        reqwest::Url::parse(&format!("http://{}/api/v1", self.addr)).unwrap()
    }
}

async fn fake_blob(forward: Option<String>) -> FakeBlob {
    let status = Arc::new(AtomicU16::new(503));
    let puts = Arc::new(AtomicU64::new(0));
    let (answer, counted) = (status.clone(), puts.clone());
    let http = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/api/v1/blob/{id}",
        axum::routing::put(
            move |axum::extract::Path(id): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  body: bytes::Bytes| {
                let (answer, counted, forward, http) = (
                    answer.clone(),
                    counted.clone(),
                    forward.clone(),
                    http.clone(),
                );
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let mut code = answer.load(Ordering::Relaxed);
                    if code == 0 {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        code = 503;
                    }
                    let code = axum::http::StatusCode::from_u16(code)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    match forward {
                        Some(base) if code.is_success() => {
                            let mut put = http.put(format!("{base}/blob/{id}")).body(body);
                            if let Some(ct) = headers.get("content-type") {
                                put = put.header("content-type", ct.as_bytes());
                            }
                            let resp = put.send().await.unwrap();
                            let code =
                                axum::http::StatusCode::from_u16(resp.status().as_u16()).unwrap();
                            (code, resp.text().await.unwrap())
                        }
                        _ => (
                            code,
                            format!(r#"{{"payload_location":"http://fake/blob/{id}"}}"#),
                        ),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeBlob { addr, status, puts }
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

fn rejections(metrics: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("imagejobs_rejections_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_of(ing: &TestIngress) -> String {
    ing.http
        .get(format!("{}/metrics", ing.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_blob_service_that_fails_gets_503_or_502_and_nothing_is_published() {
    let p = Pipeline::new().await;
    let fake = fake_blob(Some(p.stubs.blob_url.clone())).await;
    let ing = p
        .ingress_with(|c| {
            c.claim_check_min_bytes = ByteSize(0);
            c.blob_put_timeout = Duration::from_secs(1);
            c.blob_service_url = fake.url();
        })
        .await;
    let img = png(10, 10);
    let mut asked = 0;
    for (status, expect) in [(503, 503), (500, 503), (429, 503), (400, 502), (404, 502)] {
        fake.status.store(status, Ordering::Relaxed);
        let resp = submit(&ing, &img, None).await;
        if expect == 503 {
            let retry = resp.headers().get("retry-after").map(|v| v.to_owned());
            let secs = retry
                .as_ref()
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            assert!(
                secs.is_some_and(|s| s > 0),
                "{status}: Retry-After {retry:?}"
            );
        } else {
            assert!(!resp.headers().contains_key("retry-after"), "{status}");
        }
        error_of(resp, expect).await;
        asked += 1;
        assert_eq!(
            fake.puts.load(Ordering::Relaxed),
            asked,
            "{status}: PUT made"
        );
    }
    // Slower than BLOB_PUT_TIMEOUT_MS (1 s; the fake hangs 3 s): a 503 when it ends.
    fake.status.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let resp = submit(&ing, &img, None).await;
    let took = started.elapsed();
    assert!(resp.headers().contains_key("retry-after"));
    error_of(resp, 503).await;
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
    let resp = submit(&down, &img, None).await;
    assert!(resp.headers().contains_key("retry-after"));
    error_of(resp, 503).await;

    let metrics = metrics_of(&ing).await;
    assert_eq!(
        rejections(&metrics, "blob_unavailable"),
        4.0,
        "503, 500, 429 and the hang; not 400 nor 404:\n{metrics}"
    );
    let metrics = metrics_of(&down).await;
    assert_eq!(
        rejections(&metrics, "blob_unavailable"),
        1.0,
        "down:\n{metrics}"
    );

    // Nothing was published: once a good submit after them is known to both ingresses,
    // it is the only job, and the only message in the work queue.
    fake.status.store(201, Ordering::Relaxed);
    let good = ing.submit_id(&img).await;
    for ingress in [&ing, &down] {
        let ids = eventually(T, "the good job listed", || async {
            let (status, page) = ingress.get_json("/api/v1/jobs", 1).await;
            assert_eq!(status, 200, "{page}");
            let ids: Vec<String> = page["jobs"]
                .as_array()?
                .iter()
                .filter_map(|j| j["id"].as_str().map(str::to_owned))
                .collect();
            ids.contains(&good).then_some(ids)
        })
        .await;
        assert_eq!(ids, vec![good.clone()], "only the good job");
    }
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    let msg = get_job(&ch, topo, T).await;
    assert_eq!(
        msg.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(good.as_str())
    );
    assert_eq!(jobs_len(&ch, topo).await, 0, "nothing else published");
}

async fn accepted_id(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

fn message_id(msg: &lapin::message::BasicGetMessage) -> Option<String> {
    msg.delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
}

#[tokio::test]
async fn a_keyed_submit_by_reference_twice_is_one_job() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.claim_check_min_bytes = ByteSize(70_000))
        .await;
    let img = png_of(80_000);
    let first = accepted_id(submit(&ing, &img, Some("order-1")).await).await;
    let again = accepted_id(submit(&ing, &img, Some("order-1")).await).await;
    assert_eq!(first, again, "one job for the key");
    let (stored, _) = p.stubs.blob(&first).expect("stored at the job id");
    assert_eq!(&stored[..], &img[..]);
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    let msg = get_job(&ch, topo, T).await;
    assert_eq!(message_id(&msg).as_deref(), Some(first.as_str()));
    assert_reference(&msg, &img, &format!("{}/blob/{first}", p.stubs.blob_url));
    assert_eq!(jobs_len(&ch, topo).await, 0, "one message");
}

#[tokio::test]
async fn a_keyed_submit_retried_after_a_503_makes_one_job() {
    let p = Pipeline::new().await;
    let fake = fake_blob(Some(p.stubs.blob_url.clone())).await;
    let ing = p
        .ingress_with(|c| {
            c.claim_check_min_bytes = ByteSize(0);
            c.blob_service_url = fake.url();
        })
        .await;
    let img = png(12, 12);
    fake.status.store(503, Ordering::Relaxed);
    error_of(submit(&ing, &img, Some("order-7")).await, 503).await;
    // The blob service is back: the retry stores the image and is accepted.
    fake.status.store(201, Ordering::Relaxed);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(accepted_id(submit(&ing, &img, Some("order-7")).await).await);
    }
    assert_eq!(ids[0], ids[1], "one job for the key");
    let id = ids.remove(0);
    let (stored, _) = p.stubs.blob(&id).expect("the retry stored the image");
    assert_eq!(&stored[..], &img[..]);
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    let msg = get_job(&ch, topo, T).await;
    assert_eq!(message_id(&msg).as_deref(), Some(id.as_str()));
    assert_reference(&msg, &img, &format!("{}/blob/{id}", p.stubs.blob_url));
    assert_eq!(jobs_len(&ch, topo).await, 0, "one message");
    let listed = eventually(T, "the job listed", || async {
        let (_, page) = ing.get_json("/api/v1/jobs", 1).await;
        let jobs = page["jobs"].as_array()?.clone();
        (!jobs.is_empty()).then_some(jobs)
    })
    .await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
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
    // Over the default threshold (64 KiB): the input travels by reference too.
    let id = streaming.submit_id(&png_of(100_000)).await;
    let job = redirecting.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let location = job["payload_location"].as_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{}/blob/", p.stubs.blob_url))
            && location != format!("{}/blob/{id}", p.stubs.blob_url),
        "the result's absolute URL from the stub, not the input's: {location}"
    );
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
