#!/usr/bin/env bash
# The main job: an emulated locality of 5 edge nodes (network namespaces,
# 100 Mbit/s node links, a 200 Mbit/s cloud link) deploys a real ~50 MB
# container image from a real registry, with live progress, and ends with a
# table of each node's time and bytes from the cloud and from peers.
#
# Installs what it needs (Debian packages), builds the release binaries and
# runs `edgeswarm-testnet demo` as root (sudo if needed). Extra arguments go
# to the demo, e.g. `scripts/demo.sh --nodes 10 --image-mb 200`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p edgeswarm-node -p edgeswarm-testnet
BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/release"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
exec $SUDO "$BIN/edgeswarm-testnet" demo --edgeswarm "$BIN/edgeswarm" "$@"
