#!/bin/bash
# full.sh: full-rate sets (100/200), nodes 1,5,10, interleaved head vs begun
for r in 1 2; do
  for layout in single base; do
    [ $r = 2 ] && [ $layout = base ] && continue
    for lb in head=/work/bin/edgeswarm-head begun=/work/bin/edgeswarm-begun; do
      label=${lb%%=*}; bin=${lb#*=}
      out=/work/out/$label-$layout-full-r$r
      rm -rf $out
      echo "$(date +%T) run $out"
      /work/bin/edgeswarm-testnet experiment --nodes 1,5,10 --layout $layout --queue-ms 100 --burst 256kb \
        --import none --methods edgeswarm --edgeswarm $bin --out $out > $out.log 2>&1
      echo "$(date +%T) rc=$?"
    done
  done
done
