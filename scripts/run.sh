#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine, in the foreground.
#
# Starts (installing RabbitMQ first if it is missing) the private RabbitMQ node, the stub
# worker and blob services, the ingress and $CONSUMERS consumers (default 2), prints how
# to submit, and stops everything it started on Ctrl-C. Logs go to .run/*.log.
#
# Settings come from the environment as usual (see README); this script only picks
# development defaults: a JWT secret kept in .run/jwt_secret, short retry delays.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

broker_was_up=0
if ./rabbitmq/node.sh status >/dev/null 2>&1; then broker_was_up=1; fi
./rabbitmq/node.sh start
# shellcheck disable=SC1091
. rabbitmq/.node/env
export AMQP_URL

echo "building the release binaries (the first time takes a few minutes)..."
cargo build --release -p imagejobs -p imagejobs-consumer -p imagejobs-stubs
bin=$root/target/release

mkdir -p .run
if [ -z "${JWT_SECRET:-}" ] && [ -z "${JWT_SECRET_FILE:-}" ]; then
  [ -s .run/jwt_secret ] || head -c 32 /dev/urandom | base64 | tr -d '\n/+=' > .run/jwt_secret
  JWT_SECRET=$(cat .run/jwt_secret)
  export JWT_SECRET
fi
export SERVER_PORT=${SERVER_PORT:-9000}
export WORKER_PORT=${WORKER_PORT:-8080}
export BLOB_PORT=${BLOB_PORT:-8081}
export WORKER_SERVICE_URL=${WORKER_SERVICE_URL:-http://127.0.0.1:$WORKER_PORT/api/v1}
export BLOB_SERVICE_URL=${BLOB_SERVICE_URL:-http://127.0.0.1:$BLOB_PORT/api/v1}
export RETRY_DELAYS=${RETRY_DELAYS-2,5}
export STUB_RUNNING_MS=${STUB_RUNNING_MS:-300}
# The ingress snapshots its job index here: a restart replays only the newer events.
export INDEX_SNAPSHOT_DIR=${INDEX_SNAPSHOT_DIR:-$root/.run/snapshots}
export INDEX_SNAPSHOT_INTERVAL=${INDEX_SNAPSHOT_INTERVAL:-1m}
consumers=${CONSUMERS:-2}

for port in "$SERVER_PORT" "$WORKER_PORT" "$BLOB_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; set SERVER_PORT / WORKER_PORT / BLOB_PORT to free ones" >&2
    exit 1
  fi
done

# GET /readyz with bash alone (curl may not be installed yet).
ready_probe() {
  local line
  exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT" 2>/dev/null || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  IFS= read -r line <&3 || true
  exec 3<&- 3>&-
  [[ $line == *" 200 "* ]]
}

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$broker_was_up" = 0 ]; then ./rabbitmq/node.sh stop || true; fi
  echo "stopped."
}
trap stop_all EXIT
trap 'stop_all; exit 0' INT TERM

"$bin/imagejobs-stubs" > .run/stubs.log 2>&1 &
pids+=($!)
"$bin/imagejobs-ingress" > .run/ingress.log 2>&1 &
pids+=($!)
# Consumer i serves its metrics on 9099 + i (9100, 9101, ...).
metrics_urls=""
for i in $(seq 1 "$consumers"); do
  METRICS_PORT=$((9099 + i)) "$bin/imagejobs-consumer" > ".run/consumer-$i.log" 2>&1 &
  pids+=($!)
  metrics_urls+=${metrics_urls:+,}http://127.0.0.1:$((9099 + i))/metrics
done

ready=0
for _ in $(seq 1 150); do
  if ready_probe; then ready=1; break; fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a process exited early; see .run/*.log" >&2; tail -n 20 .run/*.log >&2; exit 1; }
  done
  sleep 0.2
done
[ "$ready" = 1 ] || { echo "the ingress did not become ready; see .run/ingress.log" >&2; exit 1; }

token=$("$bin/imagejobs" token --tenant 1 --client 1)
cat <<INFO

imagejobs is up:
  dashboard  http://127.0.0.1:$SERVER_PORT/  (open it and paste the token below)
  ingress    http://127.0.0.1:$SERVER_PORT   (logs: .run/ingress.log)
  consumers  $consumers                        (logs: .run/consumer-*.log)
  stubs      worker http://127.0.0.1:$WORKER_PORT, blob http://127.0.0.1:$BLOB_PORT
  broker     $(sed 's/:[^:@/]*@/:***@/g' <<<"$AMQP_URL")  (management: ${RABBITMQ_MANAGEMENT_URL:-off})
  metrics    http://127.0.0.1:$SERVER_PORT/metrics, $metrics_urls,
             RabbitMQ: $RABBITMQ_PROMETHEUS_URLS

A dev token (tenant 1, client 1):
  export IMAGEJOBS_TOKEN=$token

Submit with curl:
  curl -sS -X POST http://127.0.0.1:$SERVER_PORT/api/v1/job \\
    -H "Authorization: Bearer \$IMAGEJOBS_TOKEN" -H "Content-Type: image/png" \\
    --data-binary @examples/sunset.png

Or with the CLI (another terminal; export the token first):
  ./target/release/imagejobs submit --wait examples/*.png
  ./target/release/imagejobs status <id>
  ./target/release/imagejobs list; ./target/release/imagejobs watch <id>; ./target/release/imagejobs cancel <id>
  . rabbitmq/.node/env && RETRY_DELAYS=$RETRY_DELAYS ./target/release/imagejobs top --consumer-metrics $metrics_urls

Ctrl-C stops everything.
INFO

# Stay in the foreground until Ctrl-C or until one of the processes dies.
while true; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited; see .run/*.log" >&2
      exit 1
    fi
  done
  sleep 1
done
