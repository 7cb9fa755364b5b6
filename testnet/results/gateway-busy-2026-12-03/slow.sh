#!/bin/bash
# slow.sh label=BIN ...: N=10 at 10 Mbit/s node links and a 20 Mbit/s cloud link, one run per argument in turn.
# Paths as on the machine these ran on: the testnet binary in /work/reltgt, outputs in /work/out.
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
for v in "$@"; do label=${v%%=*}; bin=${v#*=}; out=/work/out/s17slow-$label; rm -rf $out
flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes 10 --no-lone-run --layout single --node-rate 10mbit --cloud-rate 20mbit --queue-ms 100 --burst 256kb --import none --methods edgeswarm --edgeswarm $bin --out $out > $out.log 2>&1; echo "$label rc=$?"
grep -E "^\| edgeswarm \| 10" $out/summary.md | cut -c1-120; done
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
