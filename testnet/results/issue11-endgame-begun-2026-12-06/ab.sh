#!/bin/bash
# ab.sh ROUNDS N LAYOUT IMPORT label=BIN ... ; env EXTRA (extra experiment args), SUFFIX, METHODS
set -u
R=$1; N=$2; LAYOUT=$3; IMPORT=$4; shift 4
METHODS=${METHODS:-edgeswarm}
for r in $(seq 1 $R); do
  for lb in "$@"; do
    label=${lb%%=*}; bin=${lb#*=}
    out=/work/out/$label-$LAYOUT-$IMPORT-$N-r$r-${SUFFIX:-x}
    rm -rf $out
    echo "$(date +%T) run $out"
    /work/bin/edgeswarm-testnet experiment --nodes $N --layout $LAYOUT --queue-ms 100 --burst 256kb \
      --import $IMPORT --methods $METHODS --edgeswarm $bin --no-lone-run --out $out ${EXTRA:-} > $out.log 2>&1
    echo "$(date +%T) rc=$? $(grep -h 'all node links' $out/summary.md 2>/dev/null | head -2 | tr '\n' ' ')"
  done
done
