#!/bin/bash
# final.sh BIN: N = 1, 2, 5, 10, single layout, with the session's last
# node build (store syncing every 1 s) and testnet (direct-I/O loop).
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
out=/work/out/s18final; rm -rf $out
flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes 1,2,5,10 --layout single --queue-ms 100 --burst 256kb --import none --methods edgeswarm --edgeswarm $1 --out $out > $out.log 2>&1; echo "rc=$?"
grep -E "^\| edgeswarm \| [0-9]|T\([0-9]+\)/T\(1\), |above TCP|over all node links" $out/summary.md | cut -c1-200
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
