#!/usr/bin/env bash
# Cross-builds the binaries for 64-bit ARM devices (Raspberry Pi 3/4/5 and
# the like) where the toolchain exists; where it does not (no ARM Rust
# target can be installed on the development machines), says what is
# missing and succeeds, so CI runs it everywhere.
#   scripts/cross-build.sh [TARGET]   (default aarch64-unknown-linux-gnu)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-aarch64-unknown-linux-gnu}
GCC=aarch64-linux-gnu-gcc
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "cross-build: SKIPPED: Rust target $TARGET not installed (rustup target add $TARGET)"
  exit 0
fi
if ! command -v "$GCC" >/dev/null; then
  echo "cross-build: SKIPPED: no $GCC (apt-get install gcc-aarch64-linux-gnu)"
  exit 0
fi
# The linker, and the C compiler of the crates that build C (zstd-sys, ring,
# aws-lc-sys).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$GCC
export CC_aarch64_unknown_linux_gnu=$GCC
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
cargo build --release --locked --target "$TARGET" -p edgeswarm-node --bin edgeswarm
cargo build --profile release-small --locked --target "$TARGET" -p edgeswarm-bootstrap
ls -l "target/$TARGET/release/edgeswarm" "target/$TARGET/release-small/edgeswarm-bootstrap"
