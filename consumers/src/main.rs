//! `imagejobs-consumer`: parse settings, consume until SIGINT/SIGTERM, drain, exit 0.

use clap::Parser;
use imagejobs_consumer::ConsumerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    imagejobs::telemetry::init_tracing();
    let config = ConsumerConfig::parse();
    let shutdown = imagejobs::shutdown::on_signal();
    imagejobs_consumer::run(config, shutdown).await
}
