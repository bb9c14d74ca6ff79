//! Local stand-ins for the two external services of the imagejobs pipeline, with the seed's
//! APIs and fault injection, served by one process (`imagejobs-stubs`) or in-process by tests.
//!
//! # Layout
//!
//! - [`config`]: [`StubConfig`], the settings (clap with `env`, or built in code).
//! - [`server`]: binds both services; [`Stubs`] is the handle tests hold, [`run`] serves until
//!   shutdown.
//! - [`blob`]: the blob service: in-memory, bounded store and its routes.
//! - [`worker`]: the worker service: deduplicated jobs, their tasks and status.
//! - [`blob_client`]: the worker's HTTP client of the blob service.
//! - [`thumbnail`]: the image work (decode, shrink to 128×128, encode PNG).
//! - [`faults`]: runtime-adjustable fault knobs ([`Faults`]) and the middleware applying them.
//! - [`stats`]: request, in-flight and per-id counters ([`StatsSnapshot`]).
//! - [`error`]: [`ApiError`], every error answered as `{"error", "code", "details"}`.
//!
//! # Use in tests
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use imagejobs_stubs::{StubConfig, Stubs};
//! use tokio_util::sync::CancellationToken;
//!
//! let shutdown = CancellationToken::new();
//! // Default: OS-assigned ports on 127.0.0.1, no faults, real image work.
//! let stubs = Stubs::start(StubConfig::default(), shutdown.clone()).await?;
//! println!("WORKER_SERVICE_URL={} BLOB_SERVICE_URL={}", stubs.worker_url, stubs.blob_url);
//! stubs.faults().set_error_rate(0.2);
//! // ... run the pipeline against the stubs ...
//! let stats = stubs.stats();
//! assert!(stats.endpoint(imagejobs_stubs::Endpoint::JobPost).max_in_flight <= 32);
//! shutdown.cancel();
//! stubs.wait().await;
//! # Ok(())
//! # }
//! ```

pub mod blob;
pub mod blob_client;
pub mod config;
pub mod error;
pub mod faults;
pub mod server;
pub mod stats;
pub mod thumbnail;
pub mod worker;

pub use config::StubConfig;
pub use error::ApiError;
pub use faults::Faults;
pub use server::{run, Stubs};
pub use stats::{Endpoint, EndpointStats, StatsSnapshot};
pub use worker::JobStatus;
