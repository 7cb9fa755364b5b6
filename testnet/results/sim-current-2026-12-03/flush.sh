#!/bin/bash
# flush.sh: the store's flush interval, 50 ms (today) against 1 s, N = 1
# and 10, single layout, interleaved; then N = 21 on the root filesystem
# (--shared-data-fs: no loop device) for the simulator's N = 21 points.
# es-f50.sh / es-f1000.sh wrap one build that reads EDGESWARM_FLUSH_MS.
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../gateway-lag-2026-12-03/ab.sh" s18fl 1,10 2 f50=/work/es-f50.sh f1000=/work/es-f1000.sh
LAYOUT=base EXTRA_ALL=--shared-data-fs "$here/n21ab.sh" base-shared1=/work/es-s18 base-shared2=/work/es-s18
"$here/n21ab.sh" single-shared3=/work/es-s18
