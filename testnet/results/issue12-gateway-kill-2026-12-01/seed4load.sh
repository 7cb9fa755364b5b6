#!/bin/bash
# usage: seed4load.sh BIN OUT  — seed-4 docker trial with a tc/ss poller as extra load
BIN=$1; OUT=$2
cd /work/main
(flock /work/testnet.lock target/debug/edgeswarm-testnet faults --trials 1 --seed 4 --nodes 5 --registry-cut-secs 5 --trial-timeout 120 --image-mb 30 --name fk9 --import docker --keep-all --out $OUT --edgeswarm $BIN > $OUT.out 2>&1 &)
sleep 1
for i in $(seq 1 200); do for ns in es-fk9-r0 es-fk9-cloud es-fk9-n0-0; do ip netns exec $ns tc -s qdisc 2>/dev/null | tr '\n' ' ' | sed "s/^/$(date +%T.%N | cut -c1-12) $ns /"; echo; done; sleep 0.25; done > $OUT.tc 2>&1
while pgrep -f "name fk9" >/dev/null; do sleep 1; done
grep "trial 0" $OUT.out
