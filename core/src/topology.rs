//! Every broker name and declaration (docs/amqp.md), derived from `AMQP_PREFIX`.
//!
//! The declarations are data first ([`Topology::declarations`]) so that the same list
//! declares the topology on a channel at start-up and renders `rabbitmq/definitions.json`
//! for operators; a test keeps that file equal to what the code declares.

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use serde_json::{json, Map, Value};

use crate::config::{ByteSize, MaxAge, TopologyArgs};

/// Routing key of job messages on the jobs exchange.
pub const SUBMIT_KEY: &str = "submit";

/// The header the lanes exchange hashes: a tenant's jobs all go to one lane.
pub const LANE_HASH_HEADER: &str = "tenant_id";

/// A queue argument value.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Int(i64),
    Str(String),
}

/// One thing to declare.
#[derive(Clone, Debug, PartialEq)]
pub enum Declaration {
    Exchange {
        name: String,
        kind: &'static str,
        args: Vec<(&'static str, Arg)>,
    },
    Queue {
        name: String,
        args: Vec<(&'static str, Arg)>,
    },
    /// `queue` receives what `exchange` routes with `key`.
    Binding {
        queue: String,
        exchange: String,
        key: String,
    },
    /// Exchange `destination` receives what `exchange` routes with `key`.
    ExchangeBinding {
        destination: String,
        exchange: String,
        key: String,
    },
    /// A binding of an older topology that must no longer route (declaring removes it
    /// when present; definitions for a new broker simply leave it out).
    Unbinding {
        queue: String,
        exchange: String,
        key: String,
    },
}

/// Names and limits of one deployment's topology.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
    max_length: u64,
    lanes: u16,
    delivery_limit: u32,
    events_max_age: MaxAge,
    events_max_bytes: ByteSize,
    control_max_age: MaxAge,
    retry_delays: Vec<Duration>,
}

/// Most bytes the control stream keeps: about half a million cancel requests.
const CONTROL_MAX_BYTES: i64 = 100_000_000;
/// Segments of the control stream: retention drops whole segments, so they are small.
const CONTROL_SEGMENT_BYTES: i64 = 8_000_000;

impl Topology {
    pub fn new(args: &TopologyArgs) -> Self {
        Topology {
            prefix: args.amqp_prefix.clone(),
            max_length: args.queue_max_length,
            lanes: args.job_lanes.max(1),
            delivery_limit: args.queue_delivery_limit,
            events_max_age: args.events_max_age.clone(),
            events_max_bytes: args.events_max_bytes,
            control_max_age: args.control_max_age.clone(),
            retry_delays: args.retry_delays.0.clone(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// How long the events stream keeps events (and the index its jobs).
    pub fn events_max_age(&self) -> &MaxAge {
        &self.events_max_age
    }
    pub fn delivery_limit(&self) -> u32 {
        self.delivery_limit
    }
    /// Direct exchange that takes jobs with routing key [`SUBMIT_KEY`].
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    /// The queue of last resort: what the lanes exchange cannot route (its alternate
    /// exchange's queue) and the jobs queued before the lanes existed. Consumers serve it
    /// like a lane; normally it stays empty.
    pub fn work_queue(&self) -> String {
        format!("{}.jobs.work", self.prefix)
    }
    /// Consistent-hash exchange on [`LANE_HASH_HEADER`] behind the jobs exchange.
    pub fn lanes_exchange(&self) -> String {
        format!("{}.jobs.lanes", self.prefix)
    }
    /// Fanout exchange of what the lanes exchange routes nowhere (alternate exchange).
    pub fn unrouted_exchange(&self) -> String {
        format!("{}.jobs.unrouted", self.prefix)
    }
    /// How many lanes the work queue has.
    pub fn lanes(&self) -> u16 {
        self.lanes
    }
    /// Lane `n`'s quorum queue.
    pub fn lane_queue(&self, n: u16) -> String {
        format!("{}.jobs.work.{n}", self.prefix)
    }
    /// Every queue a consumer takes jobs from, in the order it serves them: the lanes,
    /// then the queue of last resort.
    pub fn job_queues(&self) -> Vec<String> {
        let mut out: Vec<String> = (0..self.lanes).map(|n| self.lane_queue(n)).collect();
        out.push(self.work_queue());
        out
    }
    /// Delay queue for the next attempt after `delay`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.jobs.retry.{}s", self.prefix, delay.as_secs())
    }
    /// Fanout exchange of what cannot be processed.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.jobs.dlx", self.prefix)
    }
    /// Queue of what cannot be processed, with reasons in `x-error` or `x-death`.
    pub fn dead_queue(&self) -> String {
        format!("{}.jobs.dead", self.prefix)
    }
    /// Fanout exchange of status events.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// Stream queue the job index is rebuilt from (same name as the exchange).
    pub fn events_stream(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// Fanout exchange of control messages (cancel requests) for consumers.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }
    /// Stream queue of control messages; every consumer reads it from its first message.
    pub fn control_stream(&self) -> String {
        format!("{}.control", self.prefix)
    }
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// Everything the deployment needs, in an order that declares cleanly.
    pub fn declarations(&self) -> Vec<Declaration> {
        use Arg::{Int, Str};
        let quorum = ("x-queue-type", Str("quorum".into()));
        let work_args = vec![
            quorum.clone(),
            ("x-dead-letter-exchange", Str(self.dead_letter_exchange())),
            ("x-dead-letter-strategy", Str("at-least-once".into())),
            ("x-delivery-limit", Int(i64::from(self.delivery_limit))),
            ("x-max-length", Int(self.max_length as i64)),
            ("x-overflow", Str("reject-publish".into())),
        ];
        let fanout = |name: String| Declaration::Exchange {
            name,
            kind: "fanout",
            args: vec![],
        };
        let mut out = vec![
            Declaration::Exchange {
                name: self.jobs_exchange(),
                kind: "direct",
                args: vec![],
            },
            fanout(self.dead_letter_exchange()),
            fanout(self.events_exchange()),
            fanout(self.unrouted_exchange()),
            Declaration::Exchange {
                name: self.lanes_exchange(),
                kind: "x-consistent-hash",
                args: vec![
                    ("hash-header", Str(LANE_HASH_HEADER.into())),
                    ("alternate-exchange", Str(self.unrouted_exchange())),
                ],
            },
            Declaration::Queue {
                name: self.work_queue(),
                args: work_args.clone(),
            },
            // Before the lanes, the work queue took the jobs itself.
            Declaration::Unbinding {
                queue: self.work_queue(),
                exchange: self.jobs_exchange(),
                key: SUBMIT_KEY.into(),
            },
            Declaration::Binding {
                queue: self.work_queue(),
                exchange: self.unrouted_exchange(),
                key: String::new(),
            },
        ];
        for n in 0..self.lanes {
            out.push(Declaration::Queue {
                name: self.lane_queue(n),
                args: work_args.clone(),
            });
            // The key is the lane's weight on the hash ring: every lane weighs the same.
            out.push(Declaration::Binding {
                queue: self.lane_queue(n),
                exchange: self.lanes_exchange(),
                key: "1".into(),
            });
        }
        // Bound last, so that no job reaches the lanes exchange before its lanes exist.
        out.extend([
            Declaration::ExchangeBinding {
                destination: self.lanes_exchange(),
                exchange: self.jobs_exchange(),
                key: SUBMIT_KEY.into(),
            },
            Declaration::Queue {
                name: self.dead_queue(),
                args: vec![quorum.clone()],
            },
            Declaration::Binding {
                queue: self.dead_queue(),
                exchange: self.dead_letter_exchange(),
                key: String::new(),
            },
            Declaration::Queue {
                name: self.events_stream(),
                args: vec![
                    ("x-queue-type", Str("stream".into())),
                    (
                        "x-max-age",
                        Str(self.events_max_age.as_rabbitmq().to_owned()),
                    ),
                    (
                        "x-max-length-bytes",
                        Int(i64::try_from(self.events_max_bytes.0).unwrap_or(i64::MAX)),
                    ),
                ],
            },
            Declaration::Binding {
                queue: self.events_stream(),
                exchange: self.events_exchange(),
                key: String::new(),
            },
            fanout(self.control_exchange()),
            Declaration::Queue {
                name: self.control_stream(),
                args: vec![
                    ("x-queue-type", Str("stream".into())),
                    (
                        "x-max-age",
                        Str(self.control_max_age.as_rabbitmq().to_owned()),
                    ),
                    ("x-max-length-bytes", Int(CONTROL_MAX_BYTES)),
                    (
                        "x-stream-max-segment-size-bytes",
                        Int(CONTROL_SEGMENT_BYTES),
                    ),
                ],
            },
            Declaration::Binding {
                queue: self.control_stream(),
                exchange: self.control_exchange(),
                key: String::new(),
            },
        ]);
        for delay in &self.retry_delays {
            out.push(Declaration::Queue {
                name: self.retry_queue(*delay),
                args: vec![
                    quorum.clone(),
                    ("x-message-ttl", Int(delay.as_millis() as i64)),
                    ("x-dead-letter-exchange", Str(self.jobs_exchange())),
                    ("x-dead-letter-routing-key", Str(SUBMIT_KEY.into())),
                    ("x-dead-letter-strategy", Str("at-least-once".into())),
                    ("x-overflow", Str("reject-publish".into())),
                ],
            });
        }
        out
    }

    /// Declares everything on `channel`. Idempotent: declaring what exists with the same
    /// arguments is a no-op; different arguments fail with PRECONDITION_FAILED, which is
    /// reported with the name so an operator can see which limit changed.
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        use anyhow::Context;
        for decl in self.declarations() {
            match decl {
                Declaration::Exchange { name, kind, args } => {
                    let kind = match kind {
                        "direct" => ExchangeKind::Direct,
                        "fanout" => ExchangeKind::Fanout,
                        other => ExchangeKind::Custom(other.into()),
                    };
                    let opts = ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    };
                    channel
                        .exchange_declare(name.as_str().into(), kind, opts, field_table(args))
                        .await
                        .with_context(|| format!("declaring exchange {name} (an x-consistent-hash exchange needs the rabbitmq_consistent_hash_exchange plugin enabled)"))?;
                }
                Declaration::Queue { name, args } => {
                    let table = field_table(args);
                    let opts = QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    };
                    channel
                        .queue_declare(name.as_str().into(), opts, table)
                        .await
                        .with_context(|| format!("declaring queue {name} (if it exists with other arguments, delete it or restore the old limits)"))?;
                }
                Declaration::Binding {
                    queue,
                    exchange,
                    key,
                } => {
                    channel
                        .queue_bind(
                            queue.as_str().into(),
                            exchange.as_str().into(),
                            key.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .with_context(|| format!("binding {queue} to {exchange}"))?;
                }
                Declaration::ExchangeBinding {
                    destination,
                    exchange,
                    key,
                } => {
                    channel
                        .exchange_bind(
                            destination.as_str().into(),
                            exchange.as_str().into(),
                            key.as_str().into(),
                            ExchangeBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .with_context(|| format!("binding {destination} to {exchange}"))?;
                }
                Declaration::Unbinding {
                    queue,
                    exchange,
                    key,
                } => {
                    // Removing a binding that does not exist is a no-op for the broker.
                    channel
                        .queue_unbind(
                            queue.as_str().into(),
                            exchange.as_str().into(),
                            key.as_str().into(),
                            FieldTable::default(),
                        )
                        .await
                        .with_context(|| format!("unbinding {queue} from {exchange}"))?;
                }
            }
        }
        Ok(())
    }

    /// The same topology as a RabbitMQ definitions document (vhost `/`), for
    /// `rabbitmqctl import_definitions`.
    pub fn definitions_json(&self) -> Value {
        let (mut exchanges, mut queues, mut bindings) = (vec![], vec![], vec![]);
        for decl in self.declarations() {
            match decl {
                Declaration::Exchange { name, kind, args } => exchanges.push(json!({
                    "name": name, "vhost": "/", "type": kind, "durable": true,
                    "auto_delete": false, "internal": false, "arguments": json_args(args)
                })),
                Declaration::Queue { name, args } => queues.push(json!({
                    "name": name, "vhost": "/", "durable": true,
                    "auto_delete": false, "arguments": json_args(args)
                })),
                Declaration::ExchangeBinding {
                    destination,
                    exchange,
                    key,
                } => bindings.push(json!({
                    "source": exchange, "vhost": "/", "destination": destination,
                    "destination_type": "exchange", "routing_key": key, "arguments": {}
                })),
                Declaration::Unbinding { .. } => {}
                Declaration::Binding {
                    queue,
                    exchange,
                    key,
                } => bindings.push(json!({
                    "source": exchange, "vhost": "/", "destination": queue,
                    "destination_type": "queue", "routing_key": key, "arguments": {}
                })),
            }
        }
        json!({ "vhosts": [{"name": "/"}], "exchanges": exchanges, "queues": queues, "bindings": bindings })
    }
}

fn field_table(args: Vec<(&'static str, Arg)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let v = match v {
            Arg::Int(i) => AMQPValue::LongLongInt(i),
            Arg::Str(s) => AMQPValue::LongString(LongString::from(s)),
        };
        table.insert(k.into(), v);
    }
    table
}

fn json_args(args: Vec<(&'static str, Arg)>) -> Map<String, Value> {
    args.into_iter()
        .map(|(k, v)| {
            let v = match v {
                Arg::Int(i) => json!(i),
                Arg::Str(s) => json!(s),
            };
            (k.to_owned(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Topology {
        Topology::new(&TopologyArgs::default())
    }

    #[test]
    fn names_follow_the_prefix() {
        let t = defaults();
        assert_eq!(t.work_queue(), "imagejobs.jobs.work");
        assert_eq!(t.lane_queue(3), "imagejobs.jobs.work.3");
        assert_eq!(
            t.job_queues().len(),
            17,
            "16 lanes and the queue of last resort"
        );
        assert_eq!(
            t.retry_queue(Duration::from_secs(30)),
            "imagejobs.jobs.retry.30s"
        );
        assert_eq!(t.dead_queue(), "imagejobs.jobs.dead");
        assert_eq!(t.events_stream(), "imagejobs.events");
    }

    /// `rabbitmq/definitions.json` is what the code declares with default settings.
    /// Regenerate it with `make definitions` when this fails after a deliberate change.
    #[test]
    fn definitions_file_matches_code() {
        let file = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rabbitmq/definitions.json"
        ))
        .expect("rabbitmq/definitions.json exists");
        let on_disk: Value = serde_json::from_str(&file).expect("definitions.json is JSON");
        assert_eq!(on_disk, defaults().definitions_json());
    }
}
