#!/usr/bin/env bash
# Starts dockerd in the background unless a Docker engine already answers.
set -euo pipefail
SOCK=/var/run/docker.sock
if docker version >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null; then
  echo "start-dockerd: dockerd not installed (apt-get install docker.io)" >&2; exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "start-dockerd: starting dockerd (log: /var/log/edgeswarm-dockerd.log)"
$SUDO sh -c 'nohup dockerd >/var/log/edgeswarm-dockerd.log 2>&1 &'
for _ in $(seq 1 60); do
  if [ -S "$SOCK" ] && docker version >/dev/null 2>&1; then exit 0; fi
  sleep 1
done
echo "start-dockerd: dockerd did not come up in 60 s; see /var/log/edgeswarm-dockerd.log" >&2
tail -20 /var/log/edgeswarm-dockerd.log >&2 || true
exit 1
