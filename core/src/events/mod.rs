//! The events stream (docs/amqp.md): the one place that publishes status events and the one
//! place that reads them back.
//!
//! - [`EventSink`] publishes status events with group commit: events of concurrent jobs
//!   share one confirmed publish (a JSON array), and each caller is released by the
//!   confirm of the group its event went out in (see [`sink`]).
//! - [`Feed`] follows the stream from an offset and resumes after reconnects (see [`feed`]).
//! - [`replay`]: what the sink publishes again after a stream failover.
//! - [`decode`] reads a message body: one event object, or a JSON array of them.

pub mod feed;
pub mod replay;
pub mod sink;

pub use feed::{Feed, FeedConfig, FeedItem, Marker, Start};
pub use sink::{EventSink, GroupLimits};

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::broker::{Broker, PublishError};
use crate::ids::JobId;
use crate::status::{StatusEvent, MARKER};

/// The events stream's [`Marker`]: a status event of status `MARKER` (readers skip it).
pub struct StatusMarker;

impl Marker for StatusMarker {
    fn publish<'a>(
        &'a self,
        broker: &'a Broker,
        id: JobId,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let event = StatusEvent {
                job_id: id,
                ..StatusEvent::marker()
            };
            let body =
                serde_json::to_vec(&event).map_err(|e| PublishError::Encode(e.to_string()))?;
            let props = lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let exchange = broker.topology().events_exchange();
            broker.publish(&exchange, "", &body, props).await
        })
    }

    fn holds(&self, data: &[u8], id: JobId) -> bool {
        // While a feed waits for its marker it may read a long history: most messages are
        // passed over by looking for the id's text before decoding anything.
        let needle = id.to_string();
        if !data.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return false;
        }
        decode::<StatusEvent>(data)
            .is_ok_and(|evs| evs.iter().any(|e| e.job_id == id && e.status == MARKER))
    }
}

/// Reads the events of one stream message: a single event object or an array of them.
/// Whitespace before the first byte is allowed; anything else is an error for the caller
/// to log and skip.
pub fn decode<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Result<Vec<T>, serde_json::Error> {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        serde_json::from_slice(data)
    } else {
        serde_json::from_slice(data).map(|one| vec![one])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct E<'a> {
        status: &'a str,
    }

    #[test]
    fn one_event_or_an_array() {
        assert_eq!(
            decode::<E>(br#"{"status":"QUEUED"}"#).unwrap(),
            vec![E { status: "QUEUED" }]
        );
        assert_eq!(
            decode::<E>(b" \n[{\"status\":\"RUNNING\"},{\"status\":\"SUCCESS\"}]").unwrap(),
            vec![E { status: "RUNNING" }, E { status: "SUCCESS" }]
        );
        assert_eq!(decode::<E>(b"[]").unwrap(), vec![]);
        assert!(decode::<E>(b"42").is_err());
        assert!(decode::<E>(b"").is_err());
        assert!(decode::<E>(b"[{\"status\":1}]").is_err());
    }
}
