#!/bin/bash
# runs.sh BIN: the testnet points the simulator's `current` preset is
# checked against (issue 11's calibration: N = 1, 5, 21, both layouts),
# plus N = 2 and 10, and the gateway's downlink queue sampled during
# N = 1 and 2 (qsample.sh). Paths as on the machine these ran on: the
# testnet binary in /work/reltgt, outputs in /work/out.
bin=$1; here=$(dirname "$0")
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
run() { out=/work/out/s18$1; rm -rf $out; flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes $2 --layout $3 --queue-ms 100 --burst 256kb --import none --methods edgeswarm $4 --edgeswarm $bin --out $out > $out.log 2>&1; echo "$1 rc=$?"; grep -E "^\| edgeswarm \| [0-9]" $out/summary.md | cut -d'|' -f2-5; }
"$here/qsample.sh" /work/out/s18q-single12.txt & q=$!
run q-single12 1,2 single
kill $q
run base-a 1,5,21 base
run base-b 1,5,21 base
run single-a 1,5,21 single
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
