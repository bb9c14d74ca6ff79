//! Consumers that die or are stopped mid-job.

use std::time::Duration;

use imagejobs_testkit::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_consumer_killed_mid_job_leaves_one_outcome_and_idempotent_repeats() {
    let p = Pipeline::with_stubs(|c| c.running_ms = 1500).await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let first = p.child_consumer();
    let img = png(50, 40);
    let id = ing.submit_id(&img).await;
    eventually(T, "the worker to start the job", || async {
        (stubs.stats().jobs_started >= 1).then_some(())
    })
    .await;
    first.signal("KILL").await.expect("SIGKILL");

    let second = p.child_consumer();
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(job["status"], "SUCCESS", "{job}");
    let statuses = statuses_of(&p.deployment, &id).await;
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
}

#[tokio::test]
async fn sigterm_drains_jobs_in_flight_and_exits_0() {
    let p = Pipeline::with_stubs(|c| c.running_ms = 1000).await;
    let stubs = &p.stubs;
    let ing = p.ingress().await;
    let mut consumer = p.child_consumer();
    let id = ing.submit_id(&png(20, 20)).await;
    eventually(T, "the worker to start the job", || async {
        (stubs.stats().jobs_started >= 1).then_some(())
    })
    .await;
    consumer.signal("TERM").await.expect("SIGTERM");
    let code = consumer
        .wait(T)
        .await
        .expect("exits within the drain bound");
    assert_eq!(code, Some(0));
    let job = ing.wait_terminal(&id, 1, T).await;
    assert_eq!(
        job["status"], "SUCCESS",
        "the job in flight was finished before exit"
    );
    let (_c, ch) = p.deployment.channel().await;
    assert_eq!(jobs_len(&ch, &p.deployment.topology).await, 0, "and acked");
}
