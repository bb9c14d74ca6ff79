//! The control stream (`{p}.control`, ARCHITECTURE.md "Cancelling a job"): how the
//! ingress tells every consumer, present and future, that a job is cancelled.
//!
//! A work queue cannot give up one message by id, so a cancelled job stays queued until a
//! consumer meets it. Each consumer reads the control stream from its first message before
//! it takes any job, then follows it; a job whose cancel it has read is reported CANCELLED
//! and acked without reaching the worker, and a job it is running when the cancel comes is
//! dropped mid-way. The stream keeps cancels for `CONTROL_MAX_AGE`, longer than any job
//! waits, and survives broker and consumer restarts like any stream.

use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, PublishError};
use crate::ids::{JobId, TenantId};
use crate::status::now_rfc3339;

/// One message of the control stream (JSON, tagged by `kind`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ControlMessage {
    /// Stop the job: never start it, and stop following it if it runs.
    Cancel {
        job_id: JobId,
        tenant_id: TenantId,
        at: String,
    },
    /// A reader's own marker: reading it back means the reader has seen everything
    /// published before it (how a consumer knows it has caught up).
    Marker { id: JobId },
}

impl ControlMessage {
    pub fn cancel(job_id: JobId, tenant_id: TenantId) -> Self {
        ControlMessage::Cancel {
            job_id,
            tenant_id,
            at: now_rfc3339(),
        }
    }

    /// A marker with a fresh id.
    pub fn marker() -> Self {
        ControlMessage::Marker { id: JobId::new() }
    }

    /// Reads one message; `None` for what this version does not know (skipped).
    pub fn decode(data: &[u8]) -> Option<Self> {
        serde_json::from_slice(data).ok()
    }

    /// Publishes it to the control exchange, persistent, and waits for the confirm.
    pub async fn publish(&self, broker: &Broker) -> Result<(), PublishError> {
        let body = serde_json::to_vec(self).map_err(|e| PublishError::Encode(e.to_string()))?;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let exchange = broker.topology().control_exchange();
        broker.publish(&exchange, "", &body, props).await
    }
}

/// The control stream's [`Marker`](crate::events::Marker): a `marker` control message.
pub struct ControlMarker;

impl crate::events::Marker for ControlMarker {
    fn publish<'a>(
        &'a self,
        broker: &'a Broker,
        id: JobId,
    ) -> futures::future::BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move { ControlMessage::Marker { id }.publish(broker).await })
    }

    fn holds(&self, data: &[u8], id: JobId) -> bool {
        ControlMessage::decode(data) == Some(ControlMessage::Marker { id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_the_unknown() {
        let id = JobId::new();
        let c = ControlMessage::cancel(id, TenantId(3));
        let json = serde_json::to_vec(&c).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""kind":"cancel""#), "{text}");
        assert_eq!(ControlMessage::decode(&json), Some(c));
        assert_eq!(ControlMessage::decode(br#"{"kind":"pause"}"#), None);
        assert_eq!(ControlMessage::decode(b"not json"), None);
    }
}
