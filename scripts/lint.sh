#!/usr/bin/env bash
# `make lint`: formatting, clippy with warnings as errors, and shellcheck on every script.
# shellcheck comes from Debian's packages when it is missing, as RabbitMQ does.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/apt.sh
. scripts/apt.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

apt_ensure shellcheck shellcheck
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck -x "${scripts[@]}"
echo "lint: ok (${#scripts[@]} scripts checked by shellcheck)"
