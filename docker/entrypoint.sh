#!/bin/sh
# edgeswarm container entrypoint: optionally shapes this container's links
# with `tc tbf`, then execs the command (default: `edgeswarm node`).
#
# Environment:
#   EDGESWARM_SHAPE_RATE     tc rate, e.g. 100mbit; unset or empty: no shaping.
#   EDGESWARM_SHAPE_DEVS     interfaces to shape [default: every one but lo].
#   EDGESWARM_SHAPE_EXCEPT_TO  host name; the interface routing to it is left
#                            unshaped (the gateway's cloud-side interface,
#                            whose link is shaped at the registry instead).
#   EDGESWARM_SHAPE_INGRESS  1 (default): also shape downloads through an ifb
#                            device; 0: uploads (egress) only.
#   EDGESWARM_SHAPE_BURST    tbf burst [default: 10 ms of traffic, >= 32kb].
#
# Shaping needs `cap_add: [NET_ADMIN]`. POSIX sh: runs on dash and busybox.
set -eu

log() { echo "edgeswarm-entrypoint: $*" >&2; }

# tc, failing loudly (`set -e` does not reach into functions called from
# conditions, so every call goes through here).
run_tc() {
    if ! tc "$@"; then
        log "tc $* failed: does the container have cap_add: [NET_ADMIN]?"
        exit 1
    fi
}

# Bits per second of a tc rate like 100mbit, 1gbit, 500kbit.
rate_bits() {
    n=$(echo "$1" | sed 's/[^0-9].*//')
    unit=$(echo "$1" | sed 's/^[0-9]*//' | tr 'A-Z' 'a-z')
    case "$unit" in
        bit|"") echo "$n" ;;
        kbit) echo $((n * 1000)) ;;
        mbit) echo $((n * 1000000)) ;;
        gbit) echo $((n * 1000000000)) ;;
        *) log "EDGESWARM_SHAPE_RATE=$1: use a rate like 100mbit, 500kbit or 1gbit"; exit 2 ;;
    esac
}

shape() {
    rate=$EDGESWARM_SHAPE_RATE
    bits=$(rate_bits "$rate")
    burst=${EDGESWARM_SHAPE_BURST:-}
    if [ -z "$burst" ]; then
        burst=$((bits / 8 / 100))
        [ "$burst" -lt 32768 ] && burst=32768
    fi
    devs=${EDGESWARM_SHAPE_DEVS:-}
    if [ -z "$devs" ]; then
        devs=$(ls /sys/class/net | grep -v '^lo$' | grep -v '^ifb' || true)
    fi
    skip=""
    if [ -n "${EDGESWARM_SHAPE_EXCEPT_TO:-}" ]; then
        addr=$(getent hosts "$EDGESWARM_SHAPE_EXCEPT_TO" | awk '{print $1; exit}' || true)
        if [ -n "$addr" ]; then
            skip=$(ip -o route get "$addr" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
        else
            log "cannot resolve $EDGESWARM_SHAPE_EXCEPT_TO; shaping every interface"
        fi
    fi
    i=0
    for dev in $devs; do
        if [ "$dev" = "$skip" ]; then
            log "$dev (route to $EDGESWARM_SHAPE_EXCEPT_TO) left unshaped"
            continue
        fi
        run_tc qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 100ms
        log "$dev upload shaped: tbf rate $rate burst $burst"
        if [ "${EDGESWARM_SHAPE_INGRESS:-1}" = 1 ]; then
            ifb="ifb$i"
            if ip link add "$ifb" type ifb 2>/dev/null || ip link show "$ifb" >/dev/null 2>&1; then
                ip link set "$ifb" up
                tc qdisc del dev "$dev" ingress 2>/dev/null || true
                run_tc qdisc add dev "$dev" handle ffff: ingress
                run_tc filter add dev "$dev" parent ffff: protocol all u32 match u32 0 0 \
                    action mirred egress redirect dev "$ifb"
                run_tc qdisc replace dev "$ifb" root tbf rate "$rate" burst "$burst" latency 100ms
                log "$dev download shaped via $ifb: tbf rate $rate burst $burst"
            else
                log "no ifb device (modprobe ifb on the host); $dev download left unshaped"
            fi
        fi
        i=$((i + 1))
    done
}

if [ -n "${EDGESWARM_SHAPE_RATE:-}" ]; then
    shape
fi

if [ $# -eq 0 ]; then
    set -- edgeswarm node
fi
exec "$@"
