#!/bin/bash
# Paths as on the machine these ran on: the testnet binary in /work/reltgt, binaries and outputs in /work.
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
run() { out=/work/out/s17n21-$1; rm -rf $out; flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes 21 --no-lone-run --layout single --queue-ms 100 --burst 256kb --import none $3 --edgeswarm $2 --out $out > $out.log 2>&1; echo "$1 rc=$?"; grep -E "^\| (edgeswarm|naive) \| 21|^\| 21 " $out/summary.md | cut -c1-200; }
run new-naive /work/es-new ""
run main /work/es-main "--methods edgeswarm"
run new /work/es-new "--methods edgeswarm"
run main2 /work/es-main "--methods edgeswarm"
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
