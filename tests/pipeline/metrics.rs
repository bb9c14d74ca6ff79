//! Metrics and traces against the real stack: after a known set of submits, jobs, retries
//! and dead-letters, the scraped counters equal those numbers; the exposition parses
//! strictly; one submit is one trace through the ingress, the consumer and both services.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use imagejobs_testkit::exposition::{self, Exposition};
use imagejobs_testkit::spans::spans_of;
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);

async fn scrape(url: &str) -> Exposition {
    let resp = reqwest::get(url).await.expect("scrape answers");
    assert_eq!(resp.status(), 200, "{url}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.unwrap();
    let parsed = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        !text.contains("job_id") && !text.contains("trace"),
        "no per-job labels"
    );
    parsed
}

async fn submit(ing: &TestIngress, key: Option<&str>, auth: bool) -> reqwest::Response {
    let mut req = ing
        .http
        .post(format!("{}/api/v1/job", ing.url))
        .header("content-type", "image/png")
        .body(png(12, 12));
    if auth {
        req = req.bearer_auth(token(1, 1));
    }
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn counters_equal_what_happened() {
    // One delayed retry (1 s), so the job that keeps failing is dead after two attempts.
    let p = Pipeline::build(Deployment::on(amqp_urls(), "m", &[1]), pipeline_stubs()).await;
    let ing = p.ingress().await;
    let consumer = p.consumer_with(|c| c.metrics_port = Some(0)).await;
    let consumer_url = format!("http://{}/metrics", consumer.metrics_addr.unwrap());
    let ingress_url = format!("{}/metrics", ing.url);

    // Three plain submits, one refused without a token, one keyed submit sent twice.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = submit(&ing, None, true).await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(submit(&ing, None, false).await.status(), 401);
    for _ in 0..2 {
        let r = submit(&ing, Some("same-key"), true).await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 4);
    for id in &ids {
        assert_eq!(ing.wait_terminal(id, 1, T).await["status"], "SUCCESS");
    }

    // A direct publish without a tenant: dead-lettered as invalid.
    let (_c, ch) = p.deployment.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("client_id".into(), AMQPValue::LongLongInt(1));
    let props = BasicProperties::default()
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_headers(headers);
    ch.basic_publish(
        p.deployment.topology.jobs_exchange().as_str().into(),
        "submit".into(),
        BasicPublishOptions::default(),
        b"x",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // A job the worker keeps refusing with 503: three calls per attempt (two in-process
    // retries), a delayed retry, a second attempt, then the dead queue.
    p.stubs.faults().set_forced_status(Some(503));
    let failing = ing.submit_id(&png(9, 9)).await;
    let job = ing.wait_terminal(&failing, 1, T).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    p.stubs.faults().set_forced_status(None);

    let c = eventually(T, "both dead letters counted", || async {
        let c = scrape(&consumer_url).await;
        (c.count("imagejobs_dead_letters_total", &[]) == 2.0).then_some(c)
    })
    .await;
    let n = |name: &str, labels: &[(&str, &str)]| c.count(name, labels);
    // The metrics listener is also the liveness probe's target (the Helm chart).
    let health = format!("http://{}/healthz", consumer.metrics_addr.unwrap());
    let health = reqwest::get(&health).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    assert_eq!(n("imagejobs_deliveries_total", &[]), 4.0 + 1.0 + 2.0);
    assert_eq!(n("imagejobs_redeliveries_total", &[]), 0.0);
    assert_eq!(n("imagejobs_jobs_in_flight", &[]), 0.0);
    assert_eq!(n("imagejobs_jobs_total", &[("status", "SUCCESS")]), 4.0);
    assert_eq!(n("imagejobs_jobs_total", &[("status", "RETRYING")]), 1.0);
    assert_eq!(n("imagejobs_jobs_total", &[("status", "FAILED")]), 1.0);
    assert_eq!(n("imagejobs_retries_total", &[("tier", "call")]), 4.0);
    assert_eq!(n("imagejobs_retries_total", &[("tier", "delayed")]), 1.0);
    assert_eq!(
        n("imagejobs_dead_letters_total", &[("reason", "invalid")]),
        1.0
    );
    assert_eq!(
        n("imagejobs_dead_letters_total", &[("reason", "exhausted")]),
        1.0
    );
    let stage = |s: &str| n("imagejobs_stage_duration_seconds_count", &[("stage", s)]);
    assert_eq!(stage("blob"), 6.0, "4 jobs + 2 attempts");
    assert_eq!(stage("worker_submit"), 6.0);
    assert_eq!(stage("worker_run"), 4.0, "only accepted submits run");
    assert_eq!(stage("event"), 6.0, "4 SUCCESS, a RETRYING, a FAILED");
    assert_eq!(n("imagejobs_broker_connected", &[]), 1.0);
    assert_eq!(n("imagejobs_broker_connections_total", &[]), 1.0);

    let i = scrape(&ingress_url).await;
    let m = |name: &str, labels: &[(&str, &str)]| i.count(name, labels);
    let submits = "imagejobs_submits_total";
    assert_eq!(m(submits, &[("outcome", "accepted"), ("code", "202")]), 6.0);
    assert_eq!(m(submits, &[("outcome", "rejected"), ("code", "401")]), 1.0);
    assert_eq!(m(submits, &[("outcome", "unavailable")]), 0.0);
    assert_eq!(m("imagejobs_idempotency_hits_total", &[]), 1.0);
    let confirms = "imagejobs_publish_confirm_duration_seconds_count";
    assert_eq!(m(confirms, &[("message", "job")]), 5.0);
    assert_eq!(m(confirms, &[("message", "event")]), 5.0);
    let requests = "imagejobs_http_request_duration_seconds_count";
    assert_eq!(m(requests, &[("route", "/api/v1/job")]), 7.0);
    assert!(m(requests, &[("route", "/api/v1/job/{id}")]) >= 5.0);
    assert_eq!(m("imagejobs_index_jobs", &[]), 5.0);
    assert!(m("imagejobs_index_bytes", &[]) > 0.0);
    assert!(m("imagejobs_index_events_applied_total", &[]) >= 5.0 * 2.0);
    assert_eq!(m("imagejobs_broker_connected", &[]), 1.0);
    for (family, _) in i.types.iter().chain(c.types.iter()) {
        assert!(family.starts_with("imagejobs_"), "{family}");
    }

    // The stubs: requests by endpoint and the faults they injected.
    let s = scrape(&format!(
        "{}/metrics",
        p.stubs.worker_url.trim_end_matches("/api/v1")
    ))
    .await;
    assert_eq!(
        s.count("imagejobs_stub_requests_total", &[("endpoint", "job_post")]),
        4.0 + 6.0
    );
    assert_eq!(
        s.count(
            "imagejobs_stub_faults_injected_total",
            &[("kind", "forced_status")]
        ),
        6.0
    );
    consumer.stop().await;
}

#[tokio::test]
async fn rejections_are_counted_by_reason() {
    let p = Pipeline::new().await;
    let ing = p
        .ingress_with(|c| {
            c.tenant_rate = 1;
            c.tenant_burst = Some(1);
        })
        .await;
    assert_eq!(submit(&ing, None, true).await.status(), 202);
    assert_eq!(submit(&ing, None, true).await.status(), 429);
    let i = scrape(&format!("{}/metrics", ing.url)).await;
    assert_eq!(
        i.count(
            "imagejobs_rejections_total",
            &[("reason", "rate_limited"), ("code", "429")]
        ),
        1.0
    );
    assert_eq!(
        i.count(
            "imagejobs_submits_total",
            &[("outcome", "rejected"), ("code", "429")]
        ),
        1.0
    );
}

#[tokio::test]
async fn one_submit_is_one_trace_across_every_hop() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = ing
        .http
        .post(format!("{}/api/v1/job", ing.url))
        .bearer_auth(token(1, 1))
        .header("content-type", "image/png")
        .header("traceparent", caller)
        .body(png(16, 16))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ing.wait_terminal(&id, 1, T).await["status"], "SUCCESS");

    // The job message carries the trace on to the consumer.
    let spans = spans_of(trace);
    assert!(
        spans.iter().any(|s| s == "submit"),
        "ingress span: {spans:?}"
    );
    assert!(spans.iter().any(|s| s == "job"), "consumer span: {spans:?}");
    let seen = p.stubs.trace_ids();
    for endpoint in ["blob_put", "job_post"] {
        assert!(
            seen.iter().any(|(e, t)| e == endpoint && t == trace),
            "{endpoint} got the trace: {seen:?}"
        );
    }

    // A direct publish without traceparent starts a trace in the consumer, which the
    // services receive.
    let (_c, ch) = p.deployment.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let direct = uuid::Uuid::new_v4().to_string();
    let mut headers = FieldTable::default();
    headers.insert("tenant_id".into(), AMQPValue::LongLongInt(1));
    headers.insert("client_id".into(), AMQPValue::LongLongInt(1));
    let props = BasicProperties::default()
        .with_message_id(direct.as_str().into())
        .with_content_type("image/png".into())
        .with_headers(headers);
    ch.basic_publish(
        p.deployment.topology.jobs_exchange().as_str().into(),
        "submit".into(),
        BasicPublishOptions::default(),
        &png(10, 10),
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(ing.wait_terminal(&direct, 1, T).await["status"], "SUCCESS");
    let blob_traces: Vec<String> = p
        .stubs
        .trace_ids()
        .into_iter()
        .filter(|(e, _)| e == "blob_put")
        .map(|(_, t)| t)
        .collect();
    let started = blob_traces
        .iter()
        .find(|t| *t != trace)
        .expect("the direct job's blob PUT carried a trace of its own");
    assert!(spans_of(started).iter().any(|s| s == "job"));
    consumer.stop().await;
}

fn pipeline_stubs() -> imagejobs_stubs::StubConfig {
    imagejobs_testkit::pipeline::stub_config()
}
