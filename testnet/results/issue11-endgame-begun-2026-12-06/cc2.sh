#!/bin/bash
# cc2.sh ROUNDS SUFFIX label=BIN=CC ... (20/10 N=10 single none, testnet --congestion-control)
R=$1; SUF=$2; shift 2
for r in $(seq 1 $R); do
  for lb in "$@"; do
    IFS='=' read label bin cc <<< "$lb"
    out=/work/out/$label-$cc-single-none-10-r$r-$SUF
    rm -rf $out
    echo "$(date +%T) run $out"
    /work/bin/edgeswarm-testnet experiment --nodes 10 --layout single --queue-ms 100 --burst 256kb \
      --import none --methods edgeswarm --edgeswarm $bin --no-lone-run --out $out \
      --cloud-rate 20mbit --node-rate 10mbit --congestion-control $cc > $out.log 2>&1
    echo "$(date +%T) rc=$?"
  done
done
