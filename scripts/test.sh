#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of
# the workspace (unit, property, golden and integration tests against a real
# registry, a real dockerd and real libp2p connections on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked "$@"
