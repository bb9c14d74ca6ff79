# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/bench.sh: use the private RabbitMQ node, starting
# it if it is down, and stop it on exit only in that case (a node someone else started,
# `make run`'s say, is left running). Exports AMQP_URL.

broker_started_here=0
if ! ./rabbitmq/node.sh status >/dev/null 2>&1; then
  ./rabbitmq/node.sh start
  broker_started_here=1
fi
release_broker() {
  if [ "$broker_started_here" = 1 ]; then ./rabbitmq/node.sh stop || true; fi
}
trap release_broker EXIT
# shellcheck disable=SC1091
. rabbitmq/.node/env
export AMQP_URL
