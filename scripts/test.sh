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

# The benchmark tool, in its tiny smoke form: it checks that the tool works, not how fast.
./scripts/bench.sh --smoke > target/bench-smoke.log 2>&1 || { tail -n 40 target/bench-smoke.log; exit 1; }
echo "benchmark smoke run: ok (target/bench-smoke.log)"
