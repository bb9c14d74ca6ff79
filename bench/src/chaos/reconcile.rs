//! After the faults: wait until every accepted job has ended, then check what the
//! pipeline promises (DESIGN §8) and make the table.
//!
//! - Every accepted job has exactly one final status on every ingress replica, and the
//!   replicas agree (status, attempts, result).
//! - No job flipped: its terminal events agree, and no later attempt followed one.
//! - Every SUCCESS has its image and its result in the blob service.
//! - The dead queue holds exactly the jobs that ended FAILED by the pipeline's decision
//!   (not the worker's own FAILED), each with `x-error` or `x-death`.
//! - Every 202 was known to every replica within [`VISIBLE_LIMIT`].
//! - Every 202 of an image at or above the claim-check threshold has that image in the
//!   blob service, and the blob service evicted nothing during the run (an input evicted
//!   before its worker ran would be a false FAILED).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicGetOptions;
use tokio::time::Instant;

use imagejobs_core::ids::JobId;
use imagejobs_core::message::{header, header_string};
use imagejobs_core::status::StatusEvent;
use imagejobs_stubs::Stubs;
use imagejobs_testkit::{Deployment, EventReader};

use super::cluster::Cluster;
use super::faults::Window;
use super::load::{Ledger, Via};
use crate::report::table;

/// How long after its 202 every replica must know a job.
const VISIBLE_LIMIT: Duration = Duration::from_secs(5);
/// How long to wait for the accepted jobs to end after the load stopped.
const END_WITHIN: Duration = Duration::from_secs(180);

/// The chaos ingresses' claim-check rule (DESIGN §10.1), to tell which 202s travel by
/// reference: the threshold as configured, and the largest body, above which it is off.
#[derive(Clone, Copy, Debug)]
pub struct ClaimCheck {
    pub min_bytes: u64,
    pub max_body: u64,
}

impl ClaimCheck {
    /// Whether an image of `bytes` goes by reference: at least the threshold, which is not
    /// above the largest body (`0` sends every image by reference).
    pub fn by_reference(self, bytes: usize) -> bool {
        self.min_bytes <= self.max_body && bytes as u64 >= self.min_bytes
    }
}

pub struct Inputs<'a> {
    pub deployment: &'a Deployment,
    pub ingress_urls: &'a [String],
    pub http: &'a reqwest::Client,
    /// A bearer token of each tenant of the load.
    pub tokens: &'a HashMap<i64, String>,
    pub stubs: &'a Stubs,
    pub reader: &'a mut EventReader,
    pub ledger: &'a Ledger,
    pub windows: &'a [Window],
    pub settle: Duration,
    pub cluster: &'a Cluster,
    pub claim_check: ClaimCheck,
}

pub struct Outcome {
    pub markdown: String,
    pub passed: bool,
}

/// What the replicas and the stream say of one job.
#[derive(Default)]
struct Job {
    /// Per replica: what it shows of the job (None: unknown or not final).
    views: Vec<Option<View>>,
    terminal_events: Vec<(String, u32)>,
    flipped: bool,
    duplicate_calls: bool,
}

/// A final job as a replica shows it.
#[derive(Clone, Debug, PartialEq)]
struct View {
    status: String,
    attempts: u64,
    location: Option<String>,
    error: Option<String>,
}

impl View {
    /// FAILED by the worker's own decision (a result, not a dead letter): the stubs'
    /// injected failure, whose error the worker reports.
    fn failed_by_worker(&self) -> bool {
        self.status == "FAILED"
            && self
                .error
                .as_deref()
                .is_some_and(|e| e.contains("STUB_JOB_FAIL_RATE"))
    }

    fn failed_by_pipeline(&self) -> bool {
        self.status == "FAILED" && !self.failed_by_worker()
    }
}

fn is_terminal(s: &str) -> bool {
    matches!(s, "SUCCESS" | "FAILED")
}

pub async fn run(i: Inputs<'_>) -> anyhow::Result<Outcome> {
    let tenant_of: HashMap<JobId, i64> =
        i.ledger.accepted.iter().map(|a| (a.id, a.tenant)).collect();
    let accepted: Vec<JobId> = {
        let mut seen = HashSet::new();
        i.ledger
            .accepted
            .iter()
            .map(|a| a.id)
            .filter(|id| seen.insert(*id))
            .collect()
    };
    // Wait until the stream has a terminal event of every accepted job.
    let end = Instant::now() + END_WITHIN;
    let events = loop {
        let events = i.reader.caught_up(Duration::from_secs(30)).await;
        let done: HashSet<JobId> = events
            .iter()
            .filter(|e| is_terminal(&e.status))
            .map(|e| e.job_id)
            .collect();
        let left = accepted.iter().filter(|id| !done.contains(id)).count();
        if left == 0 || Instant::now() > end {
            if left > 0 {
                eprintln!("{left} accepted jobs have no final status after {END_WITHIN:?}");
            }
            break events;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // The replicas' indexes follow the stream within moments of a reader of it.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut jobs: HashMap<JobId, Job> = accepted.iter().map(|id| (*id, Job::default())).collect();
    check_events(&events, &mut jobs);
    let stats = i.stubs.stats();
    for (id, job) in &mut jobs {
        let id = id.to_string();
        job.duplicate_calls = stats.blob_puts_for(&id) > 1 || stats.job_posts_for(&id) > 1;
    }
    let (http, urls) = (i.http, i.ingress_urls);
    let token_of = |id: &JobId| {
        let tenant = tenant_of.get(id).copied().unwrap_or(1);
        i.tokens.get(&tenant).map_or("", String::as_str)
    };
    let views = futures::stream::iter(accepted.iter().map(|id| (*id, token_of(id))))
        .map(|(id, token)| async move { (id, views_of(http, urls, token, id).await) })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for (id, v) in views {
        if let Some(job) = jobs.get_mut(&id) {
            job.views = v;
        }
    }

    let mut failures: Vec<String> = Vec::new();
    let lost: HashSet<JobId> = jobs
        .iter()
        .filter(|(_, j)| j.views.iter().any(Option::is_none))
        .map(|(id, _)| *id)
        .collect();
    let disagree: HashSet<JobId> = jobs
        .iter()
        .filter(|(_, j)| {
            let known: Vec<_> = j.views.iter().flatten().collect();
            known.windows(2).any(|w| w[0] != w[1])
        })
        .map(|(id, _)| *id)
        .collect();
    let flipped: HashSet<JobId> = jobs
        .iter()
        .filter(|(_, j)| j.flipped)
        .map(|(id, _)| *id)
        .collect();
    for (what, set) in [
        ("lost (unknown or not final on a replica)", &lost),
        ("seen differently by the replicas", &disagree),
        ("flipped", &flipped),
    ] {
        if !set.is_empty() {
            failures.push(format!("{} jobs {what}: {}", set.len(), sample(set)));
        }
    }

    // Results and images of every SUCCESS.
    let mut missing_blobs = Vec::new();
    for (id, job) in &jobs {
        let Some(Some(view)) = job.views.first() else {
            continue;
        };
        if view.status != "SUCCESS" {
            continue;
        }
        let result = view
            .location
            .as_deref()
            .and_then(|l| l.rsplit("/blob/").next())
            .map(str::to_owned);
        let has_image = i.stubs.blob(&id.to_string()).is_some();
        let has_result = result.as_deref().is_some_and(|r| i.stubs.blob(r).is_some());
        if !(has_image && has_result) {
            missing_blobs.push(*id);
        }
    }
    if !missing_blobs.is_empty() {
        failures.push(format!(
            "{} SUCCESS jobs lack their image or result blob: {}",
            missing_blobs.len(),
            sample(&missing_blobs.iter().copied().collect())
        ));
    }

    // The dead queue against the jobs the pipeline gave up on.
    let (dead, unexplained) = dead_letters(i.deployment).await?;
    let first_view = |j: &Job| j.views.first().cloned().flatten();
    let gave_up: HashSet<JobId> = jobs
        .iter()
        .filter(|(_, j)| first_view(j).is_some_and(|v| v.failed_by_pipeline()))
        .map(|(id, _)| *id)
        .collect();
    let worker_failed = jobs
        .values()
        .filter(|j| first_view(j).is_some_and(|v| v.failed_by_worker()))
        .count();
    let not_dead: HashSet<JobId> = gave_up.difference(&dead).copied().collect();
    let extra_dead: HashSet<JobId> = dead
        .iter()
        .filter(|id| jobs.contains_key(id) && !gave_up.contains(id))
        .copied()
        .collect();
    if !not_dead.is_empty() {
        failures.push(format!(
            "{} jobs the pipeline gave up on are not in the dead queue: {}",
            not_dead.len(),
            sample(&not_dead)
        ));
    }
    if !extra_dead.is_empty() {
        failures.push(format!(
            "{} dead letters of jobs that did not end FAILED by the pipeline's decision: {}",
            extra_dead.len(),
            sample(&extra_dead)
        ));
    }
    if unexplained > 0 {
        failures.push(format!(
            "{unexplained} dead letters carry neither x-error nor x-death"
        ));
    }

    // Every 202 known to every replica within a few seconds.
    let mut delays: Vec<Duration> = i
        .ledger
        .visible_after
        .iter()
        .filter_map(|(_, at, d)| d.map(|d| visible_delay(*at, d, i.windows)))
        .collect();
    delays.sort_unstable();
    let never = i
        .ledger
        .visible_after
        .iter()
        .filter(|(_, _, d)| d.is_none())
        .count();
    let max_delay = delays.last().copied().unwrap_or_default();
    let p99 = delays
        .get(delays.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or_default();
    if never > 0 || max_delay > VISIBLE_LIMIT {
        failures.push(format!(
            "202s not known to every replica within {VISIBLE_LIMIT:?}: {never} never, slowest {max_delay:?}"
        ));
    }
    for u in &i.ledger.unexpected {
        failures.push(format!("unexpected answer: {u}"));
    }

    // The claim check: every 202 of an HTTP submit at or above the threshold has its image
    // in the blob store, whole, whatever the store's faults at the time (a 503 or a PUT past
    // the ingress's timeout must have kept the 202 back). A direct publisher sends bytes.
    let by_reference: Vec<&super::load::Accepted> = i
        .ledger
        .accepted
        .iter()
        .filter(|a| a.via == Via::Http && i.claim_check.by_reference(a.bytes))
        .collect();
    let no_blob: HashSet<JobId> = by_reference
        .iter()
        .filter(|a| {
            i.stubs
                .blob(&a.id.to_string())
                .is_none_or(|(data, _)| data.len() != a.bytes)
        })
        .map(|a| a.id)
        .collect();
    if !no_blob.is_empty() {
        failures.push(format!(
            "{} jobs accepted by reference lack their image in the blob store: {}",
            no_blob.len(),
            sample(&no_blob)
        ));
    }
    // The blob store's fault must have reached the claim check: submits turned away because
    // the store failed (else the ingress sent nothing by reference, and the check above
    // proves only that the consumers uploaded).
    let blob_fault = i
        .windows
        .iter()
        .any(|w| w.fault == super::faults::Fault::BlobStore);
    let blob_refusals = blob_unavailable(i.http, i.ingress_urls).await;
    if blob_fault && blob_refusals == 0 && !by_reference.is_empty() {
        failures.push(
            "the blob store's fault turned no submit away (no blob_unavailable rejection): \
the images above the threshold did not go by reference"
                .into(),
        );
    }
    // The stubs started with this run, so every eviction happened during it.
    let evicted = i.stubs.stats().blobs_evicted;
    if evicted > 0 {
        failures.push(format!(
            "the blob store evicted {evicted} blobs during the run (an input evicted before its worker ran is a false FAILED)"
        ));
    }

    // The table, one row per fault.
    let success_at = i.reader.success_by_job();
    let load_end = i
        .ledger
        .accepted
        .iter()
        .map(|a| a.at)
        .max()
        .unwrap_or_else(Instant::now);
    let mut rows: Vec<[String; 10]> = Vec::new();
    let first_start = i.windows.first().map_or(load_end, |w| w.start);
    let periods: Vec<(String, String, Instant, Instant, Option<&Window>)> = std::iter::once((
        "(before the faults)".to_owned(),
        String::new(),
        Instant::now() - Duration::from_secs(86_400),
        first_start,
        None,
    ))
    .chain(i.windows.iter().enumerate().map(|(k, w)| {
        let until = i
            .windows
            .get(k + 1)
            .map_or(load_end + i.settle, |n| n.start);
        (
            w.fault.name().to_owned(),
            w.note.clone(),
            w.start,
            until,
            Some(w),
        )
    }))
    .collect();
    for (name, note, from, until, window) in &periods {
        let ids: Vec<JobId> = i
            .ledger
            .accepted
            .iter()
            .filter(|a| a.at >= *from && a.at < *until)
            .map(|a| a.id)
            .collect();
        let count = |f: &dyn Fn(&JobId) -> bool| ids.iter().filter(|id| f(id)).count();
        let lost_n = count(&|id| lost.contains(id));
        let dup_calls = count(&|id| jobs.get(id).is_some_and(|j| j.duplicate_calls));
        let dup_terminal = count(&|id| jobs.get(id).is_some_and(|j| j.terminal_events.len() > 1));
        let flips = count(&|id| flipped.contains(id) || disagree.contains(id));
        let failed_slots: HashSet<u128> = i
            .ledger
            .failed_attempts
            .iter()
            .filter(|t| **t >= *from && **t < *until)
            .map(|t| t.duration_since(*from).as_millis() / 100)
            .collect();
        let unavailable = failed_slots.len() as f64 / 10.0;
        let recovered = window.map(|w| recovery(w, i.ledger, &success_at, *until));
        rows.push([
            name.clone(),
            note.clone(),
            window.map_or(String::new(), |w| {
                format!("{:.1}", w.end.duration_since(w.start).as_secs_f64())
            }),
            ids.len().to_string(),
            lost_n.to_string(),
            flips.to_string(),
            dup_calls.to_string(),
            dup_terminal.to_string(),
            format!("{unavailable:.1}"),
            recovered.map_or(String::new(), |r| match r {
                Some(d) => format!("{:.1}", d.as_secs_f64()),
                None => "not seen".into(),
            }),
        ]);
    }
    let total_dup_terminal = jobs
        .values()
        .filter(|j| j.terminal_events.len() > 1)
        .count();
    let total_dup_calls = jobs.values().filter(|j| j.duplicate_calls).count();
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        jobs.len().to_string(),
        lost.len().to_string(),
        (flipped.len() + disagree.len()).to_string(),
        total_dup_calls.to_string(),
        total_dup_terminal.to_string(),
        String::new(),
        String::new(),
    ]);
    let mut md = String::new();
    table(
        &mut md,
        &[
            "fault",
            "hit",
            "lasted (s)",
            "jobs accepted",
            "lost",
            "flipped",
            "dup. external calls",
            "dup. terminal events",
            "503s / refused (s)",
            "recovered in (s)",
        ],
        &rows,
    );
    let http = i
        .ledger
        .accepted
        .iter()
        .filter(|a| a.via == Via::Http)
        .count();
    let store = i.stubs.stats();
    let ended = |s: &str| {
        jobs.values()
            .filter(|j| first_view(j).is_some_and(|v| v.status == s))
            .count()
    };
    let members = i
        .cluster
        .quorum_members(&i.deployment.topology.work_queue())
        .await
        .map_or_else(|e| format!("unknown ({e:#})"), |n| n.to_string());
    let per_tenant = |t: i64| tenant_of.values().filter(|&&x| x == t).count();
    let _ = write!(
        md,
        "\nTwo tenants: {} jobs of tenant {}, {} of tenant {}, over {} lanes.",
        per_tenant(super::load::HEAVY_TENANT),
        super::load::HEAVY_TENANT,
        per_tenant(super::load::LIGHT_TENANT),
        super::load::LIGHT_TENANT,
        i.deployment.topology.lanes()
    );
    let _ = write!(
        md,
        "\n{} jobs accepted ({http} by HTTP, {} of them by reference at {} bytes or more, {} by direct AMQP publish); {} SUCCESS, {} FAILED by the worker, \
{} FAILED by the pipeline (all {} in the dead queue with a reason); {} submits given up by clients after 2 minutes of retries. \
Every 202 was known to both replicas after at most {:.2} s (p99 {:.2} s) with the time a replica spent restarting or not ready, and the broker spent down or in an alarm, left out. \
The work queue has {members} member(s) (replicas). \
The blob store held {} blobs ({:.0} MiB) at the end and evicted {}; \
the ingress replicas answered {blob_refusals} submits 503 because it failed them (blob_unavailable).\n",
        jobs.len(),
        by_reference.len(),
        i.claim_check.min_bytes,
        jobs.len() - http,
        ended("SUCCESS"),
        worker_failed,
        gave_up.len(),
        dead.len(),
        i.ledger.gave_up,
        max_delay.as_secs_f64(),
        p99.as_secs_f64(),
        store.blobs_stored,
        store.blob_bytes as f64 / (1024.0 * 1024.0),
        store.blobs_evicted,
    );
    md.push_str(
        "\n*lost*: accepted but unknown, or not final, on a replica at the end. *flipped*: terminal \
events that disagree, a later attempt after a terminal one, or replicas that disagree. \
*dup. external calls*: jobs whose blob PUT or worker POST reached the services more than once \
(idempotent by job id: redeliveries and retries). *dup. terminal events*: jobs with more than one \
SUCCESS/FAILED event (at-least-once; the index keeps the first). *503s / refused*: tenths of a second \
in which a client's submit or publish failed (it retried). *lasted*: from injecting the fault until it was taken back (process restarted and ready, node back in the cluster, alarm cleared). *recovered in*: from the fault's start \
until a job accepted after the last failure of the period reached SUCCESS.\n",
    );
    if failures.is_empty() {
        md.push_str("\nEvery check passed: nothing lost, nothing flipped, replicas agree, every SUCCESS has its blobs, every 202 by reference has its image stored and nothing was evicted, the dead queue holds exactly what the pipeline gave up on.\n");
    } else {
        md.push_str("\nFAILED checks:\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    Ok(Outcome {
        markdown: md,
        passed: failures.is_empty(),
    })
}

/// Terminal events of each job, and whether it flipped: terminal events that disagree,
/// or an event of a later attempt after a terminal one.
fn check_events(events: &[StatusEvent], jobs: &mut HashMap<JobId, Job>) {
    for ev in events {
        let Some(job) = jobs.get_mut(&ev.job_id) else {
            continue;
        };
        if let Some((first, attempt)) = job.terminal_events.first() {
            if ev.attempt > *attempt || (is_terminal(&ev.status) && ev.status != *first) {
                job.flipped = true;
            }
        }
        if is_terminal(&ev.status) {
            job.terminal_events.push((ev.status.clone(), ev.attempt));
        }
    }
}

/// What each replica shows of `id`: its final status, attempts and result.
async fn views_of(
    http: &reqwest::Client,
    urls: &[String],
    token: &str,
    id: JobId,
) -> Vec<Option<View>> {
    let mut out = Vec::new();
    for base in urls {
        let got = http
            .get(format!("{base}/api/v1/job/{id}"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let view = match got {
            Ok(r) if r.status() == 200 => r.json::<serde_json::Value>().await.ok().and_then(|v| {
                let status = v["status"].as_str()?.to_owned();
                is_terminal(&status).then(|| View {
                    status,
                    attempts: v["attempts"].as_u64().unwrap_or(0),
                    location: v["payload_location"].as_str().map(str::to_owned),
                    error: v["error"].as_str().map(str::to_owned),
                })
            }),
            _ => None,
        };
        out.push(view);
    }
    out
}

/// Submits the ingress replicas turned away because the blob service failed them
/// (`imagejobs_rejections_total{reason="blob_unavailable"}`, summed; a replica restarted
/// during the run counts since its restart).
async fn blob_unavailable(http: &reqwest::Client, urls: &[String]) -> u64 {
    let mut total = 0.0;
    for base in urls {
        let Ok(response) = http
            .get(format!("{base}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        total += text
            .lines()
            .filter(|l| {
                l.starts_with("imagejobs_rejections_total{")
                    && l.contains("reason=\"blob_unavailable\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total as u64
}

/// The job ids in the dead queue, and how many dead letters carry no reason.
async fn dead_letters(d: &Deployment) -> anyhow::Result<(HashSet<JobId>, usize)> {
    let (conn, ch) = d.channel().await;
    let queue = d.topology.dead_queue();
    let (mut ids, mut unexplained) = (HashSet::new(), 0);
    while let Some(m) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
    {
        let props = &m.delivery.properties;
        if let Some(id) = props
            .message_id()
            .as_ref()
            .and_then(|s| s.as_str().parse::<JobId>().ok())
        {
            ids.insert(id);
        }
        let headers = props.headers().clone().unwrap_or_default();
        let reason = header_string(&headers, header::ERROR).is_some()
            || headers.inner().contains_key(header::DEATH);
        if !reason {
            unexplained += 1;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok((ids, unexplained))
}

/// From the fault's start until a job accepted after the period's last failed attempt
/// reached SUCCESS; `None` when none did before `until`.
fn recovery(
    w: &Window,
    ledger: &Ledger,
    success_at: &HashMap<JobId, Instant>,
    until: Instant,
) -> Option<Duration> {
    let last_failure = ledger
        .failed_attempts
        .iter()
        .filter(|t| **t >= w.start && **t < until)
        .max()
        .copied()
        .unwrap_or(w.start);
    ledger
        .accepted
        .iter()
        .filter(|a| a.at >= last_failure)
        .filter_map(|a| success_at.get(&a.id))
        .min()
        .map(|t| t.saturating_duration_since(w.start))
}

fn sample(ids: &HashSet<JobId>) -> String {
    let mut v: Vec<String> = ids.iter().take(5).map(JobId::to_string).collect();
    if ids.len() > 5 {
        v.push("...".into());
    }
    v.join(", ")
}

/// How long a 202 accepted at `at` and known everywhere `d` later took to spread, not
/// counting a fault that stopped the broker from taking events: a broker restart, a node
/// stop, or an alarm (which blocks every publisher of the cluster, so a QUEUED event
/// waits in the outbox until it clears). Counted from the end of such a fault when the
/// 202 came before it ended.
fn visible_delay(at: Instant, d: Duration, windows: &[Window]) -> Duration {
    let known = at + d;
    let from = windows
        .iter()
        .filter(|w| w.fault.blocks_events())
        .filter(|w| w.start <= known && w.end >= at)
        .map(|w| w.end)
        .fold(at, Instant::max);
    d.min(known.saturating_duration_since(from))
}
