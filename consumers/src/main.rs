//! `imagejobs-consumer`: parse settings, consume until SIGINT/SIGTERM, drain, exit 0.

use clap::Parser;
use imagejobs_consumer::{Consumer, ConsumerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    imagejobs_core::telemetry::init_tracing();
    let config = ConsumerConfig::parse();
    imagejobs_core::tls::install_crypto();
    let shutdown = imagejobs_core::shutdown::on_signal();
    let consumed = Consumer::build(config, shutdown)
        .await?
        .run_until_stopped()
        .await;
    imagejobs_core::telemetry::flush();
    consumed
}
