#!/bin/bash
# usage: run.sh ROUNDS ; alternates old/new, trial seed 4, dir, 60 MB
cd /work/main
for r in $(seq 1 $1); do
  for b in ${BINS:-old new}; do
    out=/tmp/ab/$b-$r; rm -rf $out; mkdir -p $out
    timeout 600 target/debug/edgeswarm-testnet faults --trials 1 --seed ${SEED:-4} --nodes 5 --registry-cut-secs 5 --trial-timeout 120 --image-mb 60 --import ${IMPORT:-dir} --keep-all --name ab$r --out $out --edgeswarm /tmp/es-$b > $out/stdout 2>&1
    line=$(grep "^trial 000" $out/stdout | cut -c1-75)
    fills=$(grep -l "missed chunk digests" $out/trial-000/n*.log 2>/dev/null | xargs -n1 basename 2>/dev/null | tr '\n' ' ')
    echo "$b r$r | $line | fills: $fills"
  done
done
