//! Consumers that die or are stopped mid-job.

use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_consumer_killed_mid_job_leaves_one_outcome_and_idempotent_repeats() {
    let p = prefix();
    let (stubs, stop) = start_stubs(|c| c.running_ms = 1500).await;
    let ing = TestIngress::start(&amqp_url(), &p, &[]).await;
    let mut first = ChildConsumer::start(consumer_args(&amqp_url(), &p, &stubs, &[]));
    let img = png(50, 40);
    let id = submit_id(&ing, &img).await;
    eventually(T, "the worker to start the job", || async {
        (stubs.stats().jobs_started >= 1).then_some(())
    })
    .await;
    first.child.kill().await.expect("SIGKILL");

    let second = ChildConsumer::start(consumer_args(&amqp_url(), &p, &stubs, &[]));
    let job = wait_terminal(&ing, &id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let statuses = statuses_of(&p, &id).await;
    let terminal = statuses
        .iter()
        .filter(|s| *s == "SUCCESS" || *s == "FAILED")
        .count();
    assert_eq!(terminal, 1, "exactly one terminal status: {statuses:?}");
    let s = stubs.stats();
    assert_eq!(
        s.blob_puts_for(&id),
        2,
        "the blob was PUT again under the same id"
    );
    assert_eq!(
        s.job_posts_for(&id),
        2,
        "the worker was asked again with the same id"
    );
    assert_eq!(s.jobs_started, 1, "and ran it once");
    assert_eq!(&stubs.blob(&id).unwrap().0[..], &img[..]);
    drop(second);
    ing.stop().await;
    stop.cancel();
    cleanup(&p).await;
}

#[tokio::test]
async fn sigterm_drains_jobs_in_flight_and_exits_0() {
    let p = prefix();
    let (stubs, stop) = start_stubs(|c| c.running_ms = 1000).await;
    let ing = TestIngress::start(&amqp_url(), &p, &[]).await;
    let mut consumer = ChildConsumer::start(consumer_args(&amqp_url(), &p, &stubs, &[]));
    let id = submit_id(&ing, &png(20, 20)).await;
    eventually(T, "the worker to start the job", || async {
        (stubs.stats().jobs_started >= 1).then_some(())
    })
    .await;
    consumer.signal("-TERM");
    let status = tokio::time::timeout(T, consumer.child.wait())
        .await
        .expect("exits within the drain bound")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let job = wait_terminal(&ing, &id, 1, T).await;
    assert_eq!(
        job["status"], "SUCCESS",
        "the job in flight was finished before exit"
    );
    let (_c, ch) = raw_channel().await;
    assert_eq!(
        queue_len(&ch, &topology(&p, &[]).work_queue()).await,
        0,
        "and acked"
    );
    ing.stop().await;
    stop.cancel();
    cleanup(&p).await;
}
