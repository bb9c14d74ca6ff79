//! Part 1, the ceiling: what the broker itself allows on this machine, measured with raw
//! lapin on the same topology the pipeline uses (publishes to `{p}.jobs`, routed to the
//! quorum queue `{p}.jobs.work`; the same job messages, persistent and `mandatory`).
//!
//! - Publish: several confirm channels, many publishes in flight on each, every publish
//!   awaiting its own confirm (no `wait_for_confirms`, no batching a client could not do).
//! - Consume: manual acks, one ack per message sent from the task that took it (as the
//!   consumer does), at the consumer's default prefetch and at the largest prefetch of the
//!   consumer grid; the ceiling is the better of the two.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use imagejobs_testkit::Deployment;

use crate::broker;
use crate::cpu::CpuSpent;
use crate::harness::Harness;
use crate::image::{Image, Size};
use crate::report::{ratio, thousands, Report, Row};

/// Messages per second of the raw broker, by image size in bytes.
#[derive(Clone, Debug, Default)]
pub struct Ceiling {
    pub publish: HashMap<usize, f64>,
    pub consume: HashMap<usize, f64>,
    /// The raw pipeline: consume, PUT the body to an HTTP sink, ack.
    pub pipeline: HashMap<usize, f64>,
    /// Broker CPU per message of the consume ceiling, in µs.
    pub consume_broker_us: HashMap<usize, f64>,
}

impl Ceiling {
    pub fn publish_at(&self, size: Size) -> Option<f64> {
        self.publish.get(&size.bytes).copied()
    }
    pub fn consume_at(&self, size: Size) -> Option<f64> {
        self.consume.get(&size.bytes).copied()
    }
    pub fn pipeline_at(&self, size: Size) -> Option<f64> {
        self.pipeline.get(&size.bytes).copied()
    }
}

/// A first guess of the publish rate, to size the runs: about 170 MB/s of bodies, at
/// most 15,000 messages per second.
pub fn guess_rate(size: Size) -> f64 {
    (170e6 / size.bytes as f64).min(15_000.0)
}

pub async fn run(h: &Harness, report: &mut Report) -> anyhow::Result<Ceiling> {
    // One lane: the raw path of a job (exchanges, then one quorum queue) as the pipeline has it.
    let d = h.deployment_with("ceiling", |t| t.job_lanes = 1);
    d.declare(&h.conn).await?;
    let result = measure(h, &d, report).await;
    h.remove(&d).await;
    result
}

async fn measure(h: &Harness, d: &Deployment, report: &mut Report) -> anyhow::Result<Ceiling> {
    let plan = &h.plan;
    let queue = d.topology.lane_queue(0);
    let mut ceiling = Ceiling::default();
    for size in plan.sizes {
        let image = Image::generate(size)?;
        let count = plan.count_for(guess_rate(size));
        let window = plan.publish_window(size.bytes);
        let mut publish = Vec::new();
        let (mut publish_cpu, mut consume_cpu) = (CpuSpent::default(), CpuSpent::default());
        let mut consume: Vec<Vec<f64>> = vec![Vec::new(); plan.ceiling_prefetch.len()];
        for rep in 1..=plan.ceiling_repeats {
            h.progress(format!(
                "ceiling {rep}/{}: {count} confirmed publishes of {}, {} channels × {window} in flight, then consuming them",
                plan.ceiling_repeats, size.label, plan.publish_channels
            ));
            let meter = h.cpu_meter(vec![]);
            let took = broker::publish_confirmed(
                &h.conn,
                plan.publish_channels,
                window,
                count,
                broker::job_message(d, &image),
            )
            .await
            .context("raw publish")?;
            publish.push(count as f64 / took.as_secs_f64());
            publish_cpu.add(&meter.spent());
            let meter = h.cpu_meter(vec![]);
            // The published messages are consumed in equal parts at each prefetch.
            let mut left = count;
            let parts = plan.ceiling_prefetch.len();
            for (i, &prefetch) in plan.ceiling_prefetch.iter().enumerate() {
                let n = if i + 1 == parts { left } else { count / parts };
                left -= n;
                let took = consume_acked(&h.conn, &queue, plan.ceiling_consumers, prefetch, n)
                    .await
                    .context("raw consume")?;
                consume[i].push(n.saturating_sub(1).max(1) as f64 / took.as_secs_f64());
            }
            consume_cpu.add(&meter.spent());
        }
        let pooled = if size == plan.reference() {
            Some(pooled_publish(h, d, &image, count, window).await?)
        } else {
            None
        };
        let reps = plan.ceiling_repeats;
        let p = median(&mut publish);
        ceiling.publish.insert(size.bytes, p.median);
        report.row(
            Row::new("1 ceiling", "raw publish, confirmed")
                .size(size.label)
                .setting(format!(
                    "{} ch × {window} in flight{}",
                    plan.publish_channels,
                    p.note(reps)
                ))
                .result(format!("{} msg/s", thousands(p.median)))
                .ratio("1.00 (publish ceiling)")
                .cpu(publish_cpu.per_job(count * reps)),
        );
        if let Some(row) = pooled {
            let rate = row.1;
            report.row(row.0.ratio(ratio(rate, Some(p.median), "publish ceiling")));
        }
        let mut best = 0.0f64;
        for (i, &prefetch) in plan.ceiling_prefetch.iter().enumerate() {
            let c = median(&mut consume[i]);
            best = best.max(c.median);
            report.row(
                Row::new("1 ceiling", "raw consume, manual acks")
                    .size(size.label)
                    .setting(format!(
                        "{} consumer × prefetch {prefetch}{}",
                        plan.ceiling_consumers,
                        c.note(reps)
                    ))
                    .result(format!("{} msg/s", thousands(c.median))),
            );
        }
        ceiling.consume.insert(size.bytes, best);
        if let Some(us) = consume_cpu.micros_of("broker", count * reps) {
            ceiling.consume_broker_us.insert(size.bytes, us);
        }
        report.row(
            Row::new("1 ceiling", "consume ceiling (better prefetch)")
                .size(size.label)
                .result(format!("{} msg/s", thousands(best)))
                .ratio("1.00 (consume ceiling)")
                .cpu(consume_cpu.per_job(count * reps)),
        );
        if size != plan.sizes[0] {
            let best = raw_pipeline(h, d, &image, count, window, report).await?;
            ceiling.pipeline.insert(size.bytes, best);
        }
    }
    Ok(ceiling)
}

/// The raw pipeline ceiling of issue 10: raw lapin consume at each ceiling prefetch, one
/// `PUT` of the body to a minimal HTTP sink in this process, then the ack; no events, no
/// worker. Returns the better rate.
async fn raw_pipeline(
    h: &Harness,
    d: &Deployment,
    image: &Image,
    count: usize,
    window: usize,
    report: &mut Report,
) -> anyhow::Result<f64> {
    let plan = &h.plan;
    let sink = crate::sink::HttpSink::start().await?;
    let via = Via {
        http: h.http.clone(),
        url: sink.url.clone(),
    };
    let mut best = 0.0f64;
    let mut cpu = CpuSpent::default();
    for &prefetch in &plan.ceiling_prefetch {
        h.progress(format!(
            "ceiling: raw pipeline (consume → PUT → ack) of {count} messages of {}, prefetch {prefetch}",
            image_label(image)
        ));
        broker::publish_confirmed(
            &h.conn,
            plan.publish_channels,
            window,
            count,
            broker::job_message(d, image),
        )
        .await
        .context("raw publish for the pipeline ceiling")?;
        let meter = h.cpu_meter(vec![]);
        let took = consume_through(
            &h.conn,
            &d.topology.lane_queue(0),
            plan.ceiling_consumers,
            prefetch,
            count,
            Some(via.clone()),
        )
        .await
        .context("raw pipeline")?;
        cpu.add(&meter.spent());
        let rate = count.saturating_sub(1).max(1) as f64 / took.as_secs_f64();
        best = best.max(rate);
        report.row(
            Row::new("1 ceiling", "raw pipeline: consume → PUT → ack")
                .size(image_label(image))
                .setting(format!(
                    "{} consumer × prefetch {prefetch}; HTTP sink in the bench",
                    plan.ceiling_consumers
                ))
                .result(format!("{} msg/s", thousands(rate))),
        );
    }
    sink.stop();
    report.row(
        Row::new("1 ceiling", "pipeline ceiling (better prefetch)")
            .size(image_label(image))
            .result(format!("{} msg/s", thousands(best)))
            .ratio("1.00 (pipeline ceiling)")
            .cpu(cpu.per_job(count * plan.ceiling_prefetch.len())),
    );
    Ok(best)
}

/// The label of the plan's size that `image` was made for.
fn image_label(image: &Image) -> String {
    crate::image::human_bytes(image.png.len() as u64)
}

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// `; median of 3 (min–max)`, or nothing for a single measurement.
    fn note(&self, reps: usize) -> String {
        if reps > 1 {
            format!(
                "; median of {reps} ({}–{})",
                thousands(self.min),
                thousands(self.max)
            )
        } else {
            String::new()
        }
    }
}

fn median(v: &mut [f64]) -> Spread {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        },
        n => Spread {
            median: if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            },
            min: v[0],
            max: v[n - 1],
        },
    }
}

/// Consumes `count` messages from `queue` on `consumers` channels with `prefetch` each,
/// acking every message from a task of its own. Returns the time from the first delivery
/// to the last ack.
pub async fn consume_acked(
    conn: &Connection,
    queue: &str,
    consumers: usize,
    prefetch: u16,
    count: usize,
) -> anyhow::Result<Duration> {
    consume_through(conn, queue, consumers, prefetch, count, None).await
}

/// Where the raw pipeline ceiling sends each body before its ack.
#[derive(Clone)]
pub struct Via {
    pub http: reqwest::Client,
    /// Base URL of the blob sink (`…/api/v1`).
    pub url: String,
}

/// [`consume_acked`], with each message's body first PUT to `via` (at its message id) and
/// the answer read: the least a consumer does with a job.
pub async fn consume_through(
    conn: &Connection,
    queue: &str,
    consumers: usize,
    prefetch: u16,
    count: usize,
    via: Option<Via>,
) -> anyhow::Result<Duration> {
    let acked = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Mutex::new(None::<Instant>));
    let done = CancellationToken::new();
    let last = Arc::new(Mutex::new(None::<Instant>));
    let mut tasks = Vec::new();
    for _ in 0..consumers.max(1) {
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (acked, taken, first, last, done, via) = (
            acked.clone(),
            taken.clone(),
            first.clone(),
            last.clone(),
            done.clone(),
            via.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = done.cancelled() => break,
                    d = consumer.next() => d,
                };
                let delivery = match delivery {
                    Some(d) => d?,
                    None => anyhow::bail!("the consumer was cancelled"),
                };
                first
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Instant::now);
                // Deliveries beyond `count` are left unacked: closing the channel
                // returns them to the queue for the next measurement.
                if taken.fetch_add(1, Ordering::Relaxed) >= count {
                    continue;
                }
                let (acked, last, done, via) =
                    (acked.clone(), last.clone(), done.clone(), via.clone());
                tokio::spawn(async move {
                    let lapin::message::Delivery {
                        properties,
                        data,
                        acker,
                        ..
                    } = delivery;
                    if let Some(via) = via {
                        let id = properties.message_id().as_ref().map_or("-", |m| m.as_str());
                        let put = via
                            .http
                            .put(format!("{}/blob/{id}", via.url))
                            .header("content-type", "image/png")
                            .body(data)
                            .send()
                            .await;
                        let answered = match put {
                            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                            _ => false,
                        };
                        if !answered {
                            // The message stays unacked: the run times out and says so.
                            return;
                        }
                    }
                    if acker.ack(BasicAckOptions::default()).await.is_ok()
                        && acked.fetch_add(1, Ordering::Relaxed) + 1 == count
                    {
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                        done.cancel();
                    }
                });
            }
            let _ = ch.close(200, "consumed".into()).await;
            anyhow::Ok(())
        }));
    }
    let deadline = Duration::from_secs(120);
    if tokio::time::timeout(deadline, done.cancelled())
        .await
        .is_err()
    {
        done.cancel();
        anyhow::bail!(
            "{} of {count} messages consumed within {deadline:?}",
            acked.load(Ordering::Relaxed)
        );
    }
    for t in tasks {
        t.await.context("consumer task")??;
    }
    let first = first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .context("no delivery")?;
    let last = last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .context("no last ack")?;
    Ok(last - first)
}

/// The same publishes on connections from a `deadpool-lapin` pool, one confirm channel on
/// each, instead of several channels on one connection: what pooling connections would
/// give the ingress (issue 8 asked for the figure).
async fn pooled_publish(
    h: &Harness,
    d: &Deployment,
    image: &Image,
    count: usize,
    window: usize,
) -> anyhow::Result<(Row, f64)> {
    let plan = &h.plan;
    let url = h
        .config
        .amqp_url
        .first()
        .context("no AMQP URL")?
        .expose()
        .to_owned();
    let manager = deadpool_lapin::Manager::new(
        url,
        lapin::ConnectionProperties::default,
        async_rs::Runtime::tokio_current(),
    );
    let pool = deadpool_lapin::Pool::builder(manager)
        .max_size(plan.publish_channels)
        .build()
        .context("building the connection pool")?;
    let mut held = Vec::with_capacity(plan.publish_channels);
    for _ in 0..plan.publish_channels {
        held.push(pool.get().await.context("a pooled connection")?);
    }
    let conns: Vec<&lapin::Connection> = held.iter().map(|c| &**c).collect();
    let meter = h.cpu_meter(vec![]);
    h.progress(format!(
        "ceiling: the same publishes on {} pooled connections (deadpool-lapin)",
        conns.len()
    ));
    let took = broker::publish_confirmed_on(
        &conns,
        plan.publish_channels,
        window,
        count,
        broker::job_message(d, image),
    )
    .await
    .context("pooled publish")?;
    let cpu = meter.spent();
    consume_acked(&h.conn, &d.topology.lane_queue(0), 1, 128, count)
        .await
        .context("draining the pooled publishes")?;
    let rate = count as f64 / took.as_secs_f64();
    let row = Row::new("1 ceiling", "raw publish, confirmed, pooled connections")
        .size(plan.reference().label)
        .setting(format!(
            "deadpool-lapin: {} connections × 1 ch × {window} in flight",
            conns.len()
        ))
        .result(format!("{} msg/s", thousands(rate)))
        .cpu(cpu.per_job(count));
    for c in held {
        let _ = c.close(200, "done".into()).await;
    }
    Ok((row, rate))
}
