//! The submit path (issue: workspace, broker, topology and HTTP ingress).

use std::time::{Duration, Instant};

use base64::Engine;
use lapin::types::AMQPValue;
use serde_json::{json, Value};

use imagejobs_core::config::ByteSize;
use imagejobs_core::ids::Md5;
use imagejobs_testkit::*;

async fn error_of(resp: reqwest::Response, code: u16) -> Value {
    assert_eq!(resp.status().as_u16(), code, "status");
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["code"], code, "code field in {body}");
    assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "error field in {body}"
    );
    assert!(
        body["details"].as_str().is_some(),
        "details field in {body}"
    );
    body
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn every_submit_error_has_its_code_and_shape() {
    let p = Pipeline::new().await;
    let ing = p.ingress_with(|c| c.max_body_bytes = ByteSize(20000)).await;
    let url = format!("{}/api/v1/job", ing.url);
    let img = png(16, 16);
    let md5 = Md5::of(&img).to_string();
    let good = json!({"encoding": "base64", "md5": md5, "content": b64(&img)});
    let h = &ing.http;

    // 401: missing, malformed, badly signed, alg none.
    error_of(h.post(&url).json(&good).send().await.unwrap(), 401).await;
    error_of(
        h.post(&url)
            .header("authorization", "Token abc")
            .json(&good)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    error_of(
        h.post(&url)
            .bearer_auth("a.b.c")
            .json(&good)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let wrong_key = imagejobs::auth::mint(
        &imagejobs_core::config::Secret::new("not-the-secret"),
        imagejobs::auth::Caller {
            tenant_id: imagejobs_core::ids::TenantId(1),
            client_id: imagejobs_core::ids::ClientId(1),
        },
        None,
        None,
    )
    .unwrap();
    error_of(
        h.post(&url)
            .bearer_auth(wrong_key)
            .json(&good)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"tid":1,"oid":1}"#)
    );
    error_of(
        h.post(&url)
            .bearer_auth(none)
            .json(&good)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;

    let tok = token(1, 1);
    let post = |body: Vec<u8>, ct: &'static str| {
        h.post(&url)
            .bearer_auth(&tok)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    // 400: bad JSON, unknown encoding, bad base64, MD5 mismatch.
    error_of(
        post(b"{not json".to_vec(), "application/json")
            .await
            .unwrap(),
        400,
    )
    .await;
    let body = json!({"encoding": "hex", "md5": md5, "content": "00"});
    error_of(
        post(body.to_string().into_bytes(), "application/json")
            .await
            .unwrap(),
        400,
    )
    .await;
    let body = json!({"encoding": "base64", "md5": md5, "content": "***"});
    error_of(
        post(body.to_string().into_bytes(), "application/json")
            .await
            .unwrap(),
        400,
    )
    .await;
    let body =
        json!({"encoding": "base64", "md5": Md5::of(b"other").to_string(), "content": b64(&img)});
    let e = error_of(
        post(body.to_string().into_bytes(), "application/json")
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(e["error"].as_str().unwrap().contains("md5"));
    let wrong = b64(&Md5::of(b"other").0);
    let resp = h
        .post(&url)
        .bearer_auth(&tok)
        .header("content-type", "image/png")
        .header("content-md5", wrong)
        .body(img.clone())
        .send()
        .await
        .unwrap();
    error_of(resp, 400).await;

    // 413: raw and JSON bodies over MAX_BODY_BYTES.
    let big = png(400, 400);
    assert!(big.len() > 20_000);
    error_of(post(big.clone(), "image/png").await.unwrap(), 413).await;
    let body = json!({"encoding": "base64", "content": b64(&big)});
    error_of(
        post(body.to_string().into_bytes(), "application/json")
            .await
            .unwrap(),
        413,
    )
    .await;

    // 415: not an image, and a content type that is neither JSON nor image/*.
    error_of(
        post(b"plain text, not pixels".to_vec(), "image/png")
            .await
            .unwrap(),
        415,
    )
    .await;
    let body = json!({"encoding": "base64", "content": b64(b"%PDF-1.7 not an image")});
    error_of(
        post(body.to_string().into_bytes(), "application/json")
            .await
            .unwrap(),
        415,
    )
    .await;
    error_of(post(img.clone(), "text/plain").await.unwrap(), 415).await;

    // Unknown routes and methods keep the shape too.
    error_of(
        h.get(format!("{}/nope", ing.url)).send().await.unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn seed_token_and_seed_style_body_are_accepted() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.jwt_audience = Some("com.company.jobservice".into()))
        .await;
    let img = png(8, 8);
    let body =
        json!({"encoding": "base64", "MD5": Md5::of(&img).to_string(), "content": b64(&img)});
    let resp = ing
        .http
        .post(format!("{}/api/v1/job", ing.url))
        .bearer_auth(imagejobs::auth::SEED_EXAMPLE_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "QUEUED");
    assert_eq!(loc, format!("/api/v1/job/{}", v["id"].as_str().unwrap()));
}

#[tokio::test]
async fn an_accepted_job_sits_in_the_work_queue_as_specified() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let img = png(32, 24);
    let md5 = Md5::of(&img);
    let resp = ing
        .http
        .post(format!("{}/api/v1/job", ing.url))
        .bearer_auth(token(42, 7))
        .header("content-type", "image/png")
        .header("content-md5", b64(&md5.0))
        .body(img.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (_conn, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    let msg = get_job(&ch, topo, Duration::from_secs(5)).await;
    let props = &msg.delivery.properties;
    assert_eq!(msg.delivery.data, img, "body is the raw image bytes");
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("image/png")
    );
    assert!(props.timestamp().is_some());
    let headers = props.headers().as_ref().unwrap().inner();
    assert_eq!(headers.get("tenant_id"), Some(&AMQPValue::LongLongInt(42)));
    assert_eq!(headers.get("client_id"), Some(&AMQPValue::LongLongInt(7)));
    assert_eq!(
        headers.get("md5"),
        Some(&AMQPValue::LongString(md5.to_string().into()))
    );
    assert!(
        headers.get("x-attempt").is_none(),
        "first attempt carries no x-attempt"
    );
    assert_eq!(msg.delivery.routing_key.as_str(), "submit");
    assert_eq!(msg.delivery.exchange.as_str(), topo.jobs_exchange());

    // The QUEUED event is on the stream, and this replica answers for the job at once.
    let status: Value = ing
        .http
        .get(format!("{}/api/v1/job/{id}/status", ing.url))
        .bearer_auth(token(42, 7))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "QUEUED");
}

#[tokio::test]
async fn idempotency_key_gives_one_id_and_one_message() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let img = png(8, 8);
    let send = |key: &'static str, tenant: i64| {
        ing.http
            .post(format!("{}/api/v1/job", ing.url))
            .bearer_auth(token(tenant, 1))
            .header("content-type", "image/png")
            .header("idempotency-key", key)
            .body(img.clone())
            .send()
    };
    let (a, b) = tokio::join!(send("order-1", 1), send("order-1", 1));
    let c = send("order-1", 1).await.unwrap();
    let other_tenant = send("order-1", 2).await.unwrap();
    let id = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a, b, c, d) = (
        id(a.unwrap()).await,
        id(b.unwrap()).await,
        id(c).await,
        id(other_tenant).await,
    );
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_ne!(a, d, "keys are per tenant");

    let (_conn, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    eventually(
        Duration::from_secs(5),
        "two messages in the work queue",
        || async { (jobs_len(&ch, topo).await == 2).then_some(()) },
    )
    .await;
    let m1 = get_job(&ch, topo, Duration::from_secs(2)).await;
    let m2 = get_job(&ch, topo, Duration::from_secs(2)).await;
    let mut ids = vec![
        m1.delivery
            .properties
            .message_id()
            .clone()
            .unwrap()
            .to_string(),
        m2.delivery
            .properties
            .message_id()
            .clone()
            .unwrap()
            .to_string(),
    ];
    ids.sort();
    let mut want = vec![a, d];
    want.sort();
    assert_eq!(ids, want);

    let bad = ing
        .http
        .post(format!("{}/api/v1/job", ing.url))
        .bearer_auth(token(1, 1))
        .header("content-type", "image/png")
        .header("idempotency-key", "has space")
        .body(img.clone())
        .send()
        .await
        .unwrap();
    error_of(bad, 400).await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| c.broker.topology.queue_max_length = 2)
        .await;
    let img = png(8, 8);
    assert_eq!(ing.submit_raw(&img).await.status(), 202);
    assert_eq!(ing.submit_raw(&img).await.status(), 202);
    // A quorum queue enforces its limit once it has applied the messages before, so one
    // or two more may slip in; then the broker nacks and the ingress says 503.
    let mut accepted = 2;
    let resp = loop {
        let resp = ing.submit_raw(&img).await;
        if resp.status() != 202 {
            break resp;
        }
        accepted += 1;
        assert!(accepted < 10, "the queue never refused a job");
    };
    assert!(resp.headers().get("retry-after").is_some());
    error_of(resp, 503).await;
    let (_conn, ch) = p.deployment.channel().await;
    assert_eq!(jobs_len(&ch, &p.deployment.topology).await, accepted);
}

#[tokio::test]
async fn tenant_over_its_rate_gets_429() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| {
            c.tenant_rate = 1;
            c.tenant_burst = Some(2);
        })
        .await;
    let img = png(8, 8);
    assert_eq!(ing.submit_raw(&img).await.status(), 202);
    assert_eq!(ing.submit_raw(&img).await.status(), 202);
    let resp = ing.submit_raw(&img).await;
    assert!(resp.headers().get("retry-after").is_some());
    error_of(resp, 429).await;
}

#[tokio::test]
async fn broker_outage_gives_quick_503_and_recovers_without_restart() {
    let p = Pipeline::new().await;
    let proxy = Proxy::start(&p.deployment.urls.0[0]).await;
    let ing = p.ingress_with(|c| c.broker.amqp_url = proxy.urls()).await;
    let img = png(8, 8);
    assert_eq!(ing.submit_raw(&img).await.status(), 202);

    proxy.cut();
    let started = Instant::now();
    let resp = ing.submit_raw(&img).await;
    let took = started.elapsed();
    assert!(resp.headers().get("retry-after").is_some());
    error_of(resp, 503).await;
    assert!(took < Duration::from_secs(2), "503 took {took:?}");
    let ready = ing
        .http
        .get(format!("{}/readyz", ing.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // Still refused while the broker is away, and quickly.
    let started = Instant::now();
    assert_eq!(ing.submit_raw(&img).await.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2));

    proxy.restore();
    ing.wait_ready().await;
    assert_eq!(ing.submit_raw(&img).await.status(), 202);
}

#[tokio::test]
async fn health_and_ping() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let ping = ing
        .http
        .get(format!("{}/ping", ing.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.text().await.unwrap(), "pong");
    assert_eq!(
        ing.http
            .get(format!("{}/healthz", ing.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        ing.http
            .get(format!("{}/readyz", ing.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_ingress_refuses_to_start_without_a_secret() {
    let p = Pipeline::new().await;
    let mut config = p.ingress_config();
    config.jwt_secret = None;
    config.jwt_secret_file = None;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let err = imagejobs::ingress::Ingress::build(config.clone(), shutdown.clone())
        .await
        .err()
        .expect("no secret, no start");
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    config.jwt_secret_file =
        Some(std::env::temp_dir().join(format!("{}-missing-secret", p.deployment.prefix)));
    assert!(imagejobs::ingress::Ingress::build(config, shutdown)
        .await
        .is_err());
}

#[tokio::test]
async fn bodies_without_a_useful_content_type_are_sniffed() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let img = png(8, 8);
    let url = format!("{}/api/v1/job", ing.url);
    // What `curl --data-binary @x.png` sends without -H, and no type at all.
    for ct in [
        Some("application/x-www-form-urlencoded"),
        Some("application/octet-stream"),
        None,
    ] {
        let mut req = ing
            .http
            .post(&url)
            .bearer_auth(token(1, 1))
            .body(img.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        assert_eq!(req.send().await.unwrap().status(), 202, "{ct:?}");
    }
    let json = json!({"encoding": "base64", "content": b64(&img)}).to_string();
    let resp = ing
        .http
        .post(&url)
        .bearer_auth(token(1, 1))
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "JSON without a type");
    let resp = ing
        .http
        .post(&url)
        .bearer_auth(token(1, 1))
        .header("content-type", "application/octet-stream")
        .body("plain text")
        .send()
        .await
        .unwrap();
    error_of(resp, 400).await;
}
