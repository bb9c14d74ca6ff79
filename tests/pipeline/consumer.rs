//! Consumers: the flow of docs/consumer.md against real stubs and a real broker.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

use imagejobs_core::config::ByteSize;
use imagejobs_core::ids::Md5;
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn happy_path_stores_the_image_and_a_smaller_thumbnail() {
    let p = Pipeline::new().await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let img = png(300, 200);
    let id = ing.submit_id(&img).await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["content_type"], "image/png");
    assert_eq!(job["payload_size"], img.len());

    let (stored, ct) = stubs.blob(&id).expect("blob stored under the job id");
    assert_eq!(&stored[..], &img[..], "blob holds the exact bytes");
    assert_eq!(ct, "image/png");
    let thumb_loc = job["payload_location"]
        .as_str()
        .expect("SUCCESS carries a location");
    let thumb = reqwest::get(thumb_loc)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let decoded = image::load_from_memory(&thumb).expect("thumbnail decodes");
    assert!(
        decoded.width() < 300 && decoded.height() < 200,
        "thumbnail is smaller"
    );

    let statuses = statuses_of(&p.deployment, &id).await;
    assert!(
        statuses.contains(&"RUNNING".to_owned()) && statuses.ends_with(&["SUCCESS".to_owned()]),
        "{statuses:?}"
    );
    let events = all_events(&p.deployment).await;
    let success = events
        .iter()
        .find(|e| e.job_id.to_string() == id && e.status == "SUCCESS")
        .unwrap();
    assert_eq!(success.payload_location.as_deref(), Some(thumb_loc));

    consumer.stop().await;
}

#[tokio::test]
async fn bursts_of_503_are_retried_in_process() {
    let p = Pipeline::with_stubs(|c| c.error_rate = 0.5).await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let consumer = p.consumer_with(|c| c.retry_max_attempts = 12).await;
    let mut ids = vec![];
    for _ in 0..5 {
        ids.push(ing.submit_id(&png(20, 20)).await);
    }
    for id in &ids {
        let job = ing.wait_terminal(id, 1, T).await;
        assert_eq!(job["status"], "SUCCESS", "{job}");
        assert_eq!(job["attempts"], 1, "no delayed retry was needed: {job}");
    }
    let s = stubs.stats();
    let total: u64 = s.endpoints.values().map(|e| e.requests).sum();
    assert!(
        total > 10,
        "503s were answered and retried ({total} requests for 5 jobs)"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_long_outage_goes_through_a_delay_queue_and_recovers() {
    let p = Pipeline::with_stubs(|c| c.error_rate = 1.0).await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let consumer = p.consumer_with(|c| c.retry_max_attempts = 2).await;
    let id = ing.submit_id(&png(20, 20)).await;
    eventually(T, "RETRYING", || async {
        let v: serde_json::Value = ing.get_job(&id, 1).await.json().await.ok()?;
        (v["status"] == "RETRYING").then_some(())
    })
    .await;
    stubs.faults().set_error_rate(0.0);
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert!(job["attempts"].as_u64().unwrap() >= 2, "{job}");
    let events = all_events(&p.deployment).await;
    let retrying = events
        .iter()
        .find(|e| e.job_id.to_string() == id && e.status == "RETRYING")
        .unwrap();
    assert!(retrying.error.is_some() && retrying.next_attempt_at.is_some());
    consumer.stop().await;
}

#[tokio::test]
async fn permanent_4xx_fails_at_once_into_the_dead_queue() {
    let p = Pipeline::with_stubs(|c| c.force_job_status = Some(422)).await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let id = ing.submit_id(&png(20, 20)).await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "FAILED");
    assert_eq!(job["attempts"], 1);
    assert!(job["error"].as_str().unwrap().contains("422"), "{job}");
    assert_eq!(
        stubs.stats().job_posts_for(&id),
        1,
        "no retries of a permanent error"
    );
    let (_c, ch) = p.deployment.channel().await;
    let dead = get_one(&ch, &p.deployment.topology.dead_queue(), T).await;
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert!(imagejobs_core::message::header_string(&headers, "x-error")
        .unwrap()
        .contains("422"));
    consumer.stop().await;
}

#[tokio::test]
async fn exhausted_delays_end_failed_in_the_dead_queue() {
    let p = Pipeline::with_stubs(|c| c.error_rate = 1.0).await;
    let ing = p.ingress().await;
    let consumer = p.consumer_with(|c| c.retry_max_attempts = 1).await;
    let img = png(20, 20);
    let id = ing.submit_id(&img).await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "FAILED", "{job}");
    assert_eq!(
        job["attempts"], 3,
        "two delays (1 s, 2 s), then give up: {job}"
    );
    let (_c, ch) = p.deployment.channel().await;
    let dead = get_one(&ch, &p.deployment.topology.dead_queue(), T).await;
    assert_eq!(dead.delivery.data, img, "the dead message keeps the image");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let why = imagejobs_core::message::header_string(&headers, "x-error").unwrap();
    assert!(why.contains("gave up after 3 attempts"), "{why}");
    let statuses = statuses_of(&p.deployment, &id).await;
    assert_eq!(
        statuses.iter().filter(|s| *s == "RETRYING").count(),
        2,
        "{statuses:?}"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_worker_failure_is_a_result_not_a_dead_letter() {
    let p = Pipeline::with_stubs(|c| c.job_fail_rate = 1.0).await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let id = ing.submit_id(&png(20, 20)).await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "FAILED");
    assert_eq!(job["attempts"], 1);
    eventually(T, "the delivery acked", || async {
        (consumer.acked() == 1).then_some(())
    })
    .await;
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    assert_eq!(queue_len(&ch, &topo.dead_queue()).await, 0);
    assert_eq!(jobs_len(&ch, topo).await, 0);
    consumer.stop().await;
}

/// Publishes a job as a direct publisher would (docs/amqp.md) and waits for the confirm.
async fn publish_job(
    ch: &lapin::Channel,
    topo: &imagejobs_core::topology::Topology,
    body: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        topo.jobs_exchange().as_str().into(),
        "submit".into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

fn job_props(id: Option<&str>, tenant: Option<AMQPValue>, md5: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(t) = tenant {
        headers.insert("tenant_id".into(), t);
    }
    headers.insert("client_id".into(), AMQPValue::LongLongInt(3));
    if let Some(m) = md5 {
        headers.insert("md5".into(), AMQPValue::LongString(LongString::from(m)));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = id {
        props = props.with_message_id(id.into());
    }
    props
}

#[tokio::test]
async fn invalid_messages_go_to_the_dead_queue_with_a_reason() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let (_c, ch) = p.deployment.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let topo = &p.deployment.topology;
    let img = png(10, 10);
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let cases: Vec<(BasicProperties, Vec<u8>, &str)> = vec![
        (
            job_props(None, Some(AMQPValue::LongLongInt(5)), None),
            img.clone(),
            "message_id",
        ),
        (
            job_props(Some("not-a-uuid"), Some(AMQPValue::LongLongInt(5)), None),
            img.clone(),
            "UUID",
        ),
        (
            job_props(Some(&ids[0]), None, None),
            img.clone(),
            "tenant_id is missing",
        ),
        (
            job_props(
                Some(&ids[1]),
                // A number in a string is still not an integer (docs/amqp.md).
                Some(AMQPValue::LongString("7".into())),
                None,
            ),
            img.clone(),
            "not an integer",
        ),
        (
            job_props(
                Some(&ids[2]),
                Some(AMQPValue::LongLongInt(5)),
                Some(&Md5::of(b"x").to_string()),
            ),
            img.clone(),
            "md5 mismatch",
        ),
        (
            job_props(Some(&ids[3]), Some(AMQPValue::LongLongInt(5)), None),
            b"just some text".to_vec(),
            "not an image",
        ),
        (
            job_props(
                Some(&uuid::Uuid::new_v4().to_string()),
                Some(AMQPValue::LongLongInt(5)),
                None,
            ),
            vec![],
            "empty",
        ),
    ];
    for (props, body, _) in &cases {
        publish_job(&ch, topo, body, props.clone()).await;
    }
    let mut reasons = vec![];
    for _ in &cases {
        let m = get_one(&ch, &topo.dead_queue(), T).await;
        let headers = m.delivery.properties.headers().clone().unwrap();
        reasons.push(imagejobs_core::message::header_string(&headers, "x-error").unwrap());
    }
    for (_, _, want) in &cases {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no dead letter says {want:?}: {reasons:?}"
        );
    }
    // A job id and a tenant exist for the MD5, image and empty-body cases: FAILED events.
    for id in &ids[2..4] {
        let job = ing.wait_terminal(id, 5, T).await;
        assert_eq!(job["status"], "FAILED");
    }
    assert_eq!(jobs_len(&ch, topo).await, 0, "nothing requeued in a loop");
    consumer.stop().await;
}

#[tokio::test]
async fn a_bad_optional_header_or_an_oversized_body_is_dead_lettered_and_reported_failed() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let consumer = p
        .consumer_with(|c| c.max_body_bytes = ByteSize(20_000))
        .await;
    let (_c, ch) = p.deployment.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let topo = &p.deployment.topology;
    let img = png(10, 10);
    let with_header = |id: &str, name: &str, value: AMQPValue| {
        let props = job_props(Some(id), Some(AMQPValue::LongLongInt(5)), None);
        let mut headers = props.headers().clone().unwrap();
        headers.insert(name.into(), value);
        props.with_headers(headers)
    };
    let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let cases = [
        (
            with_header(&ids[0], "x-attempt", AMQPValue::LongString("many".into())),
            img.clone(),
            "x-attempt is not an integer",
        ),
        (
            with_header(
                &ids[1],
                "md5",
                AMQPValue::LongString("zz".repeat(16).into()),
            ),
            img.clone(),
            "md5 is not 32 hex digits",
        ),
        (
            with_header(&ids[2], "payload_location", AMQPValue::LongLongInt(9)),
            vec![],
            "payload_location is not a string",
        ),
        (
            job_props(Some(&ids[3]), Some(AMQPValue::LongLongInt(5)), None),
            png(300, 300),
            "over MAX_BODY_BYTES",
        ),
    ];
    assert!(cases[3].1.len() > 20_000);
    for (props, body, _) in &cases {
        publish_job(&ch, topo, body, props.clone()).await;
    }
    for (id, (_, _, want)) in ids.iter().zip(&cases) {
        let job = ing.wait_terminal(id, 5, T).await;
        assert_eq!(job["status"], "FAILED", "{job}");
        assert!(job["error"].as_str().unwrap_or("").contains(want), "{job}");
    }
    let mut reasons = vec![];
    for _ in &cases {
        let m = get_one(&ch, &topo.dead_queue(), T).await;
        let headers = m.delivery.properties.headers().clone().unwrap();
        reasons.push(imagejobs_core::message::header_string(&headers, "x-error").unwrap());
    }
    for (_, _, want) in &cases {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want:?}: {reasons:?}"
        );
    }
    consumer.stop().await;
}

#[tokio::test]
async fn the_broker_refuses_a_message_over_its_max_message_size() {
    let p = Pipeline::new().await;
    let (conn, ch) = p.deployment.channel().await;
    p.deployment.declare(&conn).await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let topo = &p.deployment.topology;
    let id = uuid::Uuid::new_v4().to_string();
    let props = job_props(Some(&id), Some(AMQPValue::LongLongInt(5)), None);
    // rabbitmq/rabbitmq.conf: max_message_size = 3 MiB, the ingress's MAX_BODY_BYTES.
    let big = vec![7u8; 3 * 1024 * 1024 + 1];
    let sent = async {
        ch.basic_publish(
            topo.jobs_exchange().as_str().into(),
            "submit".into(),
            BasicPublishOptions::default(),
            &big,
            props,
        )
        .await?
        .await
    };
    let refused = tokio::time::timeout(T, sent)
        .await
        .expect("an answer in time")
        .expect_err("a 3 MiB + 1 message is refused");
    assert!(refused.to_string().contains("max size"), "{refused}");
    // The connection lives on, and nothing reached the queue.
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(jobs_len(&ch, topo).await, 0);
}

#[tokio::test]
async fn a_direct_publish_is_processed_like_an_http_submit() {
    let p = Pipeline::new().await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let consumer = p.consumer().await;
    let (_c, ch) = p.deployment.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let topo = &p.deployment.topology;
    let img = png(64, 64);
    let id = uuid::Uuid::new_v4().to_string();
    let props = job_props(
        Some(&id),
        Some(AMQPValue::LongLongInt(77)),
        Some(&Md5::of(&img).to_string()),
    )
    .with_content_type("image/png".into());
    publish_job(&ch, topo, &img, props).await;
    let job = ing.wait_terminal(&id, 77, T).await;
    assert_eq!(job["status"], "SUCCESS");
    assert_eq!(job["tenant_id"], 77);
    assert_eq!(job["md5"], Md5::of(&img).to_string());
    assert_eq!(
        ing.get_job(&id, 1).await.status(),
        404,
        "another tenant sees nothing"
    );

    // A publisher that stored the image itself sends an empty body and a location.
    let stored = format!("{}/blob/pre-{id}", stubs.blob_url);
    reqwest::Client::new()
        .put(&stored)
        .header("content-type", "image/png")
        .body(img.clone())
        .send()
        .await
        .unwrap();
    let id2 = uuid::Uuid::new_v4().to_string();
    let mut props = job_props(Some(&id2), Some(AMQPValue::LongLongInt(77)), None);
    let mut headers = props.headers().clone().unwrap();
    headers.insert(
        "payload_location".into(),
        AMQPValue::LongString(LongString::from(stored.as_str())),
    );
    props = props.with_headers(headers);
    publish_job(&ch, topo, &[], props).await;
    let job = ing.wait_terminal(&id2, 77, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    assert_eq!(
        stubs.stats().blob_puts_for(&id2),
        0,
        "no upload when the payload is stored"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn prefetch_bounds_the_calls_in_flight() {
    let p = Pipeline::with_stubs(|c| {
        c.latency_ms = 150;
        c.skip_image_work = true;
    })
    .await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let img = png(10, 10);
    let mut ids = vec![];
    for _ in 0..16 {
        ids.push(ing.submit_id(&img).await);
    }
    let consumer = p.consumer_with(|c| c.prefetch = 4).await;
    for id in &ids {
        assert_eq!(ing.wait_terminal(id, 1, T).await["status"], "SUCCESS");
    }
    let s = stubs.stats();
    let max = s.endpoints.values().map(|e| e.max_in_flight).sum::<u64>();
    let max_one = s
        .endpoints
        .values()
        .map(|e| e.max_in_flight)
        .max()
        .unwrap_or(0);
    assert!(
        max_one > 1,
        "jobs are processed concurrently (max in flight {max_one})"
    );
    assert!(
        max <= 4 * 2,
        "at most PREFETCH jobs in flight: {:?}",
        s.endpoints
    );
    assert!(
        max_one <= 4,
        "at most PREFETCH calls in flight at one endpoint: {:?}",
        s.endpoints
    );
    consumer.stop().await;
}

#[tokio::test]
async fn two_consumers_share_the_queue() {
    let p = Pipeline::with_stubs(|c| {
        c.latency_ms = 30;
        c.skip_image_work = true;
    })
    .await;
    let ing = p.ingress().await;
    let img = png(10, 10);
    let mut ids = vec![];
    for _ in 0..20 {
        ids.push(ing.submit_id(&img).await);
    }
    let a = p.consumer_with(|c| c.prefetch = 2).await;
    let b = p.consumer_with(|c| c.prefetch = 2).await;
    for id in &ids {
        assert_eq!(ing.wait_terminal(id, 1, T).await["status"], "SUCCESS");
    }
    eventually(T, "all acked", || async {
        (a.acked() + b.acked() == 20).then_some(())
    })
    .await;
    assert!(
        a.acked() > 0 && b.acked() > 0,
        "both took jobs: {} and {}",
        a.acked(),
        b.acked()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_consumer_reconnects_after_losing_the_broker() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let proxy = Proxy::start(&p.deployment.urls.0[0]).await;
    let consumer = p.consumer_with(|c| c.broker.amqp_url = proxy.urls()).await;
    let id = ing.submit_id(&png(10, 10)).await;
    assert_eq!(ing.wait_terminal(&id, 1, T).await["status"], "SUCCESS");
    proxy.cut();
    let id = ing.submit_id(&png(10, 10)).await;
    proxy.restore();
    assert_eq!(ing.wait_terminal(&id, 1, T).await["status"], "SUCCESS");
    consumer.stop().await;
}
