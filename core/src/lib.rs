//! imagejobs-core: what every imagejobs process shares. The ingress (`imagejobs`) and the
//! consumer (`imagejobs-consumer`) both depend on this crate and on nothing of each other,
//! so that "the consumer never uses http or the index" is a fact the compiler checks.
//!
//! # Layout
//! - Wire types, the only types that cross process boundaries (new fields optional):
//!   [`ids`] (`JobId`, `TenantId`, `ClientId`, `Md5`), [`status`] (`Status`, the status
//!   event), [`message`] (the job message's headers and AMQP codec).
//! - [`topology`]: every exchange and queue name and its declaration, as data.
//! - [`broker`]: the supervised connection, its confirm-channel pool, confirmed publishing.
//! - [`events`]: publishing status events and following the events stream (and any
//!   stream); [`control`]: the control stream's messages (cancels) for consumers.
//! - [`config`]: settings shared by the binaries, parsed into domain types.
//! - [`backoff`]: the jittered exponential backoff of every reconnect and resubscribe.
//! - [`metrics`]: Prometheus metrics and the consumer's listener; [`trace`]: W3C trace
//!   context, one trace per job.
//! - [`shutdown`], [`telemetry`]: signals and logging; [`sniff`]: image types by magic bytes;
//!   [`tls`]: the rustls provider and private CAs.

pub mod backoff;
pub mod broker;
pub mod config;
pub mod control;
pub mod events;
pub mod flags;
pub mod ids;
pub mod message;
pub mod metrics;
pub mod shutdown;
pub mod sniff;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod trace;
