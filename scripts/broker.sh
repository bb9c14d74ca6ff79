# shellcheck shell=bash
# Sourced by scripts/test.sh, bench.sh and chaos.sh: use the private RabbitMQ node (or
# local cluster, BROKER_NODES=3), starting it if it is down, and stop it on exit only in
# that case (a broker someone else started, `make run`'s say, is left running). A stopped
# deployment of another size is replaced: what these scripts keep there is disposable.
# Exports AMQP_URL (every node's URL, comma-separated) and BROKER_NODES.

broker_started_here=0
if ! ./rabbitmq/node.sh status >/dev/null 2>&1; then
  recorded=$(cat rabbitmq/.node/nodes 2>/dev/null || true)
  if [ -n "${BROKER_NODES:-}" ] && [ -n "$recorded" ] && [ "$recorded" != "$BROKER_NODES" ]; then
    echo "replacing the stopped ${recorded}-node test broker with a ${BROKER_NODES}-node one"
    ./rabbitmq/node.sh reset
  fi
  ./rabbitmq/node.sh start
  broker_started_here=1
fi
release_broker() {
  if [ "$broker_started_here" = 1 ]; then ./rabbitmq/node.sh stop || true; fi
}
trap release_broker EXIT
# shellcheck disable=SC1091
. rabbitmq/.node/env
export AMQP_URL BROKER_NODES
