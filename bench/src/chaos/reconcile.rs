//! After the faults: wait until every accepted job has ended, then check what the
//! pipeline promises (RELIABILITY.md) and make the table.
//!
//! [`run`] gathers what the stream, the replicas and the services say of every accepted
//! job, then runs one function per promise, each named for it:
//!
//! - [`no_job_lost`]: every accepted job has a final status on every ingress replica;
//! - [`replicas_agree`]: the replicas show it alike (status, attempts, result);
//! - [`no_status_flipped`]: its terminal events agree, and no later attempt followed one;
//! - [`success_has_blobs`]: every SUCCESS has its image and its result in the blob service;
//! - [`dead_queue_matches`]: the dead queue holds exactly the jobs that ended FAILED by the
//!   pipeline's decision (not the worker's own FAILED), each with `x-error` or `x-death`;
//! - [`every_202_visible`]: every 202 was known to every replica within [`VISIBLE_LIMIT`];
//! - [`no_unexpected_answer`]: the clients met no answer outside the contract;
//! - [`by_reference_stored`]: every 202 of an image at or above the claim-check threshold
//!   has that image in the blob service;
//! - [`blob_fault_reached_claim_check`]: the blob store's fault turned submits away, so
//!   the check above tested the claim check;
//! - [`blobs_kept`]: the blob service evicted nothing during the run (an input evicted
//!   before its worker ran would be a false FAILED).
//!
//! Each returns what it found (the jobs, the counts); the table and the summary under it
//! are made from those findings.

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
use super::faults::{Fault, Window};
use super::load::{Accepted, Ledger, Via, HEAVY_TENANT, LIGHT_TENANT};
use crate::report::table;

/// How long after its 202 every replica must know a job.
const VISIBLE_LIMIT: Duration = Duration::from_secs(5);
/// How long to wait for the accepted jobs to end after the load stopped.
const END_WITHIN: Duration = Duration::from_secs(180);
/// How long, once the stream has every end, the replicas may take to show it.
const VIEWS_WITHIN: Duration = Duration::from_secs(15);

/// The chaos ingresses' claim-check rule (docs/http-api.md, "Images by reference"), to tell
/// which 202s travel by reference: the threshold as configured, and the largest body,
/// above which it is off.
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

/// What the replicas, the stream and the services say of one job.
#[derive(Default)]
struct Job {
    /// Per replica: what it shows of the job (None: unknown or not final).
    views: Vec<Option<View>>,
    /// Its events on the stream, in the stream's order: status and attempt.
    events: Vec<(String, u32)>,
    /// Its blob PUT or its worker POST reached the services more than once.
    duplicate_calls: bool,
}

impl Job {
    /// Its SUCCESS and FAILED events, in the stream's order.
    fn terminal_events(&self) -> impl Iterator<Item = &(String, u32)> {
        self.events.iter().filter(|(s, _)| is_terminal(s))
    }

    /// More than one terminal event (at-least-once delivery; the index keeps the first).
    fn duplicate_terminal(&self) -> bool {
        self.terminal_events().nth(1).is_some()
    }

    /// After its first terminal event, a terminal event that says otherwise, or any event
    /// of a later attempt.
    fn flipped(&self) -> bool {
        let mut first: Option<&(String, u32)> = None;
        for ev in &self.events {
            if let Some((status, attempt)) = first {
                if ev.1 > *attempt || (is_terminal(&ev.0) && ev.0 != *status) {
                    return true;
                }
            } else if is_terminal(&ev.0) {
                first = Some(ev);
            }
        }
        false
    }

    /// What the first replica shows: the job's end as the summary counts it.
    fn first_view(&self) -> Option<&View> {
        self.views.first()?.as_ref()
    }
}

type Jobs = HashMap<JobId, Job>;

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

/// Waits for the accepted jobs to end, runs every check, and makes the table, the summary
/// and the verdict; `passed` when no check failed.
pub async fn run(i: Inputs<'_>) -> anyhow::Result<Outcome> {
    let accepted = accepted_once(i.ledger);
    let events = wait_until_ended(i.reader, &accepted).await;
    let jobs = gather(&i, &accepted, &events).await;
    let blob_len = |id: &str| i.stubs.blob(id).map(|(data, _)| data.len());

    // The promises, in the order their failures are listed.
    let lost = no_job_lost(&jobs);
    let disagree = replicas_agree(&jobs);
    let flipped = no_status_flipped(&jobs);
    let blobs = success_has_blobs(&jobs, blob_len);
    let dead = dead_queue_matches(&jobs, dead_letters(i.deployment).await?);
    let visible = every_202_visible(i.ledger, i.windows);
    let answers = no_unexpected_answer(i.ledger);
    let stored = by_reference_stored(i.ledger, i.claim_check, blob_len);
    let refusals = blob_unavailable(i.http, i.ingress_urls).await;
    let reached = blob_fault_reached_claim_check(i.windows, &stored, refusals);
    // The stubs started with this run, so every eviction happened during it.
    let kept = blobs_kept(i.stubs.stats().blobs_evicted);
    let checks: [&dyn Check; 10] = [
        &lost, &disagree, &flipped, &blobs, &dead, &visible, &answers, &stored, &reached, &kept,
    ];
    let failures: Vec<String> = checks.iter().flat_map(|c| c.failures()).collect();

    let mut md = fault_table(&i, &jobs, &lost, &flipped, &disagree);
    let found = Found {
        dead: &dead,
        visible: &visible,
        stored: &stored,
        reached: &reached,
    };
    md.push_str(&summary(&i, &jobs, &found).await);
    md.push_str(&verdict(&failures));
    Ok(Outcome {
        markdown: md,
        passed: failures.is_empty(),
    })
}

/// The accepted job ids, each once (a retried submit may be accepted twice).
fn accepted_once(ledger: &Ledger) -> Vec<JobId> {
    let mut seen = HashSet::new();
    ledger
        .accepted
        .iter()
        .map(|a| a.id)
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Waits until the stream has a terminal event of every accepted job, at most
/// [`END_WITHIN`] (the checks then count the rest as lost); every event of the stream.
async fn wait_until_ended(reader: &mut EventReader, accepted: &[JobId]) -> Vec<StatusEvent> {
    let end = Instant::now() + END_WITHIN;
    loop {
        let events = reader.caught_up(Duration::from_secs(30)).await;
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
            return events;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What is known of every accepted job: its events, whether the services saw its calls
/// twice, and what each replica shows of it.
async fn gather(i: &Inputs<'_>, accepted: &[JobId], events: &[StatusEvent]) -> Jobs {
    let mut jobs: Jobs = accepted.iter().map(|id| (*id, Job::default())).collect();
    for ev in events {
        if let Some(job) = jobs.get_mut(&ev.job_id) {
            job.events.push((ev.status.clone(), ev.attempt));
        }
    }
    let stats = i.stubs.stats();
    for (id, job) in &mut jobs {
        let id = id.to_string();
        job.duplicate_calls = stats.blob_puts_for(&id) > 1 || stats.job_posts_for(&id) > 1;
    }
    let tenant_of = tenants(i.ledger);
    let (http, urls) = (i.http, i.ingress_urls);
    let token_of = |id: &JobId| {
        let tenant = tenant_of.get(id).copied().unwrap_or(1);
        i.tokens.get(&tenant).map_or("", String::as_str)
    };
    // The replicas' indexes follow the stream moments after this run's reader of it: the
    // jobs a replica does not show final yet are asked again until VIEWS_WITHIN.
    let until = Instant::now() + VIEWS_WITHIN;
    let mut ask: Vec<JobId> = accepted.to_vec();
    loop {
        let views = futures::stream::iter(ask.iter().map(|id| (*id, token_of(id))))
            .map(|(id, token)| async move { (id, views_of(http, urls, token, id).await) })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        ask.clear();
        for (id, v) in views {
            if v.iter().any(Option::is_none) {
                ask.push(id);
            }
            if let Some(job) = jobs.get_mut(&id) {
                job.views = v;
            }
        }
        if ask.is_empty() || Instant::now() > until {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The tenant of each accepted job.
fn tenants(ledger: &Ledger) -> HashMap<JobId, i64> {
    ledger.accepted.iter().map(|a| (a.id, a.tenant)).collect()
}

/// What a check found: the lines it adds to the report's failed checks, none when the
/// promise held.
trait Check {
    fn failures(&self) -> Vec<String>;
}

/// The jobs that break a promise, and what the failure says of them.
struct Offenders {
    ids: HashSet<JobId>,
    /// After the count: "jobs flipped", "SUCCESS jobs lack their image or result blob".
    what: &'static str,
    /// What a reader needs to see of a few of them to find the cause (a flip's events).
    details: Vec<String>,
}

impl Offenders {
    fn new(what: &'static str, ids: impl IntoIterator<Item = JobId>) -> Offenders {
        Offenders {
            ids: ids.into_iter().collect(),
            what,
            details: Vec::new(),
        }
    }

    /// Adds a line of `detail` for each of the first few offenders.
    fn detailed(mut self, detail: impl Fn(&JobId) -> String) -> Offenders {
        let mut ids: Vec<&JobId> = self.ids.iter().collect();
        ids.sort();
        self.details = ids.into_iter().take(5).map(detail).collect();
        self
    }

    fn contains(&self, id: &JobId) -> bool {
        self.ids.contains(id)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

impl Check for Offenders {
    fn failures(&self) -> Vec<String> {
        if self.ids.is_empty() {
            return Vec::new();
        }
        let mut lines = vec![format!(
            "{} {}: {}",
            self.ids.len(),
            self.what,
            sample(&self.ids)
        )];
        lines.extend(self.details.iter().map(|d| format!("  - {d}")));
        lines
    }
}

/// The ids of the jobs `breaks` holds for.
fn offending<'a>(
    jobs: &'a Jobs,
    breaks: impl Fn(&Job) -> bool + 'a,
) -> impl Iterator<Item = JobId> + 'a {
    jobs.iter()
        .filter(move |(_, j)| breaks(j))
        .map(|(id, _)| *id)
}

/// Nothing accepted is lost: every replica shows every accepted job in a final status.
/// A 202 promises the job will run to an end that every reader of the index sees; a job
/// a replica does not know, or shows unfinished once the stream has its end, is one the
/// pipeline dropped (a lost message, event or index update).
fn no_job_lost(jobs: &Jobs) -> Offenders {
    Offenders::new(
        "jobs lost (unknown or not final on a replica)",
        offending(jobs, |j| j.views.iter().any(Option::is_none)),
    )
}

/// The replicas agree: every replica that shows a job final shows the same status,
/// attempts, result location and error. Each replica builds its index from the same
/// stream, so a difference means one applied events in another order or missed one (the
/// index's rules, such as "the first terminal status stays", must make the order not
/// matter).
fn replicas_agree(jobs: &Jobs) -> Offenders {
    Offenders::new(
        "jobs seen differently by the replicas",
        offending(jobs, |j| {
            let known: Vec<_> = j.views.iter().flatten().collect();
            known.windows(2).any(|w| w[0] != w[1])
        }),
    )
}

/// No job's outcome flipped: after its first terminal event, no terminal event says
/// otherwise and no later attempt starts. Redeliveries may repeat an outcome (at least
/// once), but a job that ended must stay ended with the same result, whichever copy a
/// reader meets first.
fn no_status_flipped(jobs: &Jobs) -> Offenders {
    Offenders::new("jobs flipped", offending(jobs, Job::flipped)).detailed(|id| {
        let events = jobs
            .get(id)
            .map(|j| j.events.as_slice())
            .unwrap_or_default();
        let events: Vec<String> = events.iter().map(|(s, a)| format!("{s} {a}")).collect();
        format!(
            "{id}, its events in the stream's order: {}",
            events.join(", ")
        )
    })
}

/// Every SUCCESS (as the first replica shows it) has its image, stored at the job's id,
/// and its result, at the location it reports, in the blob service. The consumer reports
/// SUCCESS only after its PUT and the worker's result, so a missing blob is a SUCCESS a
/// client cannot use. `blob_len` gives the bytes the blob service holds at an id.
fn success_has_blobs(jobs: &Jobs, blob_len: impl Fn(&str) -> Option<usize>) -> Offenders {
    Offenders::new(
        "SUCCESS jobs lack their image or result blob",
        jobs.iter()
            .filter(|(id, job)| {
                let Some(view) = job.first_view() else {
                    return false;
                };
                if view.status != "SUCCESS" {
                    return false;
                }
                let result = view
                    .location
                    .as_deref()
                    .and_then(|l| l.rsplit("/blob/").next());
                let has_image = blob_len(&id.to_string()).is_some();
                let has_result = result.is_some_and(|r| blob_len(r).is_some());
                !(has_image && has_result)
            })
            .map(|(id, _)| *id),
    )
}

/// What the dead queue held at the end.
struct DeadLetters {
    /// The job ids of its messages.
    ids: HashSet<JobId>,
    /// Messages with neither `x-error` nor `x-death`.
    unexplained: usize,
}

/// The dead queue against the jobs the pipeline gave up on.
struct DeadQueue {
    /// Jobs that ended FAILED by the pipeline's decision (retries exhausted, permanent
    /// or invalid), as the first replica shows them.
    gave_up: HashSet<JobId>,
    /// Job ids in the dead queue.
    dead: usize,
    /// Jobs the pipeline gave up on that are not in it.
    not_dead: HashSet<JobId>,
    /// Accepted jobs in it that did not end FAILED by the pipeline's decision.
    extra_dead: HashSet<JobId>,
    /// Dead letters that carry no reason.
    unexplained: usize,
}

/// The dead queue holds exactly the accepted jobs the pipeline gave up on, each with a
/// reason (`x-error` from the consumer, or the broker's `x-death`). A job FAILED by the
/// pipeline is one an operator must be able to find and replay; a dead letter of a job
/// that succeeded (or that the worker itself failed) would be replayed for nothing, and
/// one without a reason cannot be triaged.
fn dead_queue_matches(jobs: &Jobs, dead: DeadLetters) -> DeadQueue {
    let gave_up: HashSet<JobId> = offending(jobs, |j| {
        j.first_view().is_some_and(View::failed_by_pipeline)
    })
    .collect();
    let not_dead = gave_up.difference(&dead.ids).copied().collect();
    let extra_dead = dead
        .ids
        .iter()
        .filter(|id| jobs.contains_key(id) && !gave_up.contains(id))
        .copied()
        .collect();
    DeadQueue {
        gave_up,
        dead: dead.ids.len(),
        not_dead,
        extra_dead,
        unexplained: dead.unexplained,
    }
}

impl Check for DeadQueue {
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.not_dead.is_empty() {
            out.push(format!(
                "{} jobs the pipeline gave up on are not in the dead queue: {}",
                self.not_dead.len(),
                sample(&self.not_dead)
            ));
        }
        if !self.extra_dead.is_empty() {
            out.push(format!(
                "{} dead letters of jobs that did not end FAILED by the pipeline's decision: {}",
                self.extra_dead.len(),
                sample(&self.extra_dead)
            ));
        }
        if self.unexplained > 0 {
            out.push(format!(
                "{} dead letters carry neither x-error nor x-death",
                self.unexplained
            ));
        }
        out
    }
}

/// How soon every replica knew an HTTP-accepted job after its 202.
struct Visibility {
    /// Jobs a replica never knew (within the load's own limit).
    never: usize,
    slowest: Duration,
    p99: Duration,
}

/// Every 202 is known to every replica within [`VISIBLE_LIMIT`], not counting the time a
/// fault kept the broker from taking events ([`visible_delay`]). A 202 waits for the
/// job's QUEUED event, so a client may read its job at once from any replica; a replica
/// that lags, or an event held back for long, breaks that read-after-accept.
fn every_202_visible(ledger: &Ledger, windows: &[Window]) -> Visibility {
    let mut delays: Vec<Duration> = ledger
        .visible_after
        .iter()
        .filter_map(|(_, at, d)| d.map(|d| visible_delay(*at, d, windows)))
        .collect();
    delays.sort_unstable();
    Visibility {
        never: ledger
            .visible_after
            .iter()
            .filter(|(_, _, d)| d.is_none())
            .count(),
        slowest: delays.last().copied().unwrap_or_default(),
        p99: delays
            .get(delays.len().saturating_mul(99) / 100)
            .copied()
            .unwrap_or_default(),
    }
}

impl Check for Visibility {
    fn failures(&self) -> Vec<String> {
        if self.never == 0 && self.slowest <= VISIBLE_LIMIT {
            return Vec::new();
        }
        vec![format!(
            "202s not known to every replica within {VISIBLE_LIMIT:?}: {} never, slowest {:?}",
            self.never, self.slowest
        )]
    }
}

/// The answers the clients met that are neither a 202 nor one worth a retry.
struct Unexpected<'a>(&'a [String]);

/// No client met an answer outside the contract: under any fault a submit gets a 202 or
/// a retryable refusal (503 with `Retry-After`, a refused or broken connection), never a
/// 500 or a 4xx for a valid request, which a client would take as final.
fn no_unexpected_answer(ledger: &Ledger) -> Unexpected<'_> {
    Unexpected(&ledger.unexpected)
}

impl Check for Unexpected<'_> {
    fn failures(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|u| format!("unexpected answer: {u}"))
            .collect()
    }
}

/// The HTTP submits accepted by reference, and those whose image is not stored whole.
struct ByReference {
    accepted: usize,
    missing: Offenders,
}

/// The claim check held: every 202 of an HTTP submit at or above the threshold has its
/// image in the blob store, whole (`blob_len` is the bytes held at an id), whatever the
/// store's faults at the time: a 503 or a PUT past the ingress's timeout must have kept
/// the 202 back, since the message carries only the image's location. A direct publisher
/// sends bytes, so its jobs are not counted.
fn by_reference_stored(
    ledger: &Ledger,
    claim_check: ClaimCheck,
    blob_len: impl Fn(&str) -> Option<usize>,
) -> ByReference {
    let by_reference: Vec<&Accepted> = ledger
        .accepted
        .iter()
        .filter(|a| a.via == Via::Http && claim_check.by_reference(a.bytes))
        .collect();
    ByReference {
        accepted: by_reference.len(),
        missing: Offenders::new(
            "jobs accepted by reference lack their image in the blob store",
            by_reference
                .iter()
                .filter(|a| blob_len(&a.id.to_string()) != Some(a.bytes))
                .map(|a| a.id),
        ),
    }
}

impl Check for ByReference {
    fn failures(&self) -> Vec<String> {
        self.missing.failures()
    }
}

/// Whether the blob store's fault met the claim check.
struct BlobFaultReached {
    /// The run injected the blob store's fault.
    blob_fault: bool,
    /// Submits the replicas answered 503 because the store failed them
    /// (`blob_unavailable`).
    refusals: u64,
    /// HTTP submits accepted by reference.
    by_reference: usize,
}

/// The blob store's fault reached the claim check: submits were turned away because the
/// store failed them. Without such a refusal the ingress sent nothing by reference while
/// the store failed, and [`by_reference_stored`] would prove only that the consumers
/// uploaded; this keeps that check from passing for nothing.
fn blob_fault_reached_claim_check(
    windows: &[Window],
    stored: &ByReference,
    refusals: u64,
) -> BlobFaultReached {
    BlobFaultReached {
        blob_fault: windows.iter().any(|w| w.fault == Fault::BlobStore),
        refusals,
        by_reference: stored.accepted,
    }
}

impl Check for BlobFaultReached {
    fn failures(&self) -> Vec<String> {
        if self.blob_fault && self.refusals == 0 && self.by_reference > 0 {
            return vec![
                "the blob store's fault turned no submit away (no blob_unavailable rejection): \
the images above the threshold did not go by reference"
                    .into(),
            ];
        }
        Vec::new()
    }
}

/// Blobs the blob service evicted since it started (with the run).
struct BlobsKept {
    evicted: u64,
}

/// The blob service kept every blob: it evicted none to stay within its bounds. An input
/// evicted before its worker fetched it would make a false FAILED, and a result evicted
/// would make [`success_has_blobs`] fail for the store's sake, not the pipeline's; the
/// run sizes its images so that neither may happen.
fn blobs_kept(evicted: u64) -> BlobsKept {
    BlobsKept { evicted }
}

impl Check for BlobsKept {
    fn failures(&self) -> Vec<String> {
        if self.evicted == 0 {
            return Vec::new();
        }
        vec![format!(
            "the blob store evicted {} blobs during the run (an input evicted before its worker ran is a false FAILED)",
            self.evicted
        )]
    }
}

/// A row of the table: before the faults, or from a fault's start until the next one's
/// (the last: until the load ended and the run settled).
struct Period<'a> {
    name: String,
    note: String,
    from: Instant,
    until: Instant,
    window: Option<&'a Window>,
}

fn periods<'a>(ledger: &Ledger, windows: &'a [Window], settle: Duration) -> Vec<Period<'a>> {
    let load_end = ledger
        .accepted
        .iter()
        .map(|a| a.at)
        .max()
        .unwrap_or_else(Instant::now);
    let first_start = windows.first().map_or(load_end, |w| w.start);
    std::iter::once(Period {
        name: "(before the faults)".to_owned(),
        note: String::new(),
        from: Instant::now() - Duration::from_secs(86_400),
        until: first_start,
        window: None,
    })
    .chain(windows.iter().enumerate().map(|(k, w)| Period {
        name: w.fault.name().to_owned(),
        note: w.note.clone(),
        from: w.start,
        until: windows.get(k + 1).map_or(load_end + settle, |n| n.start),
        window: Some(w),
    }))
    .collect()
}

/// The table: one row per period (jobs accepted in it, and what became of them), and
/// the totals.
fn fault_table(
    i: &Inputs<'_>,
    jobs: &Jobs,
    lost: &Offenders,
    flipped: &Offenders,
    disagree: &Offenders,
) -> String {
    let success_at = i.reader.success_by_job();
    let mut rows: Vec<[String; 10]> = Vec::new();
    for p in &periods(i.ledger, i.windows, i.settle) {
        let ids: Vec<JobId> = i
            .ledger
            .accepted
            .iter()
            .filter(|a| a.at >= p.from && a.at < p.until)
            .map(|a| a.id)
            .collect();
        let count = |f: &dyn Fn(&JobId) -> bool| ids.iter().filter(|id| f(id)).count();
        let lost_n = count(&|id| lost.contains(id));
        let dup_calls = count(&|id| jobs.get(id).is_some_and(|j| j.duplicate_calls));
        let dup_terminal = count(&|id| jobs.get(id).is_some_and(Job::duplicate_terminal));
        let flips = count(&|id| flipped.contains(id) || disagree.contains(id));
        let failed_slots: HashSet<u128> = i
            .ledger
            .failed_attempts
            .iter()
            .filter(|t| **t >= p.from && **t < p.until)
            .map(|t| t.duration_since(p.from).as_millis() / 100)
            .collect();
        let unavailable = failed_slots.len() as f64 / 10.0;
        let recovered = p
            .window
            .map(|w| recovery(w, i.ledger, &success_at, p.until));
        rows.push([
            p.name.clone(),
            p.note.clone(),
            p.window.map_or(String::new(), |w| {
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
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        jobs.len().to_string(),
        lost.len().to_string(),
        // A job may be in both sets: counted once, as the rows count it.
        jobs.keys()
            .filter(|id| flipped.contains(id) || disagree.contains(id))
            .count()
            .to_string(),
        jobs.values()
            .filter(|j| j.duplicate_calls)
            .count()
            .to_string(),
        jobs.values()
            .filter(|j| j.duplicate_terminal())
            .count()
            .to_string(),
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
    md
}

/// The findings the summary reports figures of.
struct Found<'a> {
    dead: &'a DeadQueue,
    visible: &'a Visibility,
    stored: &'a ByReference,
    reached: &'a BlobFaultReached,
}

/// The paragraphs under the table: the load, how the jobs ended, the blob store, and
/// what the columns mean.
async fn summary(i: &Inputs<'_>, jobs: &Jobs, f: &Found<'_>) -> String {
    let mut md = String::new();
    let http = i
        .ledger
        .accepted
        .iter()
        .filter(|a| a.via == Via::Http)
        .count();
    let store = i.stubs.stats();
    let ended = |is: &dyn Fn(&View) -> bool| {
        jobs.values()
            .filter(|j| j.first_view().is_some_and(is))
            .count()
    };
    let members = i
        .cluster
        .quorum_members(&i.deployment.topology.work_queue())
        .await
        .map_or_else(|e| format!("unknown ({e:#})"), |n| n.to_string());
    let tenant_of = tenants(i.ledger);
    let per_tenant = |t: i64| tenant_of.values().filter(|&&x| x == t).count();
    let _ = write!(
        md,
        "\nTwo tenants: {} jobs of tenant {}, {} of tenant {}, over {} lanes.",
        per_tenant(HEAVY_TENANT),
        HEAVY_TENANT,
        per_tenant(LIGHT_TENANT),
        LIGHT_TENANT,
        i.deployment.topology.lanes()
    );
    let _ = write!(
        md,
        "\n{} jobs accepted ({http} by HTTP, {} of them by reference at {} bytes or more, {} by direct AMQP publish); {} SUCCESS, {} FAILED by the worker, \
{} FAILED by the pipeline (all {} in the dead queue with a reason); {} submits given up by clients after 2 minutes of retries. \
Every 202 was known to both replicas after at most {:.2} s (p99 {:.2} s) with the time a replica spent restarting or not ready, and the broker spent down or in an alarm, left out. \
The work queue has {members} member(s) (replicas). \
The blob store held {} blobs ({:.0} MiB) at the end and evicted {}; \
the ingress replicas answered {} submits 503 because it failed them (blob_unavailable).\n",
        jobs.len(),
        f.stored.accepted,
        i.claim_check.min_bytes,
        jobs.len() - http,
        ended(&|v| v.status == "SUCCESS"),
        ended(&View::failed_by_worker),
        f.dead.gave_up.len(),
        f.dead.dead,
        i.ledger.gave_up,
        f.visible.slowest.as_secs_f64(),
        f.visible.p99.as_secs_f64(),
        store.blobs_stored,
        store.blob_bytes as f64 / (1024.0 * 1024.0),
        store.blobs_evicted,
        f.reached.refusals,
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
    md
}

/// The last paragraph: every check passed, or the failures.
fn verdict(failures: &[String]) -> String {
    if failures.is_empty() {
        return "\nEvery check passed: nothing lost, nothing flipped, replicas agree, every SUCCESS has its blobs, every 202 by reference has its image stored and nothing was evicted, the dead queue holds exactly what the pipeline gave up on.\n".into();
    }
    let mut md = "\nFAILED checks:\n".to_owned();
    for f in failures {
        let _ = writeln!(md, "- {f}");
    }
    md
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

/// The job ids in the dead queue, and how many dead letters carry no reason (it is
/// emptied: the run's deployment is removed afterwards).
async fn dead_letters(d: &Deployment) -> anyhow::Result<DeadLetters> {
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
    Ok(DeadLetters { ids, unexplained })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view(status: &str) -> View {
        View {
            status: status.into(),
            attempts: 1,
            location: Some(format!("http://blob/blob/{status}-result")),
            error: None,
        }
    }

    fn job(events: &[(&str, u32)], views: Vec<Option<View>>) -> Job {
        Job {
            views,
            events: events.iter().map(|(s, a)| ((*s).to_owned(), *a)).collect(),
            duplicate_calls: false,
        }
    }

    fn one(j: Job) -> (JobId, Jobs) {
        let id = JobId::new();
        (id, [(id, j)].into_iter().collect())
    }

    #[test]
    fn a_repeated_outcome_is_no_flip_but_a_duplicate() {
        let j = job(
            &[
                ("QUEUED", 0),
                ("RUNNING", 1),
                ("SUCCESS", 1),
                ("SUCCESS", 1),
            ],
            vec![],
        );
        assert!(!j.flipped());
        assert!(j.duplicate_terminal());
        let retried = job(
            &[
                ("RUNNING", 1),
                ("RETRYING", 1),
                ("RUNNING", 2),
                ("FAILED", 2),
            ],
            vec![],
        );
        assert!(!retried.flipped());
        assert!(!retried.duplicate_terminal());
    }

    #[test]
    fn another_outcome_or_a_later_attempt_after_the_end_is_a_flip() {
        for events in [
            &[("SUCCESS", 1), ("FAILED", 1)][..],
            &[("FAILED", 1), ("RUNNING", 2)],
            &[("SUCCESS", 1), ("SUCCESS", 2)],
        ] {
            let (id, jobs) = one(job(events, vec![]));
            let flipped = no_status_flipped(&jobs);
            assert!(flipped.contains(&id), "{events:?}");
            let history: Vec<String> = events.iter().map(|(s, a)| format!("{s} {a}")).collect();
            assert_eq!(
                flipped.failures(),
                [
                    format!("1 jobs flipped: {id}"),
                    format!(
                        "  - {id}, its events in the stream's order: {}",
                        history.join(", ")
                    )
                ]
            );
        }
    }

    #[test]
    fn a_replica_without_the_job_final_loses_it() {
        let (id, jobs) = one(job(&[], vec![Some(view("SUCCESS")), None]));
        assert!(no_job_lost(&jobs).contains(&id));
        // Not a disagreement: one replica does not know it.
        assert_eq!(replicas_agree(&jobs).len(), 0);
        assert_eq!(
            no_job_lost(&jobs).failures(),
            [format!(
                "1 jobs lost (unknown or not final on a replica): {id}"
            )]
        );
    }

    #[test]
    fn replicas_that_show_a_job_otherwise_disagree() {
        let mut other = view("SUCCESS");
        other.attempts = 2;
        let (id, jobs) = one(job(&[], vec![Some(view("SUCCESS")), Some(other)]));
        assert!(replicas_agree(&jobs).contains(&id));
        assert_eq!(no_job_lost(&jobs).len(), 0);
        let (_, same) = one(job(&[], vec![Some(view("FAILED")), Some(view("FAILED"))]));
        assert!(replicas_agree(&same).failures().is_empty());
    }

    #[test]
    fn a_success_needs_its_image_and_its_result() {
        let (id, jobs) = one(job(&[], vec![Some(view("SUCCESS"))]));
        let image = id.to_string();
        let both = |k: &str| (k == image || k == "SUCCESS-result").then_some(1);
        assert!(success_has_blobs(&jobs, both).failures().is_empty());
        let no_result = |k: &str| (k == image).then_some(1);
        assert!(success_has_blobs(&jobs, no_result).contains(&id));
        // A FAILED job has no result to check.
        let (_, failed) = one(job(&[], vec![Some(view("FAILED"))]));
        assert_eq!(success_has_blobs(&failed, |_| None).len(), 0);
    }

    #[test]
    fn the_dead_queue_holds_what_the_pipeline_gave_up_on() {
        let mut by_worker = view("FAILED");
        by_worker.error = Some("injected (STUB_JOB_FAIL_RATE)".into());
        let (gave_up, (worker, (ok, unknown))) =
            (JobId::new(), (JobId::new(), (JobId::new(), JobId::new())));
        let jobs: Jobs = [
            (gave_up, job(&[], vec![Some(view("FAILED"))])),
            (worker, job(&[], vec![Some(by_worker)])),
            (ok, job(&[], vec![Some(view("SUCCESS"))])),
        ]
        .into_iter()
        .collect();
        let exact = dead_queue_matches(
            &jobs,
            DeadLetters {
                // A dead letter of a job the run did not accept is none of its business.
                ids: [gave_up, unknown].into_iter().collect(),
                unexplained: 0,
            },
        );
        assert!(exact.failures().is_empty());
        assert_eq!((exact.gave_up.len(), exact.dead), (1, 2));

        let wrong = dead_queue_matches(
            &jobs,
            DeadLetters {
                ids: [worker].into_iter().collect(),
                unexplained: 1,
            },
        );
        assert_eq!(
            wrong.failures(),
            [
                format!("1 jobs the pipeline gave up on are not in the dead queue: {gave_up}"),
                format!(
                    "1 dead letters of jobs that did not end FAILED by the pipeline's decision: {worker}"
                ),
                "1 dead letters carry neither x-error nor x-death".to_owned(),
            ]
        );
    }

    #[test]
    fn a_202_must_be_visible_within_the_limit() {
        let at = Instant::now();
        let mut ledger = Ledger::default();
        ledger
            .visible_after
            .push((JobId::new(), at, Some(Duration::from_secs(1))));
        let v = every_202_visible(&ledger, &[]);
        assert!(v.failures().is_empty());
        assert_eq!((v.never, v.slowest), (0, Duration::from_secs(1)));
        ledger.visible_after.push((JobId::new(), at, None));
        assert_eq!(
            every_202_visible(&ledger, &[]).failures(),
            ["202s not known to every replica within 5s: 1 never, slowest 1s"]
        );
    }

    #[test]
    fn the_verdict_lists_every_failure() {
        assert!(verdict(&[]).starts_with("\nEvery check passed"));
        assert_eq!(
            verdict(&["a".into(), "b".into()]),
            "\nFAILED checks:\n- a\n- b\n"
        );
    }
}
