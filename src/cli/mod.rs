//! The `imagejobs` command-line client: dev tokens, submitting files, job status, and the
//! dead-letter queue.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::{self, Caller};
use crate::config::{Secret, TopologyArgs};
use crate::job::{ClientId, TenantId};
use crate::topology::Topology;

#[derive(Parser, Debug)]
#[command(
    name = "imagejobs",
    version,
    about = "Command-line client of the imagejobs pipeline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mint a development JWT signed with JWT_SECRET.
    Token(TokenArgs),
    /// Print the RabbitMQ definitions (exchanges, queues, bindings) for the settings given.
    Definitions {
        #[command(flatten)]
        topology: TopologyArgs,
    },
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: Secret,
    /// Tenant id (`tid` claim).
    #[arg(long, default_value_t = 1)]
    pub tenant: i64,
    /// Client id (`oid` claim).
    #[arg(long, default_value_t = 1)]
    pub client: i64,
    /// Audience (`aud` claim).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// Lifetime in seconds; 0 = no `exp` claim.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Token(t) => {
            let caller = Caller {
                tenant_id: TenantId(t.tenant),
                client_id: ClientId(t.client),
            };
            let ttl = (t.ttl > 0).then(|| Duration::from_secs(t.ttl));
            println!(
                "{}",
                auth::mint(&t.secret, caller, t.audience.as_deref(), ttl)?
            );
        }
        Command::Definitions { topology } => {
            let json = Topology::new(&topology).definitions_json();
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
