#!/bin/bash
# usage: ab.sh ROUNDS N LAYOUT IMPORT label=BIN ... (edgeswarm only unless METHODS set)
rounds=$1; n=$2; lay=$3; imp=$4; shift 4
for r in $(seq 1 $rounds); do
  for lb in "$@"; do
    label=${lb%%=*}; bin=${lb#*=}
    out=/work/out/cc/$label-$lay-$imp-$n-r$r; rm -rf $out
    flock /work/testnet.lock /work/bin/edgeswarm-testnet experiment --nodes $n --layout $lay --queue-ms 100 --burst 256kb --import $imp --methods ${METHODS:-edgeswarm} --edgeswarm $bin --out $out $EXTRA > $out.log 2>&1
    echo "== $label r$r $(date +%T)"
    grep -E "^\| edgeswarm \| $n \|" $out/summary.md | awk -F'|' '{print $4,$5,$7,$8,$10,$12,$14}'
  done
done
