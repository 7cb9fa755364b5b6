#!/bin/bash
# extract.sh LAYER.tar COUNT [WARM_MB]: COUNT `tar -xf` of LAYER.tar in a row into one
# fresh loop-mounted ext4 (direct I/O, as the testnet's scratch filesystem), printing the
# system time of each. With WARM_MB, first touches and frees that much of tmpfs.
# Run as root; watch /sys/module/page_reporting/parameters/page_reporting_order.
set -eu
tar=$1; count=$2; warm=${3:-0}
d=$(mktemp -d); mkdir $d/m; truncate -s 8G $d/img; mkfs.ext4 -q -F $d/img
dev=$(losetup --direct-io=on --find --show $d/img); mount $dev $d/m; losetup -d $dev
if [ "$warm" -gt 0 ]; then
  /usr/bin/time -f "warm ${warm} MB: %e s, system %S s" dd if=/dev/zero of=/dev/shm/warm bs=1M count=$warm status=none
  rm /dev/shm/warm; sleep 5
fi
for i in $(seq 1 $count); do
  mkdir $d/m/$i
  /usr/bin/time -f "$i: system %S s" tar -xf $tar -C $d/m/$i
done 2>&1 | tr '\n' ' '; echo
umount $d/m; rm -rf $d
