#!/bin/bash
# [LAYOUT=single|base] abs2.sh SET ROUNDS IMPORT N LABEL=NODEBIN,TESTNETBIN... : edgeswarm and naive in each run, builds interleaved per round
set -u
SET=$1; R=$2; IMP=$3; N=$4; shift 4
for r in $(seq ${START:-1} $R); do
  for lb in "$@"; do
    label=${lb%%=*}; rest=${lb#*=}; bin=${rest%%,*}; tn=${rest#*,}
    out=/work/out/$SET-$IMP-n$N-$label-r$r
    rm -rf $out; echo "$(date +%T) run $out"
    $tn experiment --nodes $N --layout ${LAYOUT:-single} --queue-ms 100 --burst 256kb \
      --import $IMP --methods edgeswarm,naive --edgeswarm $bin --no-lone-run --out $out > $out.log 2>&1
    rc=$?
    es=$(grep -h '^| edgeswarm |' $out/summary.md | tail -1 | awk -F'|' '{print "last",$4,"allin/out",$10,"cpu gw",$11,"nodes",$12,"reg/watch",$13,"machine",$14}')
    nv=$(grep -h '^| naive |' $out/summary.md | tail -1 | awk -F'|' '{print "last",$4,"nodes",$12}')
    sp=$(grep -h 'speed-up over naive' $out/summary.md | tail -1 | awk -F'|' '{print $4}')
    echo "$(date +%T) rc=$rc $label r$r | ES $es | NAIVE $nv | speedup $sp | $(grep -h 'CPU per node' $out/summary.md | tail -1 | awk -F'|' '{print $4}')"
  done
done
