//! imagejobs-testkit: what the end-to-end tests (`tests/pipeline`) and the benchmarks
//! (`bench/`) share, so neither writes it twice.
//!
//! # Layout
//! - [`deployment`]: a fresh `AMQP_PREFIX` on the test broker, its topology, queue
//!   inspection and removal.
//! - [`pipeline`]: [`Pipeline`] starts stubs, ingresses and consumers from typed configs
//!   and stops them all (and removes the deployment) when dropped.
//! - [`process`]: the built binaries as child processes (to kill them for real, to measure
//!   them).
//! - [`events`]: a reader of the events stream over `imagejobs_core::events`.
//! - [`proxy`]: a TCP proxy that cuts a broker node off and lets it back; [`nodes`]: the
//!   broker's nodes through `rabbitmq/node.sh`.
//! - [`exposition`]: a strict parser of Prometheus's text format; [`spans`]: the spans
//!   that joined a trace.
//! - [`poll`]: `eventually`, polling with a deadline; [`ready`]: `wait_ready`, until an
//!   ingress's `/readyz` says 200; [`tls`]: certificates made at run time.
//! - [`browser`]: headless Chromium through chromedriver (WebDriver), for the dashboard.
//!
//! ```no_run
//! # async fn example() {
//! use imagejobs_testkit::{png, Pipeline};
//! let p = Pipeline::new().await;
//! let ing = p.ingress().await;
//! let _consumer = p.consumer_with(|c| c.prefetch = 4).await;
//! let id = ing.submit_id(&png(20, 20)).await;
//! let job = ing.wait_terminal(&id, 1, std::time::Duration::from_secs(20)).await;
//! assert_eq!(job["status"], "SUCCESS");
//! # }
//! ```

pub mod browser;
pub mod deployment;
pub mod events;
pub mod exposition;
pub mod keys;
pub mod nodes;
pub mod pipeline;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod ready;
pub mod spans;
pub mod tls;

use std::time::Duration;

pub use deployment::{amqp_urls, get_job, get_one, jobs_len, queue_len, Deployment};
pub use events::{all_events, statuses_of, EventReader};
pub use pipeline::{Pipeline, TestConsumer, TestIngress};
pub use poll::{eventually, try_eventually};
pub use proxy::Proxy;
pub use ready::wait_ready;

use imagejobs::auth::{mint, Caller};
use imagejobs_core::config::Secret;
use imagejobs_core::ids::{ClientId, TenantId};

/// The JWT secret of every ingress the tests start (the seed's, so its example token
/// works too).
pub const SECRET: &str = "your-256-bit-secret";

/// A bearer token of `tenant` and `client`, valid for ten minutes.
pub fn token(tenant: i64, client: i64) -> String {
    token_with(SECRET, tenant, client)
}

/// A token signed with `secret`.
pub fn token_with(secret: &str, tenant: i64, client: i64) -> String {
    let caller = Caller {
        tenant_id: TenantId(tenant),
        client_id: ClientId(client),
    };
    mint(
        &Secret::new(secret),
        caller,
        None,
        Some(Duration::from_secs(600)),
    )
    .expect("token minted")
}

/// Logs of the code under test, captured per test (shown for failing tests).
pub fn init_logs() {
    imagejobs_core::tls::install_crypto();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(filter),
        )
        .with(
            spans::SpanRecorder
                .with_filter(tracing_subscriber::filter::filter_fn(spans::only_spans)),
        )
        .try_init();
}

/// A real PNG of `w` x `h` with some texture, so it does not compress to nothing.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png encodes");
    out.into_inner()
}
