//! `imagejobs-ingress`: parse settings, start, serve until SIGINT/SIGTERM.

use clap::Parser;
use imagejobs::ingress::{Ingress, IngressConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    imagejobs_core::telemetry::init_tracing();
    let config = IngressConfig::parse();
    imagejobs_core::tls::install_crypto();
    let shutdown = imagejobs_core::shutdown::on_signal();
    let ingress = Ingress::build(config, shutdown).await?;
    tracing::info!(addr = %ingress.local_addr(), "ingress listening");
    let served = ingress.run_until_stopped().await;
    imagejobs_core::telemetry::flush();
    served
}
