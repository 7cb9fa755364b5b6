#!/bin/bash
# cpu.sh ROUNDS: issue 15's CPU row, N=5 none, edgeswarm (begun build) and naive in one run
for r in $(seq 1 $1); do
  out=/work/out/cpu-single-none-5-r$r
  rm -rf $out; echo "$(date +%T) run $out"
  /work/bin/edgeswarm-testnet experiment --nodes 5 --layout single --queue-ms 100 --burst 256kb \
    --import none --methods edgeswarm,naive --edgeswarm /work/bin/edgeswarm-begun --no-lone-run --out $out > $out.log 2>&1
  echo "$(date +%T) rc=$? $(grep -h 'CPU per node' $out/summary.md | awk -F'|' '{print $4, $6}')"
done
