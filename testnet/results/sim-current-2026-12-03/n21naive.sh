#!/bin/bash
# n21naive.sh BIN: issue 11's N = 21 speed-ups over naive pulls in the same
# run, `--import none` then `dir`, single layout. Paths as on the machine
# these ran on.
bin=$1
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
for imp in none dir; do out=/work/out/s18n21naive-$imp; rm -rf $out
  flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes 21 --no-lone-run --layout single --queue-ms 100 --burst 256kb --import $imp --edgeswarm $bin --out $out > $out.log 2>&1; echo "$imp rc=$?"
  grep -E "^\| (edgeswarm|naive) \| 21|speed-up" $out/summary.md | cut -c1-220; done
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
