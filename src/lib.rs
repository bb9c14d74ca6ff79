//! imagejobs: the HTTP ingress of the image-job pipeline, and its command-line client.
//!
//! # Layout
//! - [`ingress`]: the process (`Ingress::build`, `run_until_stopped`) and its settings.
//! - [`http`]: routes, the submit body parser, the error type of the API.
//! - [`submitter`]: accepting a job (the claim check, the confirmed publish, QUEUED);
//!   [`blob`]: the blob service, where large images go first and results come from.
//! - [`auth`]: bearer tokens; [`ratelimit`]: per-tenant limits; [`idempotency`]: keyed
//!   submits.
//! - [`index`]: the job index and the follower that feeds it from the events stream;
//!   [`outbox`]: QUEUED events that still have to reach the stream; [`snapshots`]:
//!   where the index's snapshots are kept (a directory, a shared blob store).
//! - [`metrics`]: the Prometheus metrics of `GET /metrics`.
//! - [`cli`]: the `imagejobs` command; [`sse`]: its reader of server-sent events.
//!
//! What the consumer shares with the ingress (wire types, topology, broker connection,
//! events stream) is in `imagejobs-core`.

pub mod auth;
pub mod blob;
pub mod cli;
pub mod http;
pub mod idempotency;
pub mod index;
pub mod ingress;
pub mod metrics;
pub mod outbox;
pub mod queue_depth;
pub mod ratelimit;
pub mod snapshots;
pub mod sse;
pub mod submitter;
