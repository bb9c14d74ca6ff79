//! End-to-end tests against a real RabbitMQ node (started by `make test`, found through
//! `AMQP_URL`) and real HTTP servers on 127.0.0.1. Each test uses its own `AMQP_PREFIX`.

#![allow(clippy::unwrap_used)]

mod asyncapi;
mod cancel;
mod claim_check;
mod cli;
mod cluster;
mod consumer;
mod crash;
mod dashboard;
mod fair_share;
mod hostile;
mod index;
mod listing;
mod live;
mod metrics;
mod openapi;
mod snapshots;
mod submit;
mod submit_props;
mod tls;
mod tokens;
