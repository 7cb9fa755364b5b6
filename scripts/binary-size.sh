#!/usr/bin/env bash
# Stripped sizes of the shipped binaries and the crates that weigh most in
# them (from the symbol table: an equivalent of `cargo bloat --crates`
# without installing it), against the targets of issue 15.
#
# Usage: scripts/binary-size.sh [--build] [PROFILE]
#   PROFILE  the cargo profile of both binaries [default: each in the one it
#            ships in, as the Dockerfile builds them: edgeswarm `release`,
#            edgeswarm-bootstrap `release-small`]
#   --build  builds them first, each binary alone as the Dockerfile does
#            (cargo unifies features over one run: built together, the
#            bootstrap would link the whole node)
# Env: TARGET_DIR [default: target]
set -euo pipefail
cd "$(dirname "$0")/.."
build=0
if [ "${1:-}" = --build ]; then build=1; shift; fi
node_profile="${1:-release}"
bootstrap_profile="${1:-release-small}"
if [ "$build" = 1 ]; then
  cargo build --profile "$node_profile" --locked -p edgeswarm-node --bin edgeswarm
  cargo build --profile "$bootstrap_profile" --locked -p edgeswarm-bootstrap
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for spec in edgeswarm:15000000:$node_profile edgeswarm-bootstrap:6000000:$bootstrap_profile; do
  IFS=: read -r bin target profile <<<"$spec"
  dir="${TARGET_DIR:-target}/$profile"
  [ -x "$dir/$bin" ] || { echo "$dir/$bin: not built (try --build)"; continue; }
  strip -o "$tmp/$bin" "$dir/$bin"
  size=$(stat -c %s "$tmp/$bin")
  verdict=$([ "$size" -le "$target" ] && echo "meets" || echo "OVER")
  printf '%-20s %s: %s MB stripped (%d bytes; target <= %d MB: %s)\n' \
    "$bin" "$profile" "$(awk "BEGIN { printf \"%.2f\", $size / 1e6 }")" "$size" \
    "$((target / 1000000))" "$verdict"
  # Largest crates by symbol size (needs the unstripped symbol table).
  nm --size-sort -S -C "$dir/$bin" 2>/dev/null | python3 -c '
import collections, re, sys
sizes = collections.Counter()
for line in sys.stdin:
    parts = line.split(None, 3)
    if len(parts) < 4:
        continue
    name = parts[3].strip().lstrip("<")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    sizes[m.group(1) if m else "(other)"] += int(parts[1], 16)
top = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sizes.most_common(10))
pad = " " * 22
print(f"{pad}largest (MB of symbols): {top}" if sizes else f"{pad}(no symbol table)")
'
done
