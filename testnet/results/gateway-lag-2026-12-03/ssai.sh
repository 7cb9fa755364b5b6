#!/bin/sh
# sets tcp_slow_start_after_idle=0 in every es-exp-* namespace as it appears, until killed
while true; do
  for ns in $(ip netns list | awk '{print $1}' | grep '^es-exp'); do
    ip netns exec "$ns" sh -c 'v=$(cat /proc/sys/net/ipv4/tcp_slow_start_after_idle); [ "$v" = 0 ] || echo 0 > /proc/sys/net/ipv4/tcp_slow_start_after_idle' 2>/dev/null
  done
  sleep 0.05
done
