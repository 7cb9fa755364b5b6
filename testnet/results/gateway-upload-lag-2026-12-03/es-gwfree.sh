#!/bin/bash
# EDGESWARM_BIN=path/to/edgeswarm; used as the experiment's --edgeswarm
# the gateway (node given --gateway) unpaced; every other node as given
set -eu
: "${EDGESWARM_BIN:?set EDGESWARM_BIN to the edgeswarm binary}"
args=("$@"); gw=0
for a in "${args[@]}"; do [ "$a" = --gateway ] && gw=1; done
if [ $gw = 1 ]; then out=(); skip=0
  for a in "${args[@]}"; do if [ $skip = 1 ]; then skip=0; continue; fi; [ "$a" = --max-upload-rate ] && { skip=1; continue; }; out+=("$a"); done
  exec "$EDGESWARM_BIN" "${out[@]}"
fi
exec "$EDGESWARM_BIN" "$@"
