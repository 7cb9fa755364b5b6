#!/bin/bash
# Paths as on the machine these ran on: the testnet binary in /work/reltgt, binaries and outputs in /work.
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
run() { out=/work/out/s17$1; rm -rf $out; flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes $2 --layout $3 --queue-ms 100 --burst 256kb --import none --methods edgeswarm --edgeswarm $4 --out $out > $out.log 2>&1; echo "$1 rc=$?"; grep -E "T\([0-9]+\)/T\(1\), " $out/summary.md | cut -c1-120; }
run base-new 1,2,5,10 base /work/es-new
run base-main 1,2,5,10 base /work/es-main
run single2-new 1,2 single /work/es-new
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
