//! The broker as a cluster: replication of every queue, and processes that fail over
//! between the nodes of their `AMQP_URL` list. With one node (the default) the lists
//! name that node through proxies that cut it off, as a lost node would be.

use std::time::Duration;

use imagejobs_core::config::AmqpUrls;
use imagejobs_testkit::nodes::{broker_nodes, node_sh_json};
use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn every_queue_and_the_stream_replicate_to_every_node() {
    let p = Pipeline::new().await;
    let _ing = p.ingress().await; // declares the topology
    let nodes = broker_nodes();
    let topo = &p.deployment.topology;
    let mut quorum = topo.job_queues();
    quorum.push(topo.dead_queue());
    quorum.extend(topo.retry_delays().iter().map(|d| topo.retry_queue(*d)));
    let vhost = p.deployment.urls.0[0].vhost();
    for queue in &quorum {
        let members =
            node_sh_json(&["queues", "-q", "quorum_status", queue, "--vhost", &vhost]).await;
        let members = members.as_array().expect("a list of members");
        assert_eq!(members.len(), nodes, "{queue}: {members:?}");
        assert_eq!(
            members
                .iter()
                .filter(|m| m["Raft State"] == "leader")
                .count(),
            1,
            "{queue} has one leader: {members:?}"
        );
    }
    let stream = node_sh_json(&[
        "streams",
        "-q",
        "stream_status",
        &topo.events_stream(),
        "--vhost",
        &vhost,
    ])
    .await;
    let replicas = stream.as_array().expect("a list of replicas");
    assert_eq!(replicas.len(), nodes, "{replicas:?}");
    assert_eq!(
        replicas.iter().filter(|r| r["role"] == "writer").count(),
        1,
        "{replicas:?}"
    );
}

/// Two ways to one node (a proxy for each), as if it were two nodes.
async fn two_nodes(p: &Pipeline) -> (Proxy, Proxy, AmqpUrls) {
    let node = &p.deployment.urls.0[0];
    let (a, b) = (Proxy::start(node).await, Proxy::start(node).await);
    let urls = AmqpUrls(vec![a.urls().0[0].clone(), b.urls().0[0].clone()]);
    (a, b, urls)
}

/// Submits until one is accepted, within `within`; returns the id.
async fn accepted_within(ing: &TestIngress, within: Duration) -> String {
    let img = png(8, 8);
    eventually(within, "a submit accepted", || async {
        let r = ing.submit_raw(&img).await;
        if r.status() != 202 {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        v["id"].as_str().map(str::to_owned)
    })
    .await
}

#[tokio::test]
async fn an_ingress_fails_over_to_the_next_node_and_keeps_following_the_stream() {
    let p = Pipeline::new().await;
    let (a, b, urls) = two_nodes(&p).await;
    let ing = p.ingress_with(|c| c.broker.amqp_url = urls).await;
    // Another replica on the node itself: what it accepts, `ing` learns from the stream.
    let other = p.ingress().await;
    for cut in [&a, &b] {
        cut.cut();
        // Whichever node it was on, it is on the other one within moments.
        accepted_within(&ing, Duration::from_secs(5)).await;
        let id = other.submit_id(&png(8, 8)).await;
        eventually(T, "the job submitted elsewhere", || async {
            (ing.get_job(&id, 1).await.status() == 200).then_some(())
        })
        .await;
        cut.restore();
    }
}

#[tokio::test]
async fn a_node_that_refuses_connections_is_skipped() {
    let p = Pipeline::new().await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").to_string()
    };
    let node = &p.deployment.urls.0[0];
    let urls = AmqpUrls(vec![node.with_authority(&refused), node.clone()]);
    for _ in 0..3 {
        // Whichever node of the list it tries first, it is ready at once.
        let ing = p.ingress_with(|c| c.broker.amqp_url = urls.clone()).await;
        accepted_within(&ing, Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn a_consumer_fails_over_to_the_next_node() {
    let p = Pipeline::new().await;
    let (a, b, urls) = two_nodes(&p).await;
    let ing = p.ingress().await;
    let _consumer = p.consumer_with(|c| c.broker.amqp_url = urls).await;
    for cut in [&a, &b] {
        cut.cut();
        let id = ing.submit_id(&png(10, 10)).await;
        assert_eq!(ing.wait_terminal(&id, 1, T).await["status"], "SUCCESS");
        cut.restore();
    }
}

#[tokio::test]
async fn a_queued_event_that_missed_the_broker_is_kept_and_delivered() {
    use imagejobs_core::ids::{ClientId, JobId, TenantId};
    use imagejobs_core::message::JobMeta;
    use imagejobs_core::status::{Status, StatusEvent};
    let p = Pipeline::new().await;
    let proxy = Proxy::start(&p.deployment.urls.0[0]).await;
    let ing = p.ingress_with(|c| c.broker.amqp_url = proxy.urls()).await;
    proxy.cut();
    // As when the job was confirmed and the broker went away before its QUEUED was.
    let meta = JobMeta {
        id: JobId::new(),
        tenant_id: TenantId(1),
        client_id: ClientId(1),
        content_type: Some("image/png".into()),
        md5: None,
        attempt: 1,
        payload_location: None,
        payload_size: Some(1),
    };
    ing.state
        .submitter
        .outbox
        .push(StatusEvent::new(&meta, Status::Queued))
        .expect("room in the outbox");
    eventually(T, "/readyz to show the event waiting", || async {
        let r = ing
            .http
            .get(format!("{}/readyz", ing.url))
            .send()
            .await
            .ok()?;
        let code = r.status();
        let text = r.text().await.ok()?;
        (code == 503 && text.contains("1 QUEUED events waiting")).then_some(())
    })
    .await;
    proxy.restore();
    eventually(T, "the outbox to drain", || async {
        (ing.state.submitter.outbox.pending() == 0).then_some(())
    })
    .await;
    let other = p.ingress().await;
    assert_eq!(
        other.get_job(&meta.id.to_string(), 1).await.status(),
        200,
        "another replica knows the job"
    );
}
