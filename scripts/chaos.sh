#!/usr/bin/env bash
# `make chaos`: the whole pipeline under load while faults are injected (RELIABILITY.md), on
# the private broker: one node, or a local cluster with BROKER_NODES=3. Prints one table
# and writes it to RELIABILITY.md; exits non-zero on any loss or flip.
#
#   ./scripts/chaos.sh            the full run (about 3 minutes on one node, 4 on three)
#   ./scripts/chaos.sh --short    the minute-long run that `make test` includes
#
# It stops and starts broker nodes and raises resource alarms on them: it starts a node
# (or cluster) of its own when none runs, and stops it at the end in that case. Further
# arguments go to `imagejobs-bench chaos` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."

write=(--write RELIABILITY.md)
for arg in "$@"; do
  [ "$arg" = --short ] && write=()
done

# The development build: the chaos measures correctness, not speed, and `make test`
# builds the same binaries (bins and tests together, as scripts/test.sh does).
cargo build --workspace --all-targets

# shellcheck source=scripts/broker.sh
. scripts/broker.sh

BENCH_COMMAND="${RABBITMQ_SERIES:+RABBITMQ_SERIES=$RABBITMQ_SERIES }BROKER_NODES=${BROKER_NODES:-1} make chaos${*:+ ($*)}"
export BENCH_COMMAND BENCH_BIN_DIR=target/debug
./target/debug/imagejobs-bench chaos "${write[@]}" "$@"
