#!/bin/bash
# qsample.sh OUT: samples the gateway's downlink queue (tbf on n0 in the
# locality's bridge namespace) every ~20 ms while a testnet runs.
out=$1; : > $out
while :; do
  ns=$(ip netns list | awk '{print $1}' | grep -E '^es-.*-lan0$' | head -1)
  if [ -n "$ns" ]; then
    b=$(tc -n $ns -s qdisc show dev n0 2>/dev/null | grep -o 'backlog [0-9]*b' | head -1)
    [ -n "$b" ] && echo "$(date +%s.%N) $b" >> $out
  fi
  sleep 0.02
done
