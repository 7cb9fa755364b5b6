#!/usr/bin/env bash
# Checks the deployment files: the Kubernetes manifests and the Helm chart
# (rendered with default values and with every option on) against the
# Kubernetes 1.30 schemas (PyPI kubernetes-validate, offline), and the
# node.toml each carries against the `edgeswarm` binary's own parser.
#
# Helm renders the chart when it is installed; otherwise
# deploy/helm/render.py does (Helm has no Debian package and binary
# downloads are not possible here): it implements the template subset the
# chart uses and fails on anything else.
#
# Usage: scripts/validate-deploy.sh [EDGESWARM_BINARY]
#   [default binary: target/debug/edgeswarm, skipped if absent]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/debug/edgeswarm}"
K8S_VERSION=1.30.0
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

render() { # values-file-or-empty output
  if command -v helm >/dev/null; then
    helm lint deploy/helm/edgeswarm ${1:+-f "$1"} >/dev/null
    helm template edgeswarm deploy/helm/edgeswarm --namespace edgeswarm ${1:+-f "$1"} >"$2"
  else
    python3 deploy/helm/render.py deploy/helm/edgeswarm ${1:+-f "$1"} >"$2"
  fi
}

render "" "$out/chart-default.yaml"
render deploy/helm/ci-values.yaml "$out/chart-full.yaml"
kubernetes-validate -k "$K8S_VERSION" --strict --quiet \
  deploy/kubernetes/*.yaml "$out/chart-default.yaml" "$out/chart-full.yaml"

# Each ConfigMap's node.toml must be options this node accepts.
python3 - "$out" deploy/kubernetes/configmap.yaml "$out/chart-default.yaml" "$out/chart-full.yaml" <<'PY'
import sys, yaml
out, files = sys.argv[1], sys.argv[2:]
n = 0
for path in files:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "ConfigMap" and "node.toml" in doc.get("data", {}):
            n += 1
            with open(f"{out}/node-{n}.toml", "w") as f:
                f.write(doc["data"]["node.toml"])
if n != len(files):
    sys.exit(f"expected a node.toml in each of {files}, found {n}")
PY
if [ -x "$BIN" ]; then
  for toml in "$out"/node-*.toml; do
    if ! "$BIN" node --config "$toml" --print-config >/dev/null; then
      echo "validate-deploy: $toml (from a manifest or the chart) is rejected by $BIN:" >&2
      cat "$toml" >&2
      exit 1
    fi
  done
else
  echo "validate-deploy: $BIN not built; node.toml files not checked against it"
fi
# The systemd unit: systemd-analyze only warns (exit 0) on unknown keys,
# so any output fails. ExecStart must exist: point it at the built binary.
if command -v systemd-analyze >/dev/null && [ -x "$BIN" ]; then
  sed "s#/usr/local/bin/edgeswarm#$(realpath "$BIN")#" deploy/systemd/edgeswarm.service \
    >"$out/edgeswarm.service"
  report="$(systemd-analyze verify "$out/edgeswarm.service" 2>&1 || true)"
  if [ -n "$report" ]; then
    echo "validate-deploy: deploy/systemd/edgeswarm.service: $report" >&2
    exit 1
  fi
else
  echo "validate-deploy: systemd-analyze or $BIN missing; systemd unit not checked"
fi
echo "validate-deploy: manifests and chart valid for Kubernetes $K8S_VERSION"
