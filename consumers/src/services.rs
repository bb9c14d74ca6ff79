//! Clients of the blob and worker services (docs/consumer.md), over one pooled HTTP client.
//!
//! Every call is idempotent by job id: the blob is PUT at the job's id and the worker
//! deduplicates on the `id` we send, so a redelivered job repeats calls harmlessly.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};

use imagejobs_core::ids::{JobId, Md5};
use imagejobs_core::trace::TraceContext;

/// The W3C header every call carries (docs/amqp.md).
const TRACEPARENT: &str = "traceparent";

/// How a failed call should be treated (docs/consumer.md).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// Connection errors, timeouts, 429 and 5xx: worth retrying.
    #[error("{0}")]
    Transient(String),
    /// Any other 4xx: retrying will not help.
    #[error("{0}")]
    Permanent(String),
}

impl CallError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Transient(_))
    }

    fn from_status(what: &str, status: StatusCode, body: &str) -> Self {
        let msg = format!(
            "{what}: HTTP {status}: {}",
            body.chars().take(200).collect::<String>()
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            CallError::Transient(msg)
        } else {
            CallError::Permanent(msg)
        }
    }

    fn from_reqwest(what: &str, e: reqwest::Error) -> Self {
        // Connect errors, timeouts, broken bodies and unreadable answers may all pass.
        CallError::Transient(format!("{what}: {e}"))
    }
}

/// The worker's job states, in the seed's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Running,
    Success,
    Failed,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawState {
    Num(u8),
    Text(String),
}

impl RawState {
    fn state(&self) -> Option<WorkerState> {
        match self {
            RawState::Num(0) => Some(WorkerState::Running),
            RawState::Num(1) => Some(WorkerState::Success),
            RawState::Num(2) => Some(WorkerState::Failed),
            RawState::Text(t) => match t.to_ascii_uppercase().as_str() {
                "RUNNING" | "QUEUED" | "PENDING" => Some(WorkerState::Running),
                "SUCCESS" | "DONE" => Some(WorkerState::Success),
                "FAILED" | "ERROR" => Some(WorkerState::Failed),
                _ => None,
            },
            RawState::Num(_) => None,
        }
    }
}

/// What the worker says of a job: its state and, when it ended, its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub state: WorkerState,
    pub payload_location: Option<String>,
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct StatusBody {
    status: RawState,
    #[serde(default)]
    payload_location: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct SubmitBody {
    id: serde_json::Value,
    #[serde(default)]
    status: Option<RawState>,
    #[serde(default)]
    payload_location: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The worker's answer to a submit: its job id, and the result if it finished at once.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub worker_id: String,
    pub result: Option<WorkerStatus>,
}

/// What the worker is asked to do (docs/consumer.md).
#[derive(Debug, Serialize)]
pub struct WorkerRequest<'a> {
    pub id: JobId,
    pub tenant_id: i64,
    pub client_id: i64,
    pub payload_location: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<Md5>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<&'a str>,
}

#[derive(Deserialize)]
struct BlobBody {
    payload_location: String,
}

/// Both services behind one connection-pooling client.
#[derive(Clone)]
pub struct Services {
    http: Client,
    blob_url: String,
    worker_url: String,
}

impl Services {
    /// `ca_pem`: a private CA to trust for `https://` services, besides the system's roots.
    pub fn new(
        blob_url: &reqwest::Url,
        worker_url: &reqwest::Url,
        timeout: Duration,
        pool: usize,
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        imagejobs_core::tls::install_crypto();
        let mut builder = Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .pool_max_idle_per_host(pool.max(8))
            .tcp_nodelay(true);
        if let Some(pem) = ca_pem {
            builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        let http = builder.build()?;
        Ok(Services {
            http,
            blob_url: blob_url.as_str().trim_end_matches('/').to_owned(),
            worker_url: worker_url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        what: &str,
        resp: reqwest::Response,
    ) -> Result<T, CallError> {
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| CallError::from_reqwest(what, e))?;
        if !status.is_success() {
            return Err(CallError::from_status(
                what,
                status,
                &String::from_utf8_lossy(&body),
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Transient(format!("{what}: unreadable answer: {e}")))
    }

    /// `PUT {blob}/blob/{job_id}`; returns where the image now lives.
    pub async fn put_blob(
        &self,
        id: JobId,
        body: Bytes,
        content_type: &str,
        trace: &TraceContext,
    ) -> Result<String, CallError> {
        let what = "blob upload";
        let resp = self
            .http
            .put(format!("{}/blob/{id}", self.blob_url))
            .header(TRACEPARENT, trace.child().parent.to_string())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(what, e))?;
        Ok(Self::json::<BlobBody>(what, resp).await?.payload_location)
    }

    /// `POST {worker}/job`.
    pub async fn submit(
        &self,
        req: &WorkerRequest<'_>,
        trace: &TraceContext,
    ) -> Result<Submitted, CallError> {
        let what = "worker submit";
        let resp = self
            .http
            .post(format!("{}/job", self.worker_url))
            .header(TRACEPARENT, trace.child().parent.to_string())
            .json(req)
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(what, e))?;
        let body: SubmitBody = Self::json(what, resp).await?;
        let worker_id = match body.id {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        let result = body
            .status
            .and_then(|s| s.state())
            .filter(|s| *s != WorkerState::Running)
            .map(|state| WorkerStatus {
                state,
                payload_location: body.payload_location,
                error: body.error,
            });
        Ok(Submitted { worker_id, result })
    }

    /// `GET {worker}/job/{worker_id}/status`.
    pub async fn status(
        &self,
        worker_id: &str,
        trace: &TraceContext,
    ) -> Result<WorkerStatus, CallError> {
        let what = "worker status";
        let resp = self
            .http
            .get(format!("{}/job/{worker_id}/status", self.worker_url))
            .header(TRACEPARENT, trace.child().parent.to_string())
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(what, e))?;
        let body: StatusBody = Self::json(what, resp).await?;
        let state = body
            .status
            .state()
            .ok_or_else(|| CallError::Permanent(format!("{what}: unknown status")))?;
        Ok(WorkerStatus {
            state,
            payload_location: body.payload_location,
            error: body.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert!(CallError::from_status("x", StatusCode::SERVICE_UNAVAILABLE, "").is_transient());
        assert!(CallError::from_status("x", StatusCode::TOO_MANY_REQUESTS, "").is_transient());
        assert!(!CallError::from_status("x", StatusCode::UNPROCESSABLE_ENTITY, "").is_transient());
        assert!(!CallError::from_status("x", StatusCode::NOT_FOUND, "").is_transient());
    }

    #[test]
    fn worker_states() {
        let s: StatusBody = serde_json::from_str(r#"{"status":1,"payload_location":"p"}"#).unwrap();
        assert_eq!(s.status.state(), Some(WorkerState::Success));
        let s: StatusBody = serde_json::from_str(r#"{"status":"FAILED"}"#).unwrap();
        assert_eq!(s.status.state(), Some(WorkerState::Failed));
        let s: StatusBody = serde_json::from_str(r#"{"status":7}"#).unwrap();
        assert_eq!(s.status.state(), None);
    }
}
