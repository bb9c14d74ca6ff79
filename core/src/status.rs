//! A job's status and the status event that reports a change of it (docs/amqp.md).

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::ids::{ClientId, JobId, Md5, TenantId};
use crate::message::JobMeta;

/// A job's status. The order is the order a status may move in within one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Queued,
    Running,
    Retrying,
    Success,
    Failed,
    /// Cancelled by its tenant (`DELETE /api/v1/job/{id}`): final over every attempt.
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Success | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::Running => "RUNNING",
            Status::Retrying => "RETRYING",
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// The status named `s`, when it is one this version knows.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "QUEUED" => Some(Status::Queued),
            "RUNNING" => Some(Status::Running),
            "RETRYING" => Some(Status::Retrying),
            "SUCCESS" => Some(Status::Success),
            "FAILED" => Some(Status::Failed),
            "CANCELLED" => Some(Status::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The current time as RFC 3339 with milliseconds, the format of every `at` field.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A status event, published as JSON on the events exchange (docs/amqp.md).
///
/// `status` is kept as a string on the wire so that readers can skip statuses they do not
/// know (marker events, statuses added later) instead of failing to parse the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub job_id: JobId,
    pub tenant_id: TenantId,
    pub client_id: ClientId,
    pub status: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<Md5>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    pub at: String,
}

/// The status of marker events: a process publishes one to learn when it has read the
/// stream up to a point. Readers skip it like any status they do not know.
pub const MARKER: &str = "MARKER";

impl StatusEvent {
    /// An event for `job` with the job's own facts filled in, stamped now.
    pub fn new(job: &JobMeta, status: Status) -> Self {
        Self::at(job, status, SystemTime::now())
    }

    /// An event for `job` stamped `at`.
    pub fn at(job: &JobMeta, status: Status, at: SystemTime) -> Self {
        StatusEvent {
            job_id: job.id,
            tenant_id: job.tenant_id,
            client_id: job.client_id,
            status: status.as_str().to_owned(),
            attempt: job.attempt,
            payload_location: job.payload_location.clone(),
            payload_size: job.payload_size,
            content_type: job.content_type.clone(),
            md5: job.md5,
            error: None,
            next_attempt_at: None,
            at: rfc3339(at),
        }
    }

    /// A marker event with a fresh id (see [`MARKER`]).
    pub fn marker() -> Self {
        StatusEvent {
            job_id: JobId::new(),
            tenant_id: TenantId(0),
            client_id: ClientId(0),
            status: MARKER.into(),
            attempt: 0,
            payload_location: None,
            payload_size: None,
            content_type: None,
            md5: None,
            error: None,
            next_attempt_at: None,
            at: now_rfc3339(),
        }
    }

    /// An event of `status` about a job known only by its id and owner (a cancel).
    pub fn bare(
        job_id: JobId,
        tenant_id: TenantId,
        client_id: ClientId,
        status: Status,
        attempt: u32,
    ) -> Self {
        StatusEvent {
            job_id,
            tenant_id,
            client_id,
            status: status.as_str().to_owned(),
            attempt,
            ..Self::marker()
        }
    }

    /// The status, when it is one this version knows.
    pub fn known_status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_skips_unknown_status_and_absent_fields() {
        let meta = JobMeta {
            id: JobId::new(),
            tenant_id: TenantId(7),
            client_id: ClientId(9),
            content_type: Some("image/png".into()),
            md5: None,
            attempt: 1,
            payload_location: None,
            payload_size: None,
        };
        let ev = StatusEvent::new(&meta, Status::Queued);
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["status"], "QUEUED");
        assert!(json.get("error").is_none());
        let mut ev2: StatusEvent = serde_json::from_value(json).unwrap();
        assert_eq!(ev2.known_status(), Some(Status::Queued));
        ev2.status = MARKER.into();
        assert_eq!(ev2.known_status(), None);
        assert_eq!(StatusEvent::marker().known_status(), None);
    }

    #[test]
    fn statuses_round_trip_and_order() {
        for s in [
            Status::Queued,
            Status::Running,
            Status::Retrying,
            Status::Success,
            Status::Failed,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert!(Status::Queued < Status::Running && Status::Running < Status::Retrying);
        assert!(Status::Retrying < Status::Success && Status::Success.is_terminal());
    }
}
