//! Wire types: the job message and the status event.
//!
//! These are the only types that cross process boundaries. Everything a producer puts on
//! the wire is parsed here into newtypes (`JobId`, `TenantId`, `Md5`, ...) so the rest of
//! the code never handles raw header values. New fields must be optional.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use md5::{Digest, Md5 as Md5Hasher};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Header names of the job message (DESIGN §4).
pub mod header {
    pub const TENANT_ID: &str = "tenant_id";
    pub const CLIENT_ID: &str = "client_id";
    pub const MD5: &str = "md5";
    pub const ATTEMPT: &str = "x-attempt";
    pub const PAYLOAD_LOCATION: &str = "payload_location";
    pub const ERROR: &str = "x-error";
}

/// A job's id: a UUID, carried as the message's `message_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::new_v4())
    }

    /// The id of a job submitted with an `Idempotency-Key`: derived from tenant and key, so
    /// every ingress replica (and a restarted one) maps the same key to the same job.
    pub fn for_idempotency_key(tenant: TenantId, key: &str) -> Self {
        const NAMESPACE: Uuid = Uuid::from_u128(0x6a0b_1e7c_0d4f_4b8e_9a51_3c2e_77f0_1d2a);
        JobId(Uuid::new_v5(
            &NAMESPACE,
            format!("{}:{}", tenant.0, key).as_bytes(),
        ))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// The tenant a job belongs to (the token's `tid`, or the `tenant_id` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub i64);

/// The client within a tenant that submitted a job (the token's `oid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub i64);

/// An MD5 digest, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Md5(pub [u8; 16]);

impl Md5 {
    pub fn of(bytes: &[u8]) -> Self {
        Md5(Md5Hasher::digest(bytes).into())
    }

    /// Parses 32 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Md5(out))
    }
}

impl fmt::Display for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Md5({self})")
    }
}

impl Serialize for Md5 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Md5 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Md5::from_hex(&s).ok_or_else(|| serde::de::Error::custom("md5 must be 32 hex digits"))
    }
}

/// A job's status. The order is the order a status may move in within one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Queued,
    Running,
    Retrying,
    Success,
    Failed,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Success | Status::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::Running => "RUNNING",
            Status::Retrying => "RETRYING",
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
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
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A status event, published as JSON on the events exchange (DESIGN §4).
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

impl StatusEvent {
    /// An event for `job` with the job's own facts filled in.
    pub fn new(job: &JobMeta, status: Status) -> Self {
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
            at: now_rfc3339(),
        }
    }

    /// The status, when it is one this version knows.
    pub fn known_status(&self) -> Option<Status> {
        match self.status.as_str() {
            "QUEUED" => Some(Status::Queued),
            "RUNNING" => Some(Status::Running),
            "RETRYING" => Some(Status::Retrying),
            "SUCCESS" => Some(Status::Success),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

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
    #[error("header payload_location is not a string")]
    BadPayloadLocation,
    #[error("message body is empty and there is no payload_location header")]
    EmptyBody,
    #[error("md5 mismatch: header says {expected}, body hashes to {actual}")]
    Md5Mismatch { expected: Md5, actual: Md5 },
    #[error("body is not an image (PNG, JPEG, GIF, WebP, BMP or TIFF)")]
    NotAnImage,
}

fn header_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        // Many clients (pika with str values, shell tools) send integers as strings.
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
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

/// Reads a string header, for callers outside this module (e.g. `x-error`).
pub fn header_string(headers: &FieldTable, name: &str) -> Option<String> {
    headers.inner().get(name).and_then(header_str)
}

impl JobMeta {
    /// Parses the job's facts from a message's properties (DESIGN §4). Does not look at
    /// the body; see [`JobMessage::validate`] for that.
    pub fn from_properties(props: &BasicProperties) -> Result<Self, InvalidJob> {
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
        let tenant_id = TenantId(int(header::TENANT_ID)?);
        let client_id = ClientId(int(header::CLIENT_ID)?);
        let md5 = match headers.get(header::MD5) {
            None => None,
            Some(v) => Some(
                header_str(v)
                    .and_then(|s| Md5::from_hex(&s))
                    .ok_or(InvalidJob::BadMd5)?,
            ),
        };
        let attempt = match headers.get(header::ATTEMPT) {
            None => 1,
            Some(v) => header_int(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(InvalidJob::NotAnInteger(header::ATTEMPT))?
                .max(1),
        };
        let payload_location = match headers.get(header::PAYLOAD_LOCATION) {
            None => None,
            Some(v) => Some(header_str(v).ok_or(InvalidJob::BadPayloadLocation)?),
        };
        Ok(JobMeta {
            id,
            tenant_id,
            client_id,
            content_type: props.content_type().as_ref().map(|c| c.as_str().to_owned()),
            md5,
            attempt,
            payload_location,
            payload_size: None,
        })
    }

    /// The message properties of a job message: persistent, with id, type, time and the
    /// headers of DESIGN §4. `extra` headers (such as `x-error`) are added on top.
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
    /// Parses and checks a delivered message: properties, body, MD5 and image type.
    pub fn validate(
        props: &BasicProperties,
        body: Bytes,
    ) -> Result<Self, (InvalidJob, Option<Box<JobMeta>>)> {
        let mut meta = JobMeta::from_properties(props).map_err(|e| (e, None))?;
        if body.is_empty() {
            if meta.payload_location.is_none() {
                return Err((InvalidJob::EmptyBody, Some(Box::new(meta))));
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

    #[test]
    fn properties_round_trip() {
        let m = meta();
        let back = JobMeta::from_properties(&m.to_properties()).unwrap();
        assert_eq!(back, m);
        let props = m.to_properties();
        assert_eq!(props.delivery_mode(), &Some(2));
    }

    #[test]
    fn md5_hex() {
        let m = Md5::of(b"hello");
        assert_eq!(m.to_string(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(Md5::from_hex("5D41402ABC4B2A76B9719D911017C592"), Some(m));
        assert_eq!(Md5::from_hex("5d41"), None);
        assert_eq!(Md5::from_hex("zz41402abc4b2a76b9719d911017c592"), None);
        assert_eq!(Md5::from_hex("é41402abc4b2a76b9719d911017c59"), None);
    }

    #[test]
    fn integer_headers_in_any_width_or_as_strings() {
        let mut props = meta().to_properties();
        let mut headers = FieldTable::default();
        headers.insert("tenant_id".into(), AMQPValue::ShortInt(5));
        headers.insert("client_id".into(), AMQPValue::LongString("12".into()));
        props = props.with_headers(headers);
        let m = JobMeta::from_properties(&props).unwrap();
        assert_eq!(
            (m.tenant_id, m.client_id, m.attempt),
            (TenantId(5), ClientId(12), 1)
        );
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
    fn event_json_skips_unknown_status_and_absent_fields() {
        let ev = StatusEvent::new(&meta(), Status::Queued);
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["status"], "QUEUED");
        assert!(json.get("error").is_none());
        let mut ev2: StatusEvent = serde_json::from_value(json).unwrap();
        assert_eq!(ev2.known_status(), Some(Status::Queued));
        ev2.status = "MARKER".into();
        assert_eq!(ev2.known_status(), None);
    }

    #[test]
    fn idempotency_ids_are_per_tenant_and_stable() {
        let a = JobId::for_idempotency_key(TenantId(1), "k");
        assert_eq!(a, JobId::for_idempotency_key(TenantId(1), "k"));
        assert_ne!(a, JobId::for_idempotency_key(TenantId(2), "k"));
    }
}
