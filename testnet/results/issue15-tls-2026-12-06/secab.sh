#!/bin/bash
# secab.sh ROUNDS BIN MODE... : issue 15's CPU row (N=5 single none, edgeswarm and naive in one run),
# one binary, EDGESWARM_SECURITY=MODE per run, interleaved
set -u
R=$1; BIN=$2; shift 2
for r in $(seq 1 $R); do
  for mode in "$@"; do
    out=/work/out/sec-$mode-r$r
    rm -rf $out; echo "$(date +%T) run $out"
    EDGESWARM_SECURITY=$mode /work/bin/edgeswarm-testnet experiment --nodes 5 --layout single --queue-ms 100 --burst 256kb \
      --import none --methods edgeswarm,naive --edgeswarm $BIN --no-lone-run --out $out > $out.log 2>&1
    echo "$(date +%T) rc=$? $mode | $(grep -h 'CPU per node' $out/summary.md | head -1) | $(grep -h 'all node links' $out/summary.md | head -1)"
  done
done
