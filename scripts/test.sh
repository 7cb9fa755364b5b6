#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of
# the workspace (unit, property, golden and integration tests against a real
# registry, a real dockerd and real libp2p connections on loopback), then
# validates the deployment files in deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked "$@"
# Kubernetes manifests, Helm chart and their node.toml (uses the
# target/debug/edgeswarm the tests just built).
scripts/validate-deploy.sh target/debug/edgeswarm
