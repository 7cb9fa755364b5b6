#!/bin/bash
# ab.sh PREFIX NODES ROUNDS label=BIN[,ssai0] ...   interleaved runs
prefix=$1; nodes=$2; rounds=$3; shift 3
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
for r in $(seq 1 $rounds); do
  for v in "$@"; do
    label=${v%%=*}; rest=${v#*=}; bin=${rest%%,*}; opt=""; [[ $rest == *,* ]] && opt=${rest#*,}
    out=/work/out/$prefix-$label-$r
    [ "$opt" = shm ] && out=/dev/shm/$prefix-$label-$r
    rm -rf $out
    pid=""
    if [ "$opt" = ssai0 ]; then /work/ssai.sh & pid=$!; fi
    if [ "$opt" = renice ]; then /work/renice.sh & pid=$!; fi
    flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes $nodes --layout single \
      --queue-ms 100 --burst 256kb --import none --methods edgeswarm --edgeswarm $bin --out $out > $out.log 2>&1
    echo "$label r$r rc=$?"
    [ -n "$pid" ] && kill $pid
    if [ "$opt" = shm ]; then rm -rf $out/n*/es-data; rm -rf /work/out/$prefix-$label-$r; mv $out $out.log /work/out/; out=/work/out/$prefix-$label-$r; fi
    grep -E "^\| edgeswarm \||T\((5|10)\)/T\(1\)" $out/summary.md | cut -c1-220
  done
done
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
