#!/usr/bin/env bash
# Installs what edgeswarm's build, tests and demo need on a Debian machine.
# Idempotent: packages already present are skipped, dockerd is started only
# if it is not answering. Needs root (or passwordless sudo).
set -euo pipefail

PACKAGES=(
  docker.io          # real Docker engine for the docker import sink and its tests
  containerd         # containerd 1.6 + ctr, pulling through the mirror (also docker.io's)
  docker-registry    # real OCI registry (CNCF distribution 2.8) for gateway tests
  skopeo umoci       # OCI layout validation in tests
  busybox-static     # a real static rootfs to build test images from
  docker-compose     # v1, for the docker-compose testnet (scripts/compose-offline.sh)
  apache2-utils      # htpasswd, for the basic-auth registry test
  iproute2 iperf3    # network namespaces and shaped links (testnet)
  ca-certificates curl
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-deps: need root or sudo to install: ${PACKAGES[*]}" >&2; exit 1
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install Rust (rustup or Debian's cargo) first" >&2
  exit 1
fi

# Kubernetes schema validator for deploy/ (scripts/validate-deploy.sh); it
# ships the schemas, so validation runs offline.
if ! command -v kubernetes-validate >/dev/null; then
  if ! command -v python3 >/dev/null; then
    echo "install-deps: installing python3 and pip"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
  fi
  echo "install-deps: installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
fi

"$(dirname "$0")/start-dockerd.sh"
