#!/usr/bin/env bash
# `make lint`: formatting, clippy with warnings as errors, the supply-chain checks of
# deny.toml, shellcheck on every script, and `make k8s-check` (the Helm chart). shellcheck
# comes from Debian's packages when it is missing, as RabbitMQ does; cargo-deny from
# crates.io (built once, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/apt.sh
. scripts/apt.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The OTLP export is off by default; check that it still builds (a few minutes, once).
cargo clippy -p imagejobs-core --features otlp -- -D warnings

# Licenses, banned crates (OpenSSL among them) and sources. Not advisories: their
# database is fetched from GitHub, which this machine cannot reach (see README).
deny_version=0.20.2
if [[ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]]; then
    echo "lint: installing cargo-deny $deny_version (once)"
    cargo install --locked --quiet cargo-deny --version "$deny_version"
fi
cargo deny --log-level warn check licenses bans sources

apt_ensure shellcheck shellcheck
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck -x "${scripts[@]}"
echo "lint: ${#scripts[@]} scripts checked by shellcheck"

# The Helm chart (deploy/helm/imagejobs): rendered, validated, and run on this machine.
./scripts/k8s-check.sh
echo "lint: ok"
