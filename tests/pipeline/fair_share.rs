//! Fair share between tenants: the work queue's lanes, served in turn.

use std::time::Duration;

use futures::future::join_all;
use imagejobs_testkit::*;
use lapin::options::ExchangeUnbindOptions;
use lapin::types::FieldTable;

const T: Duration = Duration::from_secs(60);

/// Ready jobs in each lane (and, last, the queue of last resort).
async fn lane_lens(ch: &lapin::Channel, p: &Pipeline) -> Vec<u32> {
    let mut out = vec![];
    for q in p.deployment.topology.job_queues() {
        out.push(queue_len(ch, &q).await);
    }
    out
}

/// The lane a newly queued job went to: the one whose length grew.
async fn lane_of_next(ch: &lapin::Channel, p: &Pipeline, before: &[u32]) -> usize {
    eventually(T, "the job to reach a lane", || async {
        let now = lane_lens(ch, p).await;
        now.iter().zip(before).position(|(n, b)| n > b)
    })
    .await
}

/// Tenant 1 and another tenant whose jobs the broker hashes to another lane, found by
/// submitting one job each (no consumer runs yet); their jobs, and how many jobs of
/// tenants that share tenant 1's lane were submitted on the way.
async fn two_lanes(p: &Pipeline, ing: &TestIngress) -> (i64, String, i64, String, usize) {
    let (_c, ch) = p.deployment.channel().await;
    let img = png(8, 8);
    let before = lane_lens(&ch, p).await;
    let a_job = ing.submit_as(&img, 1).await;
    let a_lane = lane_of_next(&ch, p, &before).await;
    for b in 2..64 {
        let before = lane_lens(&ch, p).await;
        let job = ing.submit_as(&img, b).await;
        let lane = lane_of_next(&ch, p, &before).await;
        if lane != a_lane {
            return (1, a_job, b, job, (b - 2) as usize);
        }
        // Same lane as tenant 1: its job waits with theirs; another tenant is tried.
    }
    panic!("62 tenants all hashed to tenant 1's lane of 16");
}

async fn submit_many(ing: &TestIngress, tenant: i64, n: usize) -> Vec<String> {
    let img = png(8, 8);
    let mut ids = vec![];
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let sent = join_all(chunk.iter().map(|_| ing.submit_as(&img, tenant))).await;
        ids.extend(sent);
    }
    ids
}

async fn backlog_of(ing: &TestIngress, tenant: i64) -> u64 {
    let (code, stats) = ing.get_json("/api/v1/stats", tenant).await;
    assert_eq!(code, 200, "{stats}");
    let b = &stats["backlog"];
    ["queued", "running", "retrying"]
        .iter()
        .map(|k| b[k].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn a_light_tenant_is_served_while_a_heavy_backlog_waits() {
    // ~40 jobs/s with one consumer at prefetch 4: 300 jobs take about 8 s.
    let p = Pipeline::with_stubs(|c| c.running_ms = 100).await;
    let ing = p.ingress().await;
    let (a, a_job, b, b_job, _) = two_lanes(&p, &ing).await;
    let (mut a_ids, mut b_ids) = (vec![a_job], vec![b_job]);
    a_ids.extend(submit_many(&ing, a, 300).await);
    let heavy = a_ids.len() as u64;
    eventually(T, "the index to count A's backlog", || async {
        (backlog_of(&ing, a).await == heavy).then_some(())
    })
    .await;
    let consumer = p.consumer_with(|c| c.prefetch = 4).await;
    eventually(T, "the consumer to be busy with A's jobs", || async {
        (consumer.acked() >= 8).then_some(())
    })
    .await;
    b_ids.extend(submit_many(&ing, b, 4).await);
    for id in &b_ids {
        let job = ing.wait_terminal(id, b, T).await;
        assert_eq!(job["status"], "SUCCESS", "{job}");
    }
    let left = backlog_of(&ing, a).await;
    assert!(
        left * 2 >= heavy,
        "B's jobs all ended while A still had {left} of {heavy} to do (at least half)"
    );
    assert_eq!(backlog_of(&ing, b).await, 0, "and B has none left");
    // Nothing lost: A's backlog drains to the last job.
    eventually(T, "A's backlog to drain", || async {
        (backlog_of(&ing, a).await == 0).then_some(())
    })
    .await;
    for id in a_ids.iter().step_by(37) {
        assert_eq!(ing.wait_terminal(id, a, T).await["status"], "SUCCESS");
    }
    let (_c, ch) = p.deployment.channel().await;
    assert_eq!(jobs_len(&ch, &p.deployment.topology).await, 0);
}

#[tokio::test]
async fn a_job_no_lane_takes_goes_to_the_queue_of_last_resort_and_runs() {
    let p = Pipeline::new().await;
    let ing = p.ingress().await;
    let _consumer = p.consumer().await;
    let topo = &p.deployment.topology;
    // Every lane unbound: the consistent-hash exchange has nowhere to route, so its
    // alternate exchange takes the job (the publish is still confirmed and routed).
    let (_c, ch) = p.deployment.channel().await;
    for n in 0..topo.lanes() {
        ch.queue_unbind(
            topo.lane_queue(n).as_str().into(),
            topo.lanes_exchange().as_str().into(),
            "1".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let id = ing.submit_id(&png(12, 12)).await;
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    // And with the lanes exchange itself gone from the jobs exchange, a submit fails
    // (unroutable, mandatory) instead of being confirmed into nothing.
    ch.exchange_unbind(
        topo.lanes_exchange().as_str().into(),
        topo.jobs_exchange().as_str().into(),
        "submit".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let resp = ing.submit_raw(&png(12, 12)).await;
    assert_eq!(resp.status(), 503, "{:?}", resp.text().await);
}

#[tokio::test]
async fn deliveries_waiting_for_a_slot_go_back_to_their_lanes_at_shutdown() {
    let p = Pipeline::with_stubs(|c| c.running_ms = 1500).await;
    let ing = p.ingress().await;
    let (a, _, b, _, others) = two_lanes(&p, &ing).await;
    submit_many(&ing, a, 5).await;
    submit_many(&ing, b, 5).await;
    let total = (2 + others + 10) as u32;
    let consumer = p.consumer_with(|c| c.prefetch = 2).await;
    let stubs = &p.stubs;
    eventually(T, "two jobs running", || async {
        (stubs.stats().jobs_started >= 2).then_some(())
    })
    .await;
    let (_c, ch) = p.deployment.channel().await;
    let topo = &p.deployment.topology;
    // Each lane's consumer holds up to 2: more than the 2 that run.
    eventually(T, "the consumer to hold both lanes' deliveries", || async {
        (total - jobs_len(&ch, topo).await > 2).then_some(())
    })
    .await;
    consumer.stop().await;
    let ready = jobs_len(&ch, topo).await;
    let started = stubs.stats().jobs_started as u32;
    assert_eq!(
        ready + started,
        total,
        "every delivery not started is back in its lane ({started} ran)"
    );
}
