#!/usr/bin/env bash
# `make test`: start the private RabbitMQ node, run every test against it, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."

started_here=0
if ! ./rabbitmq/node.sh status >/dev/null 2>&1; then
  ./rabbitmq/node.sh start
  started_here=1
fi
cleanup() {
  if [ "$started_here" = 1 ]; then ./rabbitmq/node.sh stop || true; fi
}
trap cleanup EXIT
# shellcheck disable=SC1091
. rabbitmq/.node/env
export AMQP_URL

# The end-to-end tests run the consumer binary as a child process (to SIGKILL it).
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
