#!/bin/bash
# slowbytes.sh BIN: at 10 Mbit/s node links and a 20 Mbit/s cloud link,
# edgeswarm at N = 10 and naive pulls at N = 2 (each node's one TCP
# download), for what the link counters add to the bytes above TCP.
# Paths as on the machine these ran on.
bin=$1
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
run() { out=/work/out/s18slow-$1; rm -rf $out; flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes $2 --no-lone-run --layout single --node-rate 10mbit --cloud-rate 20mbit --queue-ms 100 --burst 256kb --import none --methods $3 --edgeswarm $bin --out $out > $out.log 2>&1; echo "$1 rc=$?"; grep -E "^\| (edgeswarm|naive) \| [0-9]|above TCP|over all node links" $out/summary.md | cut -c1-200; }
run es10 10 edgeswarm
run naive2 2 naive
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
