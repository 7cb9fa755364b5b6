#!/bin/bash
# the standard experiment, both layouts, --import none, N = 1,2,5,10,21, with the hm testnet
for lay in single base; do
  out=/work/out/s37-full-$lay-none; rm -rf $out
  echo "$(date +%T) start $lay"
  /work/bins/tn-hm experiment --nodes 1,2,5,10,21 --layout $lay --queue-ms 100 --burst 256kb --import none --edgeswarm /work/bins/es-rc2 --out $out > $out.log 2>&1
  echo "$(date +%T) rc=$? $lay"
done
