#!/bin/bash
# abcpu.sh SET ROUNDS LABEL=NODEBIN... : edgeswarm-only N=21 dir runs, builds interleaved; machine user/sys CPU-s from /proc/stat over each run
set -u
SET=$1; R=$2; shift 2
TN=/work/bins/tn-main
hz=$(getconf CLK_TCK)
for r in $(seq ${START:-1} $R); do
  for lb in "$@"; do
    label=${lb%%=*}; bin=${lb#*=}
    out=/work/out/$SET-$label-r$r
    rm -rf $out
    a=($(head -1 /proc/stat))
    $TN experiment --nodes 21 --layout single --queue-ms 100 --burst 256kb \
      --import dir --methods edgeswarm --edgeswarm $bin --no-lone-run --out $out > $out.log 2>&1
    rc=$?
    b=($(head -1 /proc/stat))
    us=$(( (${b[1]}-${a[1]}) + (${b[2]}-${a[2]}) )); sy=$(( ${b[3]}-${a[3]} )); irq=$(( (${b[6]}-${a[6]}) + (${b[7]}-${a[7]}) )); idle=$(( ${b[4]}-${a[4]} ))
    es=$(grep -h '^| edgeswarm |' $out/summary.md | tail -1 | awk -F'|' '{print "last",$4,"nodes",$12,"machine",$14}')
    echo "$(date +%T) rc=$rc $label r$r | $es | machine user $(echo "scale=1;$us/$hz"|bc) sys $(echo "scale=1;$sy/$hz"|bc) irq $(echo "scale=1;$irq/$hz"|bc) idle $(echo "scale=1;$idle/$hz"|bc)"
  done
done
