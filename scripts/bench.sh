#!/usr/bin/env bash
# `make bench` / `make bench-smoke`: build the release binaries, make sure the private
# RabbitMQ node runs (starting it, and stopping it at the end, only if it was down), and
# run imagejobs-bench against it.
#
#   ./scripts/bench.sh           full run; the table goes to stdout and to BENCHMARKS.md
#   ./scripts/bench.sh --smoke   a tiny run of every scenario, to check that the tool works
#   ./scripts/bench.sh --only X  scenario X only (e.g. claim-check); the table goes to stdout
#                                only, since BENCHMARKS.md's results section is a full run's
#
# Further arguments go to imagejobs-bench (see `target/release/imagejobs-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
only=0
for arg in "$@"; do
  [ "$arg" = --smoke ] && smoke=1
  case "$arg" in --only | --only=*) only=1 ;; esac
done

# The smoke run uses the development build that `make test` made anyway (it checks that
# the tool works, not how fast); a real run measures release binaries.
if [ "$smoke" = 1 ]; then
  profile_dir=target/debug
  # As scripts/test.sh builds it (bins and tests together): nothing to rebuild after it.
  cargo build --workspace --all-targets
else
  profile_dir=target/release
  cargo build --release --workspace --bins
fi

# shellcheck source=scripts/broker.sh
. scripts/broker.sh

BENCH_BROKER_VERSION=$(./rabbitmq/node.sh ctl version 2>/dev/null | tail -n 1 || true)
BENCH_RUSTC_VERSION=$(rustc --version 2>/dev/null || true)
# The broker's VM, whose CPU time per job the table shows.
BENCH_BROKER_PID=$(cat rabbitmq/.node/rabbitmq.pid 2>/dev/null || true)
if [ "$smoke" = 1 ]; then
  BENCH_COMMAND="make bench-smoke (scripts/bench.sh $*)"
  write=()
elif [ "$only" = 1 ]; then
  BENCH_COMMAND="scripts/bench.sh $*"
  write=()
else
  BENCH_COMMAND="make bench (scripts/bench.sh${*:+ $*})"
  write=(--write BENCHMARKS.md)
fi
export BENCH_BROKER_VERSION BENCH_RUSTC_VERSION BENCH_COMMAND
[ -n "$BENCH_BROKER_PID" ] && export BENCH_BROKER_PID

# Not `exec`: the EXIT trap of scripts/broker.sh must still stop a node this script started.
export BENCH_BIN_DIR=$profile_dir
"./$profile_dir/imagejobs-bench" "${write[@]}" "$@"
