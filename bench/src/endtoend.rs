//! Part 4, end to end: at a fixed offered rate of HTTP submits, the time from sending a
//! submit to its job's SUCCESS.
//!
//! The bench subscribes to the events stream itself and timestamps each SUCCESS as it
//! arrives, which is when the ingress's index follower (a reader of the same stream) can
//! apply it; polling `GET /status` would add the polling interval to every figure. The
//! load is open loop: submit *i* is sent at *i* / rate whatever the answers before it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use uuid::Uuid;

use imagejobs_core::ids::JobId;

use crate::harness::{stop_all, Harness};
use crate::image::Image;
use crate::latency::{ms, summarize};
use crate::report::{thousands, Report, Row};
use crate::submit::{Mode, Submit};
use imagejobs_core::events::Start;
use imagejobs_testkit::EventReader;

/// What the end-to-end target allows on top of the stubs' latency.
const TARGET_P99: Duration = Duration::from_millis(15);

pub async fn run(h: &Harness, report: &mut Report) -> anyhow::Result<()> {
    let d = h.deployment("e2e");
    d.declare(&h.conn).await?;
    let stubs = h.start_stubs(Duration::ZERO, false).await?;
    let result = async {
        let mut watch = EventReader::start(&d, Start::First).await;
        let ingress = h
            .start_ingress(&d, "e2e-ingress", Duration::from_secs(30))
            .await?;
        let consumers = h
            .start_consumers(
                &d,
                &stubs.stubs,
                h.plan.e2e_consumers,
                h.plan.e2e_prefetch,
                "e2e",
            )
            .await;
        let consumers = match consumers {
            Ok(c) => c,
            Err(e) => {
                stop_all(vec![ingress.service], Duration::from_secs(10)).await;
                return Err(e);
            }
        };
        let mut pids = vec![("ingress", vec![ingress.service.pid()])];
        pids.push(("consumers", consumers.iter().map(|s| s.pid()).collect()));
        let r = measure(h, &ingress.url, pids, &mut watch, report).await;
        watch.stop().await;
        let mut all = consumers;
        all.push(ingress.service);
        stop_all(all, Duration::from_secs(10)).await;
        r
    }
    .await;
    stubs.stop().await;
    h.remove(&d).await;
    result
}

async fn measure(
    h: &Harness,
    url: &str,
    pids: Vec<(&'static str, Vec<u32>)>,
    watch: &mut EventReader,
    report: &mut Report,
) -> anyhow::Result<()> {
    let size = h.plan.reference();
    let image = Image::generate(size)?;
    let submit = Submit::new(&image, Mode::Raw);
    let token = h.token(1)?;
    let target = format!("{url}/api/v1/job");
    let mut succeeded = 0usize;
    for &rate in &h.plan.e2e_rates {
        let n = ((f64::from(rate) * h.plan.e2e_secs) as usize).max(1);
        h.progress(format!(
            "end to end: {n} raw submits of {} at {rate}/s",
            size.label
        ));
        let meter = h.cpu_meter(pids.clone());
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let at = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
            tokio::time::sleep_until(at).await;
            let (http, target, token, submit) = (
                h.http.clone(),
                target.clone(),
                token.clone(),
                submit.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let resp = http
                    .post(&target)
                    .bearer_auth(&token)
                    .header("content-type", submit.content_type)
                    .body(submit.body)
                    .send()
                    .await?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await?;
                anyhow::ensure!(status == 202, "HTTP {status}: {body}");
                let id: Uuid = body["id"]
                    .as_str()
                    .context("no id in the answer")?
                    .parse()?;
                anyhow::Ok((id, sent, sent.elapsed()))
            }));
        }
        let offered_for = started.elapsed();
        let mut sent: HashMap<Uuid, Instant> = HashMap::with_capacity(n);
        let mut answer = Vec::with_capacity(n);
        for t in tasks {
            let (id, at, took) = t.await??;
            sent.insert(id, at);
            answer.push(took);
        }
        succeeded += n;
        watch
            .wait_success(succeeded, Duration::from_secs(30 + n as u64 / 10))
            .await?;
        let cpu = meter.per_job(n);
        let done = watch.success_by_job();
        let mut e2e = Vec::with_capacity(n);
        for (id, at) in &sent {
            let ok = done
                .get(&JobId(*id))
                .context("a submitted job has no SUCCESS")?;
            e2e.push(ok.saturating_duration_since(*at));
        }
        let e2e = summarize(e2e);
        let answer = summarize(answer);
        let achieved = n as f64 / offered_for.as_secs_f64();
        report.row(
            Row::new("4 end to end", "raw submit → SUCCESS event")
                .size(size.label)
                .setting(format!(
                    "{rate}/s offered ({} sent), {} proc × prefetch {}, stubs 0 ms",
                    thousands(achieved),
                    h.plan.e2e_consumers,
                    h.plan.e2e_prefetch
                ))
                .result(format!(
                    "{n} jobs, max {}",
                    e2e.map(|s| ms(s.max)).unwrap_or_default()
                ))
                .latency(e2e)
                .ratio(match answer {
                    Some(a) => format!("202 in p50 {} p99 {}", ms(a.p50), ms(a.p99)),
                    None => String::new(),
                })
                .cpu(cpu),
        );
        if rate == 100 || h.plan.e2e_rates.len() == 1 {
            report.verdict(
                format!("end to end at {rate}/s: p99 submit→SUCCESS ≤ 15 ms (stubs 0 ms)"),
                e2e.map(|s| format!("p99 {}", ms(s.p99)))
                    .unwrap_or_default(),
                e2e.map(|s| s.p99 <= TARGET_P99),
            );
        }
    }
    Ok(())
}
