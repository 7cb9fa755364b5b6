#!/bin/bash
# n21ab.sh label=BIN ...: N=21 single, `--import none`, one run per argument in turn,
# with `vmstat 1` captured beside each run. Paths as on the machine these ran on.
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
for v in "$@"; do label=${v%%=*}; bin=${v#*=}; EXTRA=""; case $label in *shared*) EXTRA=--shared-data-fs;; esac; out=/work/out/s18n21-$label; rm -rf $out
  vmstat -t 1 > $out.vmstat & vm=$!
  flock /work/testnet.lock /work/reltgt/release/edgeswarm-testnet experiment --nodes 21 --no-lone-run --layout ${LAYOUT:-single} --queue-ms 100 --burst 256kb --import ${IMPORT:-none} --methods ${METHODS:-edgeswarm} $EXTRA --edgeswarm $bin --out $out > $out.log 2>&1; echo "$label rc=$?"
  kill $vm
  grep -E "^\| edgeswarm \| 21" $out/summary.md | cut -d'|' -f2-5,12,14; done
echo 1 > /proc/sys/kernel/sched_autogroup_enabled
