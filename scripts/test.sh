#!/usr/bin/env bash
# `make test`: start the private RabbitMQ node, run every test against it, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/broker.sh
. scripts/broker.sh

# The dashboard's browser test drives Debian's headless Chromium through chromedriver.
# Without them the rest of the suite still runs, and that test says loudly that it skips
# (IMAGEJOBS_REQUIRE_BROWSER=1 makes it fail instead).
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
browser_missing=""
apt_ensure chromium chromium || browser_missing="chromium (Debian package chromium)"
apt_ensure chromedriver chromium-driver \
  || browser_missing="${browser_missing:+$browser_missing and }chromedriver (Debian package chromium-driver)"
if [ -n "$browser_missing" ]; then
  cat >&2 <<EOF

################################################################################
##
##  WARNING: the dashboard's browser test will be SKIPPED: could not install
##  $browser_missing.
##  Every other test still runs. Install them (apt-get install chromium
##  chromium-driver) to test what a person sees in the dashboard.
##
################################################################################

EOF
  export IMAGEJOBS_BROWSER=skip
fi

# The HTTP API's fuzzer (schemathesis, from PyPI) for tests/pipeline/openapi.rs, and the
# AsyncAPI parser (npm) for tests/pipeline/asyncapi.rs.
# shellcheck source=scripts/tools.sh
. scripts/tools.sh
pytools_venv fuzz tests/fuzz/requirements.txt
npm_tools asyncapi docs/check

# One build for everything: the binaries the end-to-end tests start as child processes
# (to SIGKILL them), the tests, the benchmark tool's smoke run and the chaos run. Binaries
# and tests are built in one invocation so that the dev-dependencies' features unify once:
# a later `cargo build --bins` alone would rebuild half the tree without them.
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast

# The benchmark tool, in its tiny smoke form: it checks that the tool works, not how fast.
./scripts/bench.sh --smoke > target/bench-smoke.log 2>&1 || { tail -n 40 target/bench-smoke.log; exit 1; }
echo "benchmark smoke run: ok (target/bench-smoke.log)"

# The short chaos run (about a minute): faults under load, then every accepted job
# reconciled. Last, since it restarts the broker and raises alarms on it.
./scripts/chaos.sh --short > target/chaos-short.log 2>&1 || { tail -n 60 target/chaos-short.log; exit 1; }
sed -n '/^Run of/,$p' target/chaos-short.log
echo "chaos short run: ok (target/chaos-short.log)"
