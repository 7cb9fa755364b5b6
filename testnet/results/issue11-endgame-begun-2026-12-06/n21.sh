#!/bin/bash
for r in 1 2; do
  for lb in head=/work/bin/edgeswarm-head begun=/work/bin/edgeswarm-begun; do
    label=${lb%%=*}; bin=${lb#*=}
    out=/work/out/$label-single-none-21-r$r-n21
    rm -rf $out; echo "$(date +%T) run $out"
    /work/bin/edgeswarm-testnet experiment --nodes 21 --layout single --queue-ms 100 --burst 256kb \
      --import none --methods edgeswarm --edgeswarm $bin --no-lone-run --out $out > $out.log 2>&1
    echo "$(date +%T) rc=$?"
  done
done
for imp in none dir; do
  out=/work/out/begun-single-$imp-21-naive-n21
  rm -rf $out; echo "$(date +%T) run $out"
  /work/bin/edgeswarm-testnet experiment --nodes 21 --layout single --queue-ms 100 --burst 256kb \
    --import $imp --methods edgeswarm,naive --edgeswarm /work/bin/edgeswarm-begun --no-lone-run --out $out > $out.log 2>&1
  echo "$(date +%T) rc=$?"
done
