#!/bin/bash
# usage: run.sh ROUNDS label=BIN ... ; interleaves the binaries each round
rounds=$1; shift
for r in $(seq 1 $rounds); do
  for lb in "$@"; do
    label=${lb%%=*}; bin=${lb#*=}
    out=/work/out/ab1/$label-r$r-${IMPORT:-none}
    rm -rf $out
    flock /work/testnet.lock /work/bin/edgeswarm-testnet experiment --nodes 5 --layout single --queue-ms 100 --burst 256kb --import ${IMPORT:-none} --methods edgeswarm,naive --edgeswarm $bin --out $out > $out.log 2>&1
    echo "== $label r$r"
    grep -E "^\| (edgeswarm|naive) \| 5 \|" $out/summary.md | awk -F'|' '{print $2,$3,$4,$11,$12}'
    grep -E "N=5: CPU per node" $out/summary.md | cut -c1-220
  done
done
