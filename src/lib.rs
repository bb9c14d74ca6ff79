//! imagejobs: an image-job pipeline on RabbitMQ.
//!
//! # Layout
//! - [`job`]: the wire types (job message, status event) and their newtypes.
//! - [`topology`]: every exchange and queue name, and their idempotent declaration.
//! - [`broker`]: the supervised connection, the confirm-channel pool, confirmed publishing.
//! - [`auth`]: HS256 bearer tokens.
//! - [`index`]: the job index, fed from the events stream.
//! - [`http`], [`ingress`]: the HTTP API and the process that serves it.
//! - [`config`], [`shutdown`], [`telemetry`]: settings, signals, logging.
//!
//! The consumer (`consumers/`) and the stub services (`stubs/`) are crates of their own
//! that use this library's wire types, topology and broker modules.

pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod http;
pub mod idempotency;
pub mod index;
pub mod ingress;
pub mod job;
pub mod ratelimit;
pub mod shutdown;
pub mod sniff;
pub mod telemetry;
pub mod topology;
