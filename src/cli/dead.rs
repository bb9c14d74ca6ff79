//! `imagejobs dead list` and `imagejobs dead replay [ID|--all]`.
//!
//! Nothing is lost by looking: messages are taken without ack, and whatever is not
//! replayed goes back to the dead queue when the channel closes. A replayed message is
//! acked only after the broker confirmed its copy into the work queue.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};

use imagejobs_core::config::BrokerArgs;
use imagejobs_core::message::{copied_headers, header, header_string, JobMeta};
use imagejobs_core::topology::{Topology, SUBMIT_KEY};

#[derive(Subcommand, Debug)]
pub enum DeadCommand {
    /// List what is in the dead-letter queue, with the reasons.
    List {
        /// Show at most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Send dead jobs back to the work queue as their next attempt.
    Replay {
        /// The job id to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead job.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(broker: BrokerArgs, command: DeadCommand) -> anyhow::Result<ExitCode> {
    let topo = Topology::new(&broker.topology);
    let conn = connect(&broker).await?;
    let ch = conn.create_channel().await?;
    let dead = topo.dead_queue();
    let count = ch
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("{dead} does not exist (is AMQP_PREFIX right?)"))?
        .message_count();
    let code = match command {
        DeadCommand::List { limit } => {
            let msgs = take(&ch, &dead, count.min(limit)).await?;
            println!("{count} message(s) in {dead}");
            for m in &msgs {
                println!("{}", describe(m));
            }
            ExitCode::SUCCESS
        }
        DeadCommand::Replay { id, all } => {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            let msgs = take(&ch, &dead, count).await?;
            let mut replayed = 0;
            for m in &msgs {
                let mid = m
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned());
                if !all && mid != id {
                    continue;
                }
                replay(&ch, &topo, m).await?;
                m.delivery.acker.ack(BasicAckOptions::default()).await?;
                replayed += 1;
                println!("replayed {}", mid.unwrap_or_else(|| "(no id)".into()));
            }
            if replayed == 0 {
                eprintln!("no matching message in {dead}");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    };
    // Unacked messages return to the dead queue here.
    let _ = ch.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(code)
}

/// A connection to the first node of the list that answers.
pub(super) async fn connect(broker: &BrokerArgs) -> anyhow::Result<Connection> {
    let mut last = None;
    let ca = broker.ca_pem()?;
    for url in &broker.urls()?.0 {
        let props = ConnectionProperties::default();
        match imagejobs_core::broker::open(url, ca.as_deref(), props).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = Some(anyhow::Error::from(e).context(format!("connecting to {url}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no AMQP URL given")))
}

async fn take(ch: &Channel, queue: &str, n: u32) -> anyhow::Result<Vec<BasicGetMessage>> {
    let mut out = Vec::new();
    for _ in 0..n {
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(m) => out.push(m),
            None => break,
        }
    }
    Ok(out)
}

async fn replay(ch: &Channel, topo: &Topology, m: &BasicGetMessage) -> anyhow::Result<()> {
    let props = &m.delivery.properties;
    let attempt = JobMeta::from_properties(props)
        .map(|j| j.attempt)
        .unwrap_or(1);
    // The copy is a fresh attempt: what the dead-lettering added goes.
    let headers = copied_headers(
        props,
        |name| name != header::ERROR && !header::is_death_mark(name),
        (
            header::ATTEMPT,
            AMQPValue::LongLongInt(i64::from(attempt) + 1),
        ),
    );
    let confirm = ch
        .basic_publish(
            topo.jobs_exchange().as_str().into(),
            SUBMIT_KEY.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &m.delivery.data,
            props.clone().with_headers(headers),
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        other => anyhow::bail!("the broker did not take the replayed job: {other:?}"),
    }
}

fn describe(m: &BasicGetMessage) -> String {
    let props = &m.delivery.properties;
    let id = props
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| "(no id)".into());
    let empty = FieldTable::default();
    let headers = props.headers().as_ref().unwrap_or(&empty);
    let tenant = headers
        .inner()
        .get(header::TENANT_ID)
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "-".into());
    let attempt = JobMeta::from_properties(props)
        .map(|j| j.attempt.to_string())
        .unwrap_or_else(|_| "-".into());
    let reason = header_string(headers, header::ERROR)
        .or_else(|| death_reason(headers))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "{id}  tenant={tenant}  attempt={attempt}  bytes={}  reason: {reason}",
        m.delivery.data.len()
    )
}

/// What the broker wrote when it dead-lettered a message by itself (e.g. delivery limit).
fn death_reason(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get(header::DEATH)? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let reason = header_string(first, "reason").unwrap_or_else(|| "?".into());
    let queue = header_string(first, "queue").unwrap_or_else(|| "?".into());
    Some(format!(
        "dead-lettered by the broker ({reason}) from {queue}"
    ))
}
