//! `imagejobs top`: the pipeline at a glance in a terminal, for people without Grafana.
//!
//! Every interval it reads the queues' depths from the broker (passive declares), the
//! ingress's and the consumers' `/metrics`, and keeps the last FAILED events of the events
//! stream (from ten minutes back); rates are the counters' growth since the previous frame. Until Ctrl-C, or one
//! frame with `--once`.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use imagejobs_core::broker::{Broker, BrokerConfig};
use imagejobs_core::config::BrokerArgs;
use imagejobs_core::events::{self, Feed, FeedItem, Start};
use imagejobs_core::status::StatusEvent;
use imagejobs_core::topology::Topology;

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The ingress (its `/metrics`).
    #[arg(
        long = "url",
        env = "IMAGEJOBS_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    pub url: String,
    /// The consumers' metrics URLs (`http://HOST:METRICS_PORT/metrics`), comma-separated.
    #[arg(
        long = "consumer-metrics",
        env = "IMAGEJOBS_CONSUMER_METRICS",
        value_delimiter = ','
    )]
    pub consumer_metrics: Vec<String>,
    /// Seconds between frames.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Print one frame (after one interval, for the rates) and exit.
    #[arg(long)]
    pub once: bool,
}

/// FAILED events kept for the frame.
const RECENT: usize = 5;

/// Counters read from the metrics of one frame.
#[derive(Default, Clone, Copy)]
struct Totals {
    accepted: f64,
    unavailable: f64,
    success: f64,
    failed: f64,
    retrying: f64,
    in_flight: f64,
    index_jobs: f64,
    reachable: usize,
}

/// The ingress's figures of one frame.
#[derive(Default, Clone)]
struct Frame {
    totals: Totals,
    /// Each tenant's unfinished jobs (queued, running, retrying), from the ingress's index.
    tenants: Vec<(i64, [f64; 3])>,
}

pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let topo = Topology::new(&args.broker.topology);
    let conn = super::dead::connect(&args.broker).await?;
    let mut ch = None;
    // The lanes first (shown as one row and their busy ones), then the queue of last resort.
    let lanes = usize::from(topo.lanes());
    let mut queues = topo.job_queues();
    queues.extend(topo.retry_delays().iter().map(|d| topo.retry_queue(*d)));
    queues.push(topo.dead_queue());

    // The FAILED events of the last ten minutes, and from now on.
    let recent: Arc<Mutex<VecDeque<StatusEvent>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut config = BrokerConfig::new(args.broker.urls()?, "imagejobs-top", topo.clone());
    config.tls_ca = args.broker.ca_pem()?;
    // An observer: it must not create queues for settings that may not be the deployment's.
    config.declare_topology = false;
    let broker = Broker::start(config, stop.clone());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(600))
        .unwrap_or(0);
    let feed = Feed::new(broker, Start::Since(since));
    tokio::spawn(keep_failures(feed, recent.clone(), stop.clone()));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    let mut before: Option<(Instant, Totals)> = None;
    let tty = std::io::stdout().is_terminal();
    loop {
        let depths = depths(&conn, &mut ch, &queues).await;
        let totals = totals(&http, &args).await;
        let now = Instant::now();
        if !args.once || before.is_some() {
            let frame = render(&args, (lanes, &queues), &depths, &totals, before, &recent);
            if tty && !args.once {
                print!("\x1b[2J\x1b[H");
            }
            println!("{frame}");
            if args.once {
                return Ok(ExitCode::SUCCESS);
            }
        }
        before = Some((now, totals.totals));
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn keep_failures(
    mut feed: Feed,
    recent: Arc<Mutex<VecDeque<StatusEvent>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = feed.next() => item,
        };
        if let FeedItem::Message { data, .. } = item {
            let Ok(evs) = events::decode::<StatusEvent>(&data) else {
                continue;
            };
            let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
            for ev in evs.into_iter().filter(|e| e.status == "FAILED") {
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(ev);
            }
        }
    }
}

/// Ready messages and consumers of each queue; `None` when the queue cannot be read. A
/// passive declare of a missing queue closes the channel, so `ch` is opened again as needed.
async fn depths(
    conn: &Connection,
    ch: &mut Option<Channel>,
    queues: &[String],
) -> Vec<Option<(u32, u32)>> {
    let mut out = Vec::with_capacity(queues.len());
    for q in queues {
        if !ch.as_ref().is_some_and(|c| c.status().connected()) {
            *ch = tokio::time::timeout(Duration::from_secs(2), conn.create_channel())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(channel) = ch.as_ref() else {
            out.push(None);
            continue;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = tokio::time::timeout(
            Duration::from_secs(2),
            channel.queue_declare(q.as_str().into(), passive, FieldTable::default()),
        )
        .await;
        out.push(match declared {
            Ok(Ok(q)) => Some((q.message_count(), q.consumer_count())),
            _ => None,
        });
    }
    out
}

async fn scrape(http: &reqwest::Client, url: &str) -> Option<String> {
    let resp = http.get(url).send().await.ok()?;
    resp.status().is_success().then_some(())?;
    resp.text().await.ok()
}

/// Sums the samples of `name` whose labels contain `label` (e.g. `status="SUCCESS"`).
fn sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| label.is_none_or(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Each tenant's `imagejobs_tenant_jobs` samples, the largest backlog first.
fn tenants(text: &str) -> Vec<(i64, [f64; 3])> {
    const NAME: &str = "imagejobs_tenant_jobs{";
    let mut by: std::collections::BTreeMap<i64, [f64; 3]> = Default::default();
    for line in text.lines().filter(|l| l.starts_with(NAME)) {
        let label = |key: &str| {
            let at = line.find(&format!("{key}=\""))? + key.len() + 2;
            line[at..].split('"').next()
        };
        let (Some(tenant), Some(status), Some(value)) = (
            label("tenant_id").and_then(|t| t.parse::<i64>().ok()),
            label("status"),
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        let slot = match status {
            "QUEUED" => 0,
            "RUNNING" => 1,
            "RETRYING" => 2,
            _ => continue,
        };
        by.entry(tenant).or_default()[slot] += value;
    }
    let mut out: Vec<_> = by.into_iter().collect();
    out.sort_by(|a, b| {
        let total = |x: &[f64; 3]| x.iter().sum::<f64>();
        total(&b.1).total_cmp(&total(&a.1)).then(a.0.cmp(&b.0))
    });
    out
}

async fn totals(http: &reqwest::Client, args: &TopArgs) -> Frame {
    let mut frame = Frame::default();
    let t = &mut frame.totals;
    let ingress = format!("{}/metrics", args.url.trim_end_matches('/'));
    if let Some(text) = scrape(http, &ingress).await {
        frame.tenants = tenants(&text);
        t.reachable += 1;
        t.accepted = sum(
            &text,
            "imagejobs_submits_total",
            Some("outcome=\"accepted\""),
        );
        t.unavailable = sum(
            &text,
            "imagejobs_submits_total",
            Some("outcome=\"unavailable\""),
        );
        t.index_jobs = sum(&text, "imagejobs_index_jobs", None);
    }
    for url in &args.consumer_metrics {
        if let Some(text) = scrape(http, url).await {
            t.reachable += 1;
            t.success += sum(&text, "imagejobs_jobs_total", Some("status=\"SUCCESS\""));
            t.failed += sum(&text, "imagejobs_jobs_total", Some("status=\"FAILED\""));
            t.retrying += sum(&text, "imagejobs_jobs_total", Some("status=\"RETRYING\""));
            t.in_flight += sum(&text, "imagejobs_jobs_in_flight", None);
        }
    }
    frame
}

/// Tenants listed in a frame, at most.
const TENANT_ROWS: usize = 10;

fn render(
    args: &TopArgs,
    (lanes, queues): (usize, &[String]),
    depths: &[Option<(u32, u32)>],
    frame: &Frame,
    before: Option<(Instant, Totals)>,
    recent: &Mutex<VecDeque<StatusEvent>>,
) -> String {
    use std::fmt::Write;
    let now = frame.totals;
    let mut s = String::new();
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let _ = writeln!(s, "imagejobs top  {when}  (Ctrl-C quits)\n");
    let _ = writeln!(s, "{:<48} {:>9} {:>9}", "queue", "ready", "consumers");
    let row = |s: &mut String, q: &str, d: &Option<(u32, u32)>| match d {
        Some((ready, consumers)) => writeln!(s, "{q:<48} {ready:>9} {consumers:>9}"),
        None => writeln!(s, "{q:<48} {:>9} {:>9}", "?", "?"),
    };
    let lanes = lanes.min(queues.len());
    let lane_depths = &depths[..lanes.min(depths.len())];
    let total = Broker::work_depth(lane_depths);
    let name = format!("work queue, {lanes} lanes");
    let _ = row(&mut s, &name, &total);
    // Only the lanes with jobs waiting: which tenants' lanes are busy.
    for (q, d) in queues.iter().zip(lane_depths) {
        if d.is_none_or(|d| d.0 > 0) {
            let _ = row(&mut s, &format!("  {q}"), d);
        }
    }
    for (q, d) in queues.iter().zip(depths).skip(lanes) {
        let _ = row(&mut s, q, d);
    }
    let _ = writeln!(
        s,
        "\n{:<16} {:>9} {:>9} {:>9}",
        "tenant backlog", "queued", "running", "retrying"
    );
    if frame.tenants.is_empty() {
        let _ = writeln!(s, "  (no unfinished jobs)");
    }
    for (tenant, [q, r, t]) in frame.tenants.iter().take(TENANT_ROWS) {
        let _ = writeln!(s, "{:<16} {q:>9} {r:>9} {t:>9}", format!("  {tenant}"));
    }
    if frame.tenants.len() > TENANT_ROWS {
        let _ = writeln!(s, "  … and {} more", frame.tenants.len() - TENANT_ROWS);
    }
    let rate = |f: fn(&Totals) -> f64| match before {
        Some((at, b)) => {
            let secs = at.elapsed().as_secs_f64().max(0.001);
            format!("{:.1}/s", (f(&now) - f(&b)).max(0.0) / secs)
        }
        None => "-".into(),
    };
    let _ = writeln!(
        s,
        "\nrates      accepted {}  SUCCESS {}  FAILED {}  RETRYING {}  503s {}",
        rate(|t| t.accepted),
        rate(|t| t.success),
        rate(|t| t.failed),
        rate(|t| t.retrying),
        rate(|t| t.unavailable),
    );
    let _ = writeln!(
        s,
        "totals     accepted {}  SUCCESS {}  FAILED {}  index {} jobs",
        now.accepted, now.success, now.failed, now.index_jobs
    );
    let _ = writeln!(
        s,
        "in flight  {} (metrics from {} of {} processes)",
        now.in_flight,
        now.reachable,
        1 + args.consumer_metrics.len()
    );
    let _ = writeln!(s, "\nrecent failures");
    let recent = recent.lock().unwrap_or_else(|p| p.into_inner());
    if recent.is_empty() {
        let _ = writeln!(s, "  (none in the last ten minutes)");
    }
    for ev in recent.iter().rev() {
        let error: String = ev.error.as_deref().unwrap_or("").chars().take(80).collect();
        let _ = writeln!(
            s,
            "  {}  {}  tenant {}  {error}",
            ev.at, ev.job_id, ev.tenant_id.0
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_backlogs_from_the_ingress_metrics_largest_first() {
        let text = "imagejobs_tenant_jobs{tenant_id=\"7\",status=\"QUEUED\"} 40\n\
                    imagejobs_tenant_jobs{tenant_id=\"3\",status=\"QUEUED\"} 4960\n\
                    imagejobs_tenant_jobs{tenant_id=\"3\",status=\"RUNNING\"} 8\n\
                    imagejobs_tenant_jobs{tenant_id=\"x\",status=\"QUEUED\"} 1\n";
        assert_eq!(
            tenants(text),
            vec![(3, [4960.0, 8.0, 0.0]), (7, [40.0, 0.0, 0.0])]
        );
    }

    #[test]
    fn sums_the_samples_of_a_family() {
        let text = "# TYPE imagejobs_jobs counter\nimagejobs_jobs_total{status=\"SUCCESS\"} 3\nimagejobs_jobs_total{status=\"FAILED\"} 1\nimagejobs_jobs_in_flight 2\n";
        assert_eq!(
            sum(text, "imagejobs_jobs_total", Some("status=\"SUCCESS\"")),
            3.0
        );
        assert_eq!(sum(text, "imagejobs_jobs_total", None), 4.0);
        assert_eq!(sum(text, "imagejobs_jobs", None), 0.0);
        assert_eq!(sum(text, "imagejobs_jobs_in_flight", None), 2.0);
    }
}
