#!/bin/bash
# cpusamp.sh OUTFILE: /proc/stat cpu line every 0.2 s with a timestamp, until killed
while true; do echo "$(date +%s.%N) $(head -1 /proc/stat)"; sleep 0.2; done > $1
