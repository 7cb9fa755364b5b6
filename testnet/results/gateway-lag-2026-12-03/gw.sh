#!/bin/bash
# gw.sh GLOB : gateway done vs pull vs last, per run at N=10 and N=5
for d in "$@"; do for n in 5 10; do f=$d/n$n/nodes-edgeswarm-$n.csv; [ -f $f ] || continue; g=$(awk -F, 'NR==2{print $2}' $f); last=$(awk -F, 'NR>1{if($2>m)m=$2}END{print m}' $f); pull=$(grep "^| edgeswarm | $n " $d/summary.md | cut -d'|' -f5); t1=$(grep "^| edgeswarm | 1 " $d/summary.md | cut -d'|' -f4); echo "$(basename $d) N=$n T1=$t1 pull=$pull gw_done=$g last=$last"; done; done
