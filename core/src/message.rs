//! The job message on the wire (docs/amqp.md): its headers, and the codec between a message's
//! AMQP properties and [`JobMeta`].
//!
//! Every header name any process reads or writes is in [`header`], and [`HEADERS`] says, as
//! data, which process writes each and which reads it.

use std::time::SystemTime;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::ids::{ClientId, JobId, Md5, TenantId};
use crate::trace::{TraceContext, TraceParent};

/// Header names of job messages and of the messages the broker hands back.
pub mod header {
    /// The job's tenant (integer, required).
    pub const TENANT_ID: &str = "tenant_id";
    /// The client within the tenant (integer, required).
    pub const CLIENT_ID: &str = "client_id";
    /// Hex MD5 of the body (optional; checked when present).
    pub const MD5: &str = "md5";
    /// The attempt this message is (integer; absent means 1).
    pub const ATTEMPT: &str = "x-attempt";
    /// Where the image already is, for a message with an empty body.
    pub const PAYLOAD_LOCATION: &str = "payload_location";
    /// The stored image's size in bytes (integer), beside `payload_location`.
    pub const PAYLOAD_SIZE: &str = "payload_size";
    /// Why a consumer dead-lettered the message.
    pub const ERROR: &str = "x-error";
    /// How often a quorum queue delivered the message before (set by the broker).
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
    /// Why the broker dead-lettered a message by itself (set by the broker).
    pub const DEATH: &str = "x-death";
    /// The offset of a message in a stream (set by the broker on stream deliveries).
    pub const STREAM_OFFSET: &str = "x-stream-offset";
    /// W3C trace context of the job (optional; see `crate::trace`).
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";

    /// Whether the broker wrote `name` when it dead-lettered a message (`x-death`,
    /// `x-first-death-*`, `x-last-death-*`).
    pub fn is_death_mark(name: &str) -> bool {
        name == DEATH || name.starts_with("x-first-death") || name.starts_with("x-last-death")
    }
}

/// Who writes and who reads one header.
#[derive(Clone, Copy, Debug)]
pub struct HeaderRule {
    pub name: &'static str,
    pub written_by: &'static str,
    pub read_by: &'static str,
}

/// The header table: every header of a job message and who touches it.
pub const HEADERS: &[HeaderRule] = &[
    HeaderRule {
        name: header::TENANT_ID,
        written_by: "ingress, direct publishers",
        read_by: "consumer (validation, events), cli dead list",
    },
    HeaderRule {
        name: header::CLIENT_ID,
        written_by: "ingress, direct publishers",
        read_by: "consumer",
    },
    HeaderRule {
        name: header::MD5,
        written_by: "ingress (always by reference), direct publishers",
        read_by: "consumer (checked against a body; passed to the worker)",
    },
    HeaderRule {
        name: header::PAYLOAD_LOCATION,
        written_by: "ingress (claim check), direct publishers that stored the image",
        read_by: "consumer (skips the blob upload)",
    },
    HeaderRule {
        name: header::PAYLOAD_SIZE,
        written_by: "ingress (claim check), direct publishers (optional)",
        read_by: "consumer (checked against MAX_BODY_BYTES; reported in events)",
    },
    HeaderRule {
        name: header::ATTEMPT,
        written_by: "consumer (retry copies), cli dead replay",
        read_by: "consumer, cli",
    },
    HeaderRule {
        name: header::ERROR,
        written_by: "consumer (dead-letter copies)",
        read_by: "cli dead list; dropped by cli dead replay",
    },
    HeaderRule {
        name: header::DELIVERY_COUNT,
        written_by: "broker (quorum queues)",
        read_by: "consumer (delivery limit); dropped from every copy",
    },
    HeaderRule {
        name: header::DEATH,
        written_by: "broker (dead-lettering by itself)",
        read_by: "cli dead list; dropped by cli dead replay",
    },
    HeaderRule {
        name: header::TRACEPARENT,
        written_by: "ingress (the submit's trace or a new one), direct publishers",
        read_by: "consumer (its span continues the trace; passed on to the services)",
    },
    HeaderRule {
        name: header::TRACESTATE,
        written_by: "ingress (as the submit sent it), direct publishers",
        read_by: "consumer",
    },
    HeaderRule {
        name: header::STREAM_OFFSET,
        written_by: "broker (stream deliveries)",
        read_by: "events stream readers (resume after a reconnect)",
    },
];

/// The longest `payload_location` taken: a URL or key, never a document.
pub const MAX_LOCATION_BYTES: usize = 2048;

/// What a job message says about its job, apart from the image bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct JobMeta {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub client_id: ClientId,
    pub content_type: Option<String>,
    pub md5: Option<Md5>,
    /// 1 for the first attempt; raised by consumers when they schedule a retry.
    pub attempt: u32,
    /// Set when the producer already stored the image (empty body).
    pub payload_location: Option<String>,
    pub payload_size: Option<u64>,
}

/// A job message: its meta data and the raw image bytes.
#[derive(Clone, Debug)]
pub struct JobMessage {
    pub meta: JobMeta,
    pub body: Bytes,
}

/// Why a message on the work queue is not a valid job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJob {
    #[error("message has no message_id")]
    MissingMessageId,
    #[error("message_id {0:?} is not a UUID")]
    BadMessageId(String),
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {0} is not an integer")]
    NotAnInteger(&'static str),
    #[error("header md5 is not 32 hex digits")]
    BadMd5,
    #[error("header payload_location is not a string of 1 to 2048 bytes")]
    BadPayloadLocation,
    #[error("header payload_size is not a non-negative integer")]
    BadPayloadSize,
    #[error("content_type {0:?} of a stored image is not an image type we take")]
    NotAnImageType(String),
    #[error("message body is empty and there is no payload_location header")]
    EmptyBody,
    #[error("md5 mismatch: header says {expected}, body hashes to {actual}")]
    Md5Mismatch { expected: Md5, actual: Md5 },
    #[error("body is not an image (PNG, JPEG, GIF, WebP, BMP or TIFF)")]
    NotAnImage,
}

/// A header as an integer, whatever its AMQP width. A string is not an integer, even
/// `"7"`: docs/amqp.md says integers, and a publisher that sends strings is told so (its
/// job is dead-lettered with the reason) rather than guessed at.
pub fn header_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

fn header_str(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads a string header (e.g. `x-error`).
pub fn header_string(headers: &FieldTable, name: &str) -> Option<String> {
    headers.inner().get(name).and_then(header_str)
}

/// The trace a job message carries, continued by whoever handles it; `None` when it
/// carries none or an invalid one.
pub fn trace_of(props: &BasicProperties) -> Option<TraceContext> {
    let headers = props.headers().as_ref()?;
    let parent = header_string(headers, header::TRACEPARENT)?;
    let parent = TraceParent::parse(&parent)?;
    Some(TraceContext {
        parent,
        state: header_string(headers, header::TRACESTATE),
    })
}

/// `props` with the trace's `traceparent` (and `tracestate`) headers set.
pub fn with_trace(props: BasicProperties, trace: &TraceContext) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        header::TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(trace.parent.to_string())),
    );
    if let Some(state) = &trace.state {
        headers.insert(
            header::TRACESTATE.into(),
            AMQPValue::LongString(LongString::from(state.as_str())),
        );
    }
    props.with_headers(headers)
}

/// How often the broker has delivered this message before (quorum queues count it).
pub fn delivery_count(props: &BasicProperties) -> u32 {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(header::DELIVERY_COUNT))
        .and_then(header_int)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The offset the broker stamped on a stream delivery.
pub fn stream_offset(props: &BasicProperties) -> Option<i64> {
    match props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(header::STREAM_OFFSET))?
    {
        AMQPValue::LongLongInt(off) => Some(*off),
        other => header_int(other),
    }
}

/// The headers of a copy of a message (a retry, a dead letter, a replay): those of `props`
/// that `keep` accepts, then `set`. The broker's delivery count is never copied: a copy is
/// a new message, and a stale count would make it look redelivered.
pub fn copied_headers(
    props: &BasicProperties,
    keep: impl Fn(&str) -> bool,
    set: (&str, AMQPValue),
) -> FieldTable {
    let mut headers = FieldTable::default();
    for (k, v) in props
        .headers()
        .as_ref()
        .map(|h| h.inner().iter())
        .into_iter()
        .flatten()
    {
        if k.as_str() != header::DELIVERY_COUNT && keep(k.as_str()) {
            headers.insert(k.clone(), v.clone());
        }
    }
    headers.insert(set.0.into(), set.1);
    headers
}

impl JobMeta {
    /// Parses the job's facts from a message's properties (docs/amqp.md). Does not look at
    /// the body; see [`JobMessage::validate`] for that.
    pub fn from_properties(props: &BasicProperties) -> Result<Self, InvalidJob> {
        Self::parse(props).map_err(|(e, _)| e)
    }

    /// [`JobMeta::from_properties`], and on failure the job's facts when its id, tenant
    /// and client could be read (only an optional header was wrong), so that the job can
    /// still be reported.
    pub fn parse(props: &BasicProperties) -> Result<Self, (InvalidJob, Option<Box<JobMeta>>)> {
        let required = Self::required(props).map_err(|e| (e, None))?;
        let with_defaults = || {
            Box::new(JobMeta {
                content_type: props.content_type().as_ref().map(|c| c.as_str().to_owned()),
                ..required.clone()
            })
        };
        let empty = FieldTable::default();
        let headers = props.headers().as_ref().unwrap_or(&empty).inner();
        let md5 = match headers.get(header::MD5) {
            None => None,
            Some(v) => Some(
                header_str(v)
                    .and_then(|s| Md5::from_hex(&s))
                    .ok_or_else(|| (InvalidJob::BadMd5, Some(with_defaults())))?,
            ),
        };
        let attempt = match headers.get(header::ATTEMPT) {
            None => 1,
            Some(v) => header_int(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    (
                        InvalidJob::NotAnInteger(header::ATTEMPT),
                        Some(with_defaults()),
                    )
                })?
                .max(1),
        };
        let payload_location = match headers.get(header::PAYLOAD_LOCATION) {
            None => None,
            Some(v) => Some(
                header_str(v)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_LOCATION_BYTES)
                    .ok_or_else(|| (InvalidJob::BadPayloadLocation, Some(with_defaults())))?,
            ),
        };
        let payload_size = match headers.get(header::PAYLOAD_SIZE) {
            None => None,
            Some(v) => Some(
                header_int(v)
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| (InvalidJob::BadPayloadSize, Some(with_defaults())))?,
            ),
        };
        Ok(JobMeta {
            content_type: props.content_type().as_ref().map(|c| c.as_str().to_owned()),
            md5,
            attempt,
            payload_location,
            payload_size,
            ..required
        })
    }

    /// The id, tenant and client, without which a message is no one's job.
    fn required(props: &BasicProperties) -> Result<Self, InvalidJob> {
        let id = props
            .message_id()
            .as_ref()
            .ok_or(InvalidJob::MissingMessageId)?;
        let id: JobId = id
            .as_str()
            .parse()
            .map_err(|_| InvalidJob::BadMessageId(id.as_str().chars().take(64).collect()))?;
        let empty = FieldTable::default();
        let headers = props.headers().as_ref().unwrap_or(&empty).inner();
        let int = |name: &'static str| -> Result<i64, InvalidJob> {
            let v = headers.get(name).ok_or(InvalidJob::MissingHeader(name))?;
            header_int(v).ok_or(InvalidJob::NotAnInteger(name))
        };
        Ok(JobMeta {
            id,
            tenant_id: TenantId(int(header::TENANT_ID)?),
            client_id: ClientId(int(header::CLIENT_ID)?),
            content_type: None,
            md5: None,
            attempt: 1,
            payload_location: None,
            payload_size: None,
        })
    }

    /// The message properties of a job message: persistent, with id, type, time and the
    /// headers of docs/amqp.md.
    pub fn to_properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            header::TENANT_ID.into(),
            AMQPValue::LongLongInt(self.tenant_id.0),
        );
        headers.insert(
            header::CLIENT_ID.into(),
            AMQPValue::LongLongInt(self.client_id.0),
        );
        if let Some(md5) = self.md5 {
            headers.insert(
                header::MD5.into(),
                AMQPValue::LongString(LongString::from(md5.to_string())),
            );
        }
        if self.attempt > 1 {
            headers.insert(
                header::ATTEMPT.into(),
                AMQPValue::LongLongInt(i64::from(self.attempt)),
            );
        }
        if let Some(loc) = &self.payload_location {
            headers.insert(
                header::PAYLOAD_LOCATION.into(),
                AMQPValue::LongString(LongString::from(loc.as_str())),
            );
            // A body carries its own size; a reference says it.
            if let Some(size) = self.payload_size {
                headers.insert(
                    header::PAYLOAD_SIZE.into(),
                    AMQPValue::LongLongInt(i64::try_from(size).unwrap_or(i64::MAX)),
                );
            }
        }
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(self.id.to_string()))
            .with_timestamp(timestamp)
            .with_headers(headers);
        if let Some(ct) = &self.content_type {
            props = props.with_content_type(ShortString::from(ct.as_str()));
        }
        props
    }
}

impl JobMessage {
    /// Parses and checks a delivered message: properties, body, MD5 and image type. On
    /// failure, the job's facts come along when they could be read, so that the job can
    /// still be reported.
    ///
    /// A message by reference (empty body, `payload_location`) is checked without the
    /// bytes, which the consumer never sees: the header shapes (above), and a declared
    /// `content_type` must be an image type we take. Its size is the caller's to bound
    /// ([`JobMeta::payload_size`]); its MD5 is the worker's to check.
    pub fn validate(
        props: &BasicProperties,
        body: Bytes,
    ) -> Result<Self, (InvalidJob, Option<Box<JobMeta>>)> {
        let mut meta = JobMeta::parse(props)?;
        if body.is_empty() {
            if meta.payload_location.is_none() {
                return Err((InvalidJob::EmptyBody, Some(Box::new(meta))));
            }
            if let Some(ct) = meta.content_type.as_deref() {
                if !crate::sniff::is_image_type(ct) {
                    let why = InvalidJob::NotAnImageType(ct.chars().take(64).collect());
                    return Err((why, Some(Box::new(meta))));
                }
            }
            return Ok(JobMessage { meta, body });
        }
        if let Some(expected) = meta.md5 {
            let actual = Md5::of(&body);
            if actual != expected {
                return Err((
                    InvalidJob::Md5Mismatch { expected, actual },
                    Some(Box::new(meta)),
                ));
            }
        }
        let Some(mime) = crate::sniff::image_mime(&body) else {
            return Err((InvalidJob::NotAnImage, Some(Box::new(meta))));
        };
        // The sniffed type wins over a declared one: it is what the bytes are.
        meta.content_type = Some(mime.to_owned());
        meta.payload_size = Some(body.len() as u64);
        Ok(JobMessage { meta, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> JobMeta {
        JobMeta {
            id: JobId::new(),
            tenant_id: TenantId(7),
            client_id: ClientId(9),
            content_type: Some("image/png".into()),
            md5: Some(Md5::of(b"x")),
            attempt: 3,
            payload_location: Some("http://blob/x".into()),
            payload_size: None,
        }
    }

    /// A job by reference: its size travels as a header, and is checked without bytes.
    #[test]
    fn a_reference_carries_its_size_and_declared_type() {
        let m = JobMeta {
            payload_size: Some(3 * 1024 * 1024),
            ..meta()
        };
        let props = m.to_properties();
        assert_eq!(JobMeta::from_properties(&props).unwrap(), m);
        let job = JobMessage::validate(&props, Bytes::new()).unwrap();
        assert_eq!(job.meta.payload_size, Some(3 * 1024 * 1024));
        assert_eq!(job.meta.content_type.as_deref(), Some("image/png"));

        let svg = JobMeta {
            content_type: Some("image/svg+xml".into()),
            ..m.clone()
        };
        let (e, known) = JobMessage::validate(&svg.to_properties(), Bytes::new()).unwrap_err();
        assert_eq!(e, InvalidJob::NotAnImageType("image/svg+xml".into()));
        assert!(known.is_some());

        // No declared type: the worker sniffs the stored bytes.
        let untyped = JobMeta {
            content_type: None,
            ..m
        };
        assert!(JobMessage::validate(&untyped.to_properties(), Bytes::new()).is_ok());

        let long = JobMeta {
            payload_location: Some("x".repeat(MAX_LOCATION_BYTES + 1)),
            ..meta()
        };
        let (e, _) = JobMeta::parse(&long.to_properties()).unwrap_err();
        assert_eq!(e, InvalidJob::BadPayloadLocation);
    }

    #[test]
    fn properties_round_trip() {
        let m = meta();
        let back = JobMeta::from_properties(&m.to_properties()).unwrap();
        assert_eq!(back, m);
        let props = m.to_properties();
        assert_eq!(props.delivery_mode(), &Some(2));
    }

    #[test]
    fn integer_headers_in_any_width_but_not_as_strings() {
        let mut props = meta().to_properties();
        let mut headers = FieldTable::default();
        headers.insert("tenant_id".into(), AMQPValue::ShortInt(5));
        headers.insert("client_id".into(), AMQPValue::LongUInt(12));
        props = props.with_headers(headers);
        let m = JobMeta::from_properties(&props).unwrap();
        assert_eq!(
            (m.tenant_id, m.client_id, m.attempt),
            (TenantId(5), ClientId(12), 1)
        );
        let mut headers = FieldTable::default();
        headers.insert("tenant_id".into(), AMQPValue::LongString("5".into()));
        headers.insert("client_id".into(), AMQPValue::LongLongInt(1));
        let props = props.with_headers(headers);
        assert_eq!(
            JobMeta::from_properties(&props),
            Err(InvalidJob::NotAnInteger("tenant_id"))
        );
    }

    #[test]
    fn a_bad_optional_header_keeps_the_job_known() {
        let good = meta();
        for (name, value, why) in [
            (
                header::ATTEMPT,
                AMQPValue::LongString("many".into()),
                InvalidJob::NotAnInteger(header::ATTEMPT),
            ),
            (
                header::MD5,
                AMQPValue::LongString("not hex".into()),
                InvalidJob::BadMd5,
            ),
            (
                header::PAYLOAD_LOCATION,
                AMQPValue::LongLongInt(3),
                InvalidJob::BadPayloadLocation,
            ),
            (
                header::PAYLOAD_LOCATION,
                AMQPValue::LongString("".into()),
                InvalidJob::BadPayloadLocation,
            ),
            (
                header::PAYLOAD_SIZE,
                AMQPValue::LongLongInt(-1),
                InvalidJob::BadPayloadSize,
            ),
            (
                header::PAYLOAD_SIZE,
                AMQPValue::LongString("12".into()),
                InvalidJob::BadPayloadSize,
            ),
        ] {
            let mut headers = good.to_properties().headers().clone().unwrap();
            headers.insert(name.into(), value);
            let props = good.to_properties().with_headers(headers);
            let (e, known) = JobMeta::parse(&props).unwrap_err();
            assert_eq!(e, why);
            let known = known.expect("the job is still known");
            assert_eq!(
                (known.id, known.tenant_id, known.client_id),
                (good.id, good.tenant_id, good.client_id)
            );
        }
        let (_, unknown) = JobMeta::parse(&BasicProperties::default()).unwrap_err();
        assert!(unknown.is_none());
    }

    #[test]
    fn invalid_headers() {
        let base = meta().to_properties();
        let mut headers = FieldTable::default();
        headers.insert("tenant_id".into(), AMQPValue::LongString("seven".into()));
        headers.insert("client_id".into(), AMQPValue::LongLongInt(1));
        let props = base.clone().with_headers(headers);
        assert_eq!(
            JobMeta::from_properties(&props),
            Err(InvalidJob::NotAnInteger("tenant_id"))
        );
        let props = base.clone().with_headers(FieldTable::default());
        assert_eq!(
            JobMeta::from_properties(&props),
            Err(InvalidJob::MissingHeader("tenant_id"))
        );
        let props = BasicProperties::default();
        assert_eq!(
            JobMeta::from_properties(&props),
            Err(InvalidJob::MissingMessageId)
        );
    }

    #[test]
    fn copies_drop_the_delivery_count_and_keep_the_rest() {
        let mut h = FieldTable::default();
        h.insert(header::DELIVERY_COUNT.into(), AMQPValue::LongLongInt(4));
        h.insert(header::TENANT_ID.into(), AMQPValue::LongLongInt(1));
        h.insert(header::ERROR.into(), AMQPValue::LongString("old".into()));
        let props = BasicProperties::default().with_headers(h);
        assert_eq!(delivery_count(&props), 4);
        let copy = copied_headers(
            &props,
            |name| name != header::ERROR,
            (header::ATTEMPT, AMQPValue::LongLongInt(2)),
        );
        let copy = copy.inner();
        assert!(copy.get(header::DELIVERY_COUNT).is_none());
        assert!(copy.get(header::ERROR).is_none());
        assert_eq!(
            copy.get(header::TENANT_ID),
            Some(&AMQPValue::LongLongInt(1))
        );
        assert_eq!(copy.get(header::ATTEMPT), Some(&AMQPValue::LongLongInt(2)));
    }

    #[test]
    fn the_header_table_names_every_header_once() {
        let mut names: Vec<_> = HEADERS.iter().map(|h| h.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), HEADERS.len());
        assert!(header::is_death_mark("x-death") && header::is_death_mark("x-last-death-queue"));
        assert!(!header::is_death_mark(header::ERROR));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A header value of any kind a publisher might send for a job header.
        fn value() -> impl Strategy<Value = AMQPValue> {
            prop_oneof![
                any::<i64>().prop_map(AMQPValue::LongLongInt),
                any::<i32>().prop_map(AMQPValue::LongInt),
                any::<u32>().prop_map(AMQPValue::LongUInt),
                any::<i16>().prop_map(AMQPValue::ShortInt),
                any::<u8>().prop_map(AMQPValue::ShortShortUInt),
                any::<bool>().prop_map(AMQPValue::Boolean),
                any::<f64>().prop_map(AMQPValue::Double),
                "[ -~]{0,40}".prop_map(|s| AMQPValue::LongString(s.into())),
                "[0-9a-fA-F]{32}".prop_map(|s| AMQPValue::LongString(s.into())),
                proptest::collection::vec(any::<u8>(), 0..40)
                    .prop_map(|b| AMQPValue::ByteArray(b.into())),
                Just(AMQPValue::Void),
            ]
        }

        fn headers() -> impl Strategy<Value = FieldTable> {
            let names = prop_oneof![
                Just(header::TENANT_ID.to_owned()),
                Just(header::CLIENT_ID.to_owned()),
                Just(header::MD5.to_owned()),
                Just(header::ATTEMPT.to_owned()),
                Just(header::PAYLOAD_LOCATION.to_owned()),
                "[a-z-]{1,12}",
            ];
            proptest::collection::vec((names, value()), 0..8).prop_map(|pairs| {
                let mut t = FieldTable::default();
                for (k, v) in pairs {
                    t.insert(k.into(), v);
                }
                t
            })
        }

        fn message_id() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(None),
                Just(Some(JobId::new().to_string())),
                "[ -~]{0,40}".prop_map(Some),
            ]
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(|mut v| {
                    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
                    png.append(&mut v);
                    png
                }),
            ]
        }

        proptest! {
            /// Whatever a direct publisher sends, validation answers a documented
            /// [`InvalidJob`] or a job whose facts are the headers' own, and reports the
            /// job's identity exactly when id, tenant and client could be read.
            #[test]
            fn any_message_validates_or_says_why(
                id in message_id(),
                headers in headers(),
                body in body(),
            ) {
                let mut props = BasicProperties::default().with_headers(headers.clone());
                if let Some(id) = &id {
                    props = props.with_message_id(id.as_str().into());
                }
                let int = |name: &str| headers.inner().get(name).and_then(header_int);
                let identified = id.as_deref().is_some_and(|s| s.parse::<JobId>().is_ok())
                    && int(header::TENANT_ID).is_some()
                    && int(header::CLIENT_ID).is_some();
                match JobMessage::validate(&props, Bytes::from(body.clone())) {
                    Ok(job) => {
                        prop_assert!(identified);
                        prop_assert_eq!(Some(job.meta.tenant_id.0), int(header::TENANT_ID));
                        prop_assert_eq!(Some(job.meta.client_id.0), int(header::CLIENT_ID));
                        prop_assert!(job.meta.attempt >= 1);
                        if body.is_empty() {
                            prop_assert!(job.meta.payload_location.is_some());
                        } else {
                            prop_assert!(crate::sniff::image_mime(&body).is_some());
                        }
                    }
                    Err((why, known)) => {
                        prop_assert!(!why.to_string().is_empty());
                        prop_assert_eq!(known.is_some(), identified, "{}", why);
                        let identity_error = matches!(
                            why,
                            InvalidJob::MissingMessageId
                                | InvalidJob::BadMessageId(_)
                                | InvalidJob::MissingHeader(header::TENANT_ID | header::CLIENT_ID)
                                | InvalidJob::NotAnInteger(header::TENANT_ID | header::CLIENT_ID)
                        );
                        prop_assert_eq!(identity_error, !identified, "{}", why);
                    }
                }
            }
        }
    }
}
