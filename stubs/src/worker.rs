//! The worker service stand-in: takes jobs, thumbnails their images, reports their status.
//!
//! - `POST /api/v1/job` with `{"id", "tenant_id", "client_id", "payload_location", "md5",
//!   "mime_type"}` answers `{"id": "<worker job id>"}` while the job runs, or the final result
//!   `{"id", "status", "payload_location" | "error"}` when it has already ended (always so when
//!   the RUNNING time is zero: the job is then done before the answer).
//! - `GET /api/v1/job/{worker_job_id}/status` answers `{"status": 0 | 1 | 2,
//!   "payload_location"?, "error"?}`: RUNNING, SUCCESS, FAILED, the seed's numbering.
//!
//! Jobs are deduplicated by their `id`: the worker job id is a UUID v5 of it, so a repeated
//! POST finds the job it started before, answers the same worker job id and starts nothing.
//!
//! A job's work runs in a task of its own (tracked, and stopped on shutdown), never in the
//! request's future, so a caller that hangs up mid-request does not leave a job stuck RUNNING.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::blob_client::BlobClient;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::stats::{JobEnd, Stats};
use crate::thumbnail::thumbnail_png;

/// Namespace of worker job ids (UUID v5 of the job's `id`).
const WORKER_JOB_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_3c1e_8b0a_4f5e_9a57_2b1c_0e4d_7a30);

/// Longest job id accepted.
const MAX_ID_LEN: usize = 512;

/// A job's status in the seed's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum JobStatus {
    /// Still working.
    Running = 0,
    /// Ended with a thumbnail (or, skipping the image work, the original payload).
    Success = 1,
    /// Ended without a result.
    Failed = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JobState {
    Running,
    Succeeded { payload_location: String },
    Failed { error: String },
}

/// The jobs the worker knows, by worker job id; a cheap `Clone` handle. Bounded: beyond its
/// capacity the oldest jobs are forgotten (a later POST of a forgotten id starts it again).
#[derive(Clone, Debug)]
pub(crate) struct JobTable {
    inner: Arc<Mutex<Jobs>>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Jobs {
    states: HashMap<Uuid, JobState>,
    /// Worker job ids from oldest to newest; always exactly the keys of `states`.
    order: VecDeque<Uuid>,
}

impl JobTable {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Registers the job as RUNNING unless it is known; returns its current state when known.
    fn start(&self, worker_id: Uuid) -> Option<JobState> {
        let mut jobs = self.jobs();
        if let Some(state) = jobs.states.get(&worker_id) {
            return Some(state.clone());
        }
        jobs.states.insert(worker_id, JobState::Running);
        jobs.order.push_back(worker_id);
        while jobs.states.len() > self.capacity {
            let Some(oldest) = jobs.order.pop_front() else {
                break;
            };
            jobs.states.remove(&oldest);
        }
        None
    }

    /// Records how a job ended, unless it was forgotten meanwhile.
    fn finish(&self, worker_id: Uuid, state: JobState) {
        if let Some(slot) = self.jobs().states.get_mut(&worker_id) {
            *slot = state;
        }
    }

    fn state(&self, worker_id: Uuid) -> Option<JobState> {
        self.jobs().states.get(&worker_id).cloned()
    }

    /// The table; nothing panics while holding it, but should something, a stub keeps
    /// serving with what it has, so a poisoned lock is taken over.
    fn jobs(&self) -> MutexGuard<'_, Jobs> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the worker routes and job tasks share.
#[derive(Clone, Debug)]
pub(crate) struct WorkerService {
    pub jobs: JobTable,
    pub faults: Faults,
    pub stats: Stats,
    pub blobs: BlobClient,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// Permits for decoding images, `max_decodes` of them.
    pub decodes: std::sync::Arc<tokio::sync::Semaphore>,
    pub max_pixels: u64,
}

/// The worker API routes, with full paths (the stats recognise endpoints by route).
pub(crate) fn routes(service: WorkerService) -> Router {
    Router::new()
        .route("/api/v1/job", post(post_job))
        .route("/api/v1/job/{id}/status", get(job_status))
        .with_state(service)
}

/// A job as the consumer submits it. Only `id` and `payload_location` matter to this
/// stand-in; `tenant_id`, `client_id`, `md5` and `mime_type` are accepted in any JSON type and
/// ignored, as a stand-in should not be stricter than the service it replaces.
#[derive(Debug, Deserialize)]
struct JobRequest {
    id: String,
    payload_location: String,
}

/// Answer of `POST /job`: just the id while the job runs, the result once it ended.
#[derive(Debug, Serialize)]
struct SubmitAnswer {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Answer of `GET /job/{id}/status`.
#[derive(Debug, Serialize)]
struct StatusAnswer {
    status: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl StatusAnswer {
    fn of(state: JobState) -> Self {
        match state {
            JobState::Running => Self {
                status: JobStatus::Running as u8,
                payload_location: None,
                error: None,
            },
            JobState::Succeeded { payload_location } => Self {
                status: JobStatus::Success as u8,
                payload_location: Some(payload_location),
                error: None,
            },
            JobState::Failed { error } => Self {
                status: JobStatus::Failed as u8,
                payload_location: None,
                error: Some(error),
            },
        }
    }
}

impl SubmitAnswer {
    fn of(worker_id: Uuid, state: JobState) -> Self {
        let id = worker_id.to_string();
        if state == JobState::Running {
            return Self {
                id,
                status: None,
                payload_location: None,
                error: None,
            };
        }
        let ended = StatusAnswer::of(state);
        Self {
            id,
            status: Some(ended.status),
            payload_location: ended.payload_location,
            error: ended.error,
        }
    }
}

/// Everything a job task needs to know, fixed when the job is taken.
#[derive(Debug, Clone)]
struct JobPlan {
    job_id: String,
    worker_id: Uuid,
    payload_location: Url,
    fail: bool,
    skip_image_work: bool,
    running: Duration,
}

async fn post_job(
    State(service): State<WorkerService>,
    request: Result<Json<JobRequest>, JsonRejection>,
) -> Result<Json<SubmitAnswer>, ApiError> {
    let Json(request) = request?;
    if request.id.is_empty() || request.id.len() > MAX_ID_LEN {
        return Err(ApiError::bad_request(format!(
            "job id must be 1 to {MAX_ID_LEN} bytes"
        )));
    }
    service.stats.record_job_post(&request.id);

    if let Some(code) = service.faults.forced_status() {
        service.faults.count("forced_status");
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(ApiError::new(
            status,
            "job refused",
            "forced status (STUB_FORCE_JOB_STATUS)",
        ));
    }

    let payload_location: Url = request
        .payload_location
        .parse()
        .map_err(|e| ApiError::bad_request(format!("payload_location is not a URL: {e}")))?;
    if !matches!(payload_location.scheme(), "http" | "https") {
        return Err(ApiError::bad_request(
            "payload_location must be an http(s) URL",
        ));
    }

    let worker_id = Uuid::new_v5(&WORKER_JOB_NAMESPACE, request.id.as_bytes());
    if let Some(state) = service.jobs.start(worker_id) {
        tracing::debug!(job_id = %request.id, %worker_id, "repeated job submission");
        return Ok(Json(SubmitAnswer::of(worker_id, state)));
    }
    service.stats.record_job_started();

    let fail = service.faults.fail_job(&request.id);
    if fail {
        service.faults.count("job_fail");
    }
    let plan = JobPlan {
        fail,
        skip_image_work: service.faults.skip_image_work(),
        running: service.faults.take_running(),
        job_id: request.id,
        worker_id,
        payload_location,
    };
    let inline = plan.running.is_zero();
    let span = tracing::info_span!("job", job_id = %plan.job_id, %worker_id);
    let task = service
        .tracker
        .spawn(run_job(service.clone(), plan).instrument(span));
    if inline {
        // The task records the result before it returns; a failed join can only mean the
        // runtime is shutting down, and the table then still says RUNNING, which is the truth.
        let _ = task.await;
    }
    let state = service.jobs.state(worker_id).unwrap_or(JobState::Running);
    Ok(Json(SubmitAnswer::of(worker_id, state)))
}

async fn job_status(
    State(service): State<WorkerService>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<StatusAnswer>, ApiError> {
    let Path(id) = id?;
    let state = Uuid::parse_str(&id)
        .ok()
        .and_then(|worker_id| service.jobs.state(worker_id))
        .ok_or_else(|| ApiError::not_found(format!("no worker job with id {id:?}")))?;
    Ok(Json(StatusAnswer::of(state)))
}

/// Does the job's work, keeps it RUNNING for the planned time, then records how it ended.
/// On shutdown the job is left RUNNING, as a worker that went away would leave it.
async fn run_job(service: WorkerService, plan: JobPlan) {
    let ends_at = Instant::now() + plan.running;
    let outcome = tokio::select! {
        _ = service.shutdown.cancelled() => return,
        outcome = async {
            let outcome = work(&service, &plan).await;
            tokio::time::sleep_until(ends_at).await;
            outcome
        } => outcome,
    };
    let state = match outcome {
        Ok(payload_location) => {
            tracing::debug!(%payload_location, "job succeeded");
            service.stats.record_job_end(JobEnd::Succeeded);
            JobState::Succeeded { payload_location }
        }
        Err(error) => {
            let error = format!("{error:#}");
            tracing::info!(%error, "job failed");
            service.stats.record_job_end(JobEnd::Failed);
            JobState::Failed { error }
        }
    };
    service.jobs.finish(plan.worker_id, state);
}

/// The job's result location: an injected failure, the original payload (skipping the image
/// work), or a thumbnail stored as `{job id}.thumb`.
async fn work(service: &WorkerService, plan: &JobPlan) -> anyhow::Result<String> {
    let blobs = &service.blobs;
    if plan.fail {
        anyhow::bail!("injected failure (STUB_JOB_FAIL_RATE)");
    }
    if plan.skip_image_work {
        return Ok(plan.payload_location.to_string());
    }
    let image = blobs.fetch(&plan.payload_location).await?;
    // At most `max_decodes` images are decoded at once: each may take width × height × 4
    // bytes, so a burst of large images cannot take the machine's memory.
    let _permit = service
        .decodes
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| anyhow::anyhow!("the worker is shutting down"))?;
    let max_pixels = service.max_pixels;
    let png = tokio::task::spawn_blocking(move || thumbnail_png(&image, max_pixels))
        .await
        .map_err(|e| anyhow::anyhow!("thumbnail task ended abnormally: {e}"))??;
    blobs
        .store(
            &format!("{}.thumb", plan.job_id),
            bytes::Bytes::from(png),
            "image/png",
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_job_is_not_started_twice_and_old_jobs_are_forgotten() {
        let table = JobTable::new(2);
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        assert_eq!(table.start(a), None);
        assert_eq!(table.start(a), Some(JobState::Running));
        table.finish(
            a,
            JobState::Failed {
                error: "x".to_owned(),
            },
        );
        assert!(matches!(table.start(a), Some(JobState::Failed { .. })));
        assert_eq!(table.start(b), None);
        assert_eq!(table.start(c), None);
        assert_eq!(table.state(a), None);
        table.finish(a, JobState::Running); // a forgotten job stays forgotten
        assert_eq!(table.state(a), None);
    }

    #[test]
    fn answers_use_the_seed_numbering() {
        let id = Uuid::from_u128(9);
        let running = serde_json::to_value(SubmitAnswer::of(id, JobState::Running)).expect("json");
        assert_eq!(running, serde_json::json!({ "id": id.to_string() }));
        let done = serde_json::to_value(SubmitAnswer::of(
            id,
            JobState::Succeeded {
                payload_location: "http://x/blob/a".to_owned(),
            },
        ))
        .expect("json");
        assert_eq!(
            done,
            serde_json::json!({ "id": id.to_string(), "status": 1, "payload_location": "http://x/blob/a" })
        );
        let failed = serde_json::to_value(StatusAnswer::of(JobState::Failed {
            error: "boom".to_owned(),
        }))
        .expect("json");
        assert_eq!(failed, serde_json::json!({ "status": 2, "error": "boom" }));
    }
}
