//! The `imagejobs` command-line client: dev tokens, submitting files, job status, listing,
//! watching and cancelling jobs, the dead-letter queue, and `top`.

mod dead;
mod jobs;
mod submit;
mod top;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::auth::{self, Caller};
use imagejobs_core::config::{BrokerArgs, Secret, TopologyArgs};
use imagejobs_core::ids::{ClientId, TenantId};
use imagejobs_core::topology::Topology;

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
    /// Mint a development JWT signed with JWT_SECRET, or with a private key
    /// (--private-key-file and --algorithm RS256, ES256 or EdDSA).
    Token(TokenArgs),
    /// Submit image files (concurrently, with a progress bar) and print their job ids.
    Submit(submit::SubmitArgs),
    /// Show one job as the ingress knows it.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// The job id printed by `submit`.
        id: String,
    },
    /// List your recent jobs, newest first.
    List(jobs::ListArgs),
    /// Follow one job's status changes live until it ends.
    Watch(jobs::WatchArgs),
    /// Cancel a job: a queued one never runs, a running one is stopped.
    Cancel(jobs::CancelArgs),
    /// Download a succeeded job's result (following a RESULT_REDIRECT to where it is).
    Result(jobs::ResultArgs),
    /// Look into and replay the dead-letter queue.
    Dead {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(subcommand)]
        command: dead::DeadCommand,
    },
    /// Watch queue depths, rates, jobs in flight and recent failures, until Ctrl-C.
    Top(top::TopArgs),
    /// Print the RabbitMQ definitions (exchanges, queues, bindings) for the settings given.
    Definitions {
        #[command(flatten)]
        topology: TopologyArgs,
    },
    /// Print the ingress's OpenAPI document (as served at /api/v1/openapi.json).
    Openapi,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// HS256 secret to sign with.
    #[arg(
        long,
        env = "JWT_SECRET",
        hide_env_values = true,
        required_unless_present = "private_key_file"
    )]
    pub secret: Option<Secret>,
    /// Private key (PEM, PKCS#8) to sign with instead, for an ingress that has the public
    /// key in JWT_PUBLIC_KEY_FILE; it wins over JWT_SECRET.
    #[arg(long, env = "JWT_PRIVATE_KEY_FILE")]
    pub private_key_file: Option<std::path::PathBuf>,
    /// Algorithm of --private-key-file: RS256, ES256 or EdDSA (HS256 with a secret).
    #[arg(long, env = "JWT_ALGORITHM", default_value = "HS256")]
    pub algorithm: String,
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

/// Where the ingress is and who we are to it.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the ingress.
    #[arg(long, env = "IMAGEJOBS_URL", default_value = "http://127.0.0.1:9000")]
    pub url: String,
    /// Bearer token; when unset, one is minted from JWT_SECRET for --tenant/--client.
    #[arg(long, env = "IMAGEJOBS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    #[arg(long, default_value_t = 1)]
    pub tenant: i64,
    #[arg(long, default_value_t = 1)]
    pub client: i64,
}

impl ApiArgs {
    fn bearer(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let secret = self.jwt_secret.as_ref().context(
            "no token: pass --token (or IMAGEJOBS_TOKEN), or set JWT_SECRET to mint one",
        )?;
        let caller = Caller {
            tenant_id: TenantId(self.tenant),
            client_id: ClientId(self.client),
        };
        Ok(auth::mint(
            secret,
            caller,
            None,
            Some(Duration::from_secs(3600)),
        )?)
    }

    fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Token(t) => {
            let caller = Caller {
                tenant_id: TenantId(t.tenant),
                client_id: ClientId(t.client),
            };
            let ttl = (t.ttl > 0).then(|| Duration::from_secs(t.ttl));
            let algorithm = auth::parse_algorithm(&t.algorithm)?;
            let aud = t.audience.as_deref();
            let token = match (&t.private_key_file, &t.secret) {
                (Some(path), _) => {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    auth::mint_with_private_key(algorithm, &pem, caller, aud, ttl).with_context(
                        || format!("signing with {} as {algorithm:?}", path.display()),
                    )?
                }
                (None, Some(secret)) => {
                    anyhow::ensure!(
                        algorithm == jsonwebtoken::Algorithm::HS256,
                        "--algorithm {algorithm:?} signs with --private-key-file, not a secret"
                    );
                    auth::mint(secret, caller, aud, ttl)?
                }
                (None, None) => anyhow::bail!("no key: set JWT_SECRET or --private-key-file"),
            };
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => submit::run(args).await,
        Command::Status { api, id } => {
            let http = reqwest::Client::new();
            let resp = http
                .get(format!("{}/api/v1/job/{id}", api.base()))
                .bearer_auth(api.bearer()?)
                .send()
                .await
                .with_context(|| format!("reaching the ingress at {}", api.url))?;
            let ok = resp.status().is_success();
            let body: serde_json::Value = resp.json().await.context("reading the answer")?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::List(args) => jobs::list(args).await,
        Command::Watch(args) => jobs::watch(args).await,
        Command::Cancel(args) => jobs::cancel(args).await,
        Command::Result(args) => jobs::result(args).await,
        Command::Dead { broker, command } => dead::run(broker, command).await,
        Command::Top(args) => top::run(args).await,
        Command::Definitions { topology } => {
            let json = Topology::new(&topology).definitions_json();
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!("{}", crate::http::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
    }
}
