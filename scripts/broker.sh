# shellcheck shell=bash
# Sourced by scripts/test.sh, bench.sh and chaos.sh: use the private RabbitMQ node (or
# local cluster, BROKER_NODES=3), starting it if it is down, and stop it on exit only in
# that case (a broker someone else started, `make run`'s say, is left running). A stopped
# deployment of another size or RabbitMQ series (RABBITMQ_SERIES, default 3.10) is
# replaced: what these scripts keep there is disposable. A running one of another series
# than a RABBITMQ_SERIES that is set is refused.
# Exports AMQP_URL (every node's URL, comma-separated), BROKER_NODES and, since BROKER_TLS
# is on here, AMQPS_URL and AMQP_CA_FILE.

# The tests run a submit end to end over amqps: the nodes get their TLS listener.
export BROKER_TLS=${BROKER_TLS:-1}
broker_started_here=0
# The series of the node folder (rabbitmq/node.sh records it; a folder without is 3.10's).
broker_series=$(cat rabbitmq/.node/series 2>/dev/null || true)
if [ -z "$broker_series" ] && [ -d rabbitmq/.node/node-1 ]; then broker_series=3.10; fi
if ! ./rabbitmq/node.sh status >/dev/null 2>&1; then
  recorded=$(cat rabbitmq/.node/nodes 2>/dev/null || true)
  if [ -n "$broker_series" ] && [ "$broker_series" != "${RABBITMQ_SERIES:-3.10}" ]; then
    echo "replacing the stopped RabbitMQ $broker_series test broker with a ${RABBITMQ_SERIES:-3.10} one"
    ./rabbitmq/node.sh reset
  elif [ -n "${BROKER_NODES:-}" ] && [ -n "$recorded" ] && [ "$recorded" != "$BROKER_NODES" ]; then
    echo "replacing the stopped ${recorded}-node test broker with a ${BROKER_NODES}-node one"
    ./rabbitmq/node.sh reset
  fi
  ./rabbitmq/node.sh start
  broker_started_here=1
elif [ -n "${RABBITMQ_SERIES:-}" ] && [ "$broker_series" != "$RABBITMQ_SERIES" ]; then
  echo "the private broker runs RabbitMQ $broker_series, not RABBITMQ_SERIES=$RABBITMQ_SERIES: stop it first (make broker-stop)" >&2
  exit 1
fi
release_broker() {
  if [ "$broker_started_here" = 1 ]; then ./rabbitmq/node.sh stop || true; fi
}
trap release_broker EXIT
# shellcheck disable=SC1091
. rabbitmq/.node/env
export AMQP_URL BROKER_NODES AMQPS_URL AMQP_CA_FILE
