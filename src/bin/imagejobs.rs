//! `imagejobs`: the command-line client. See `imagejobs --help`.

use clap::Parser;
use imagejobs::cli::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    imagejobs_core::telemetry::init_tracing_quiet();
    let cli = Cli::parse();
    imagejobs_core::tls::install_crypto();
    match imagejobs::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
