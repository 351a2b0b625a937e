#!/usr/bin/env bash
# Offline checks of the deployment and operations files (`make ops-test`, part of `make test`):
# Prometheus rules and their unit tests, metric names against infra/ops/metrics.txt, the
# Grafana dashboard, the compose file, the Kubernetes manifests (schemas of two Kubernetes
# versions, plus policy), the KEDA ScaledObjects against KEDA's vendored CRD schema, and the
# Dockerfile. Needs promtool, docker-compose and the venv of `make deps-ops`; no network, no
# container engine, no cluster.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/../.."

VENV=${VENV:-.run/venv}
PY=$VENV/bin/python
KUBE_VALIDATE=$VENV/bin/kubernetes-validate
# The oldest Kubernetes the manifests target (unhealthyPodEvictionPolicy is GA from 1.31) and
# the newest kubernetes-validate knows.
K8S_VERSIONS=${K8S_VERSIONS:-1.31.0 1.37.0}
START=$SECONDS
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

step() { printf '\n== %s\n' "$*"; }
die() { echo "!! $*" >&2; exit 1; }

step "tools"
command -v promtool >/dev/null || die "promtool is missing: make deps-ops (Debian package prometheus)"
command -v docker-compose >/dev/null || die "docker-compose is missing: make deps-ops (Debian package docker-compose)"
[ -x "$PY" ] && [ -x "$KUBE_VALIDATE" ] || die "$VENV is missing or incomplete: make deps-ops"
echo "  $(promtool --version 2>&1 | head -1)"
echo "  docker-compose $(docker-compose version --short)"
echo "  $("$KUBE_VALIDATE" --version 2>&1 | tail -1 | sed 's/^/kubernetes-validate /'), $("$PY" -c 'import jsonschema, yaml; print("jsonschema", jsonschema.__version__ if hasattr(jsonschema, "__version__") else "?", "PyYAML", yaml.__version__)' 2>/dev/null)"

step "Prometheus: alert rules, example scrape config, alert unit tests"
promtool check rules infra/prometheus/alerts.yml
promtool check config infra/prometheus/prometheus.yml
promtool test rules infra/prometheus/alerts_test.yml

step "metric names (alerts, alert tests, dashboard, KEDA queries) against infra/ops/metrics.txt; dashboard"
"$PY" infra/ops/check_metrics.py "$TMP"
echo "  PromQL of the dashboard and the KEDA triggers:"
promtool check rules "$TMP/promql-syntax.rules.yml"
echo "  KEDA trigger queries on synthetic series (infra/keda/queries_test.yml):"
cp infra/keda/queries_test.yml "$TMP/"
promtool test rules "$TMP/queries_test.yml"

step "compose: docker-compose config, then semantics"
docker-compose -f infra/compose.yaml config -q
docker-compose -f infra/compose.yaml --profile monitoring config -q
echo "  docker-compose accepts infra/compose.yaml (with and without --profile monitoring)"
"$PY" infra/ops/check_deploy.py compose

step "Kubernetes: kubernetes-validate --strict, then policy"
manifests=()
for f in infra/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
for v in $K8S_VERSIONS; do
  if ! out=$("$KUBE_VALIDATE" --strict -k "$v" "${manifests[@]}" 2>&1); then
    echo "$out"; die "kubernetes-validate -k $v failed"
  fi
  # An unknown kind (a CRD) is only a warning for kubernetes-validate: refuse it here; the
  # custom resources live in infra/keda/ and are validated below.
  if grep -q -v '^INFO .* passed for resource' <<<"$out"; then
    echo "$out"; die "kubernetes-validate -k $v: not every resource passed"
  fi
  echo "  kubernetes-validate --strict -k $v: $(grep -c passed <<<"$out") resources passed (${manifests[*]})"
done
"$PY" infra/ops/check_deploy.py k8s

step "KEDA: ScaledObjects against the vendored CRD's openAPIV3Schema; kustomizations"
"$PY" infra/ops/validate_keda.py

step "Dockerfile"
"$PY" infra/ops/check_deploy.py dockerfile

printf '\n== ops checks passed in %ds\n' "$((SECONDS - START))"
