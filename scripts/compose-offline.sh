#!/usr/bin/env bash
# Runs the docker-compose testnet (docker-compose.yml) on a machine without
# Docker Hub: every image is made locally from this host's files.
#
#   scripts/compose-offline.sh images          # (a) cargo build --release, (b) base image,
#                                              # (c) registry image, then docker-compose build
#   scripts/compose-offline.sh up [N]          # images + docker-compose up -d --scale node=N (default 3)
#   scripts/compose-offline.sh seed [REPO:TAG] [SIZE]   # push a test image (default demo/app:v1 48M)
#   scripts/compose-offline.sh demo [N] [SIZE] # up + seed + deploy + status --wait, timed
#   scripts/compose-offline.sh test [N] [SIZE] # demo, then checks every node and the
#                                              # cloud link, then down -v (exit 1 on failure)
#   scripts/compose-offline.sh compose ARGS... # docker-compose ARGS with the offline images
#   scripts/compose-offline.sh down            # docker-compose down -v
#
# Images made (docker import of a rootfs tarball, no Docker Hub):
#   edgeswarm-base:local      dash as /bin/sh, busybox-static applets, tc/ip (iproute2),
#                             getent, the edgeswarm binaries in /out, their
#                             libraries (as ldd lists them), /etc/ssl/certs.
#                             The runtime stage of the Dockerfile (apt skipped).
#   edgeswarm-builder-base:local  the same plus the binaries in /out: the
#                             builder stage (the cargo step is skipped).
#   edgeswarm-registry:local  Debian's /usr/bin/docker-registry (package
#                             docker-registry) with a config serving :5000.
#   edgeswarm:local           the Dockerfile built FROM edgeswarm-base:local.
#
# Needs: cargo, docker (a running dockerd), docker-compose v1, busybox-static,
# iproute2, docker-registry (scripts/install-deps.sh installs them).
# Environment: CARGO_TARGET_DIR (where cargo builds), NODE_RATE, CLOUD_RATE,
# REGISTRY_PORT (host port of the registry, default 5000).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO_ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
BIN_DIR=$TARGET_DIR/release

export EDGESWARM_IMAGE=edgeswarm:local
export EDGESWARM_BUILDER_IMAGE=edgeswarm-builder-base:local
export EDGESWARM_RUNTIME_IMAGE=edgeswarm-base:local
export EDGESWARM_INSTALL_PACKAGES=0
export EDGESWARM_REGISTRY_IMAGE=edgeswarm-registry:local
# The classic builder: BuildKit would try to fetch its frontend from Docker Hub.
export DOCKER_BUILDKIT=0
export COMPOSE_DOCKER_CLI_BUILD=0
REGISTRY_PORT=${REGISTRY_PORT:-5000}
export REGISTRY_PORT

log() { echo "compose-offline: $*" >&2; }
die() { log "$*"; exit 1; }

need() {
    local missing=()
    for tool in cargo docker docker-compose busybox tc ip getent ldd /usr/bin/docker-registry; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        die "missing: ${missing[*]} (run scripts/install-deps.sh; cargo from rustup or Debian)"
    fi
    docker version >/dev/null 2>&1 || die "no Docker engine answers (scripts/start-dockerd.sh)"
}

# Copies FILE and every library `ldd FILE` lists into ROOTFS at the same paths.
copy_with_libs() {
    local rootfs=$1 file=$2 dest=${3:-$2}
    mkdir -p "$rootfs$(dirname "$dest")"
    cp -L "$file" "$rootfs$dest"
    ldd "$file" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
        [ -e "$rootfs$lib" ] && continue
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
}

# Merged-/usr layout (as Debian 12: /bin, /sbin, /lib, /lib64 link into
# /usr) and a minimal /etc for a root-only container.
base_etc() {
    local rootfs=$1 dir
    for dir in bin sbin lib lib64; do
        mkdir -p "$rootfs/usr/$dir"
        ln -s "usr/$dir" "$rootfs/$dir"
    done
    mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/lib" "$rootfs/root"
    chmod 1777 "$rootfs/tmp"
    echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
    echo 'root:x:0:' >"$rootfs/etc/group"
    printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
}

build_binaries() {
    log "(a) cargo build --release (target dir $TARGET_DIR)"
    # Three runs, as in the Dockerfile: one run would unify the node's
    # features, giving the bootstrap the whole node and edgeswarm the
    # test support the pusher needs.
    cargo build --release --locked -p edgeswarm-node --bin edgeswarm
    # The bootstrap ships size-optimised (docs/OPERATOR.md, "Binary size").
    cargo build --profile release-small --locked -p edgeswarm-bootstrap
    cargo build --release --locked -p edgeswarm-node --features test-support \
        --example push_test_image
}

build_base_image() {
    log "(b) base image edgeswarm-base:local from host files"
    local rootfs
    rootfs=$(mktemp -d)
    base_etc "$rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/usr/bin" "$rootfs/usr/sbin" "$rootfs/out" \
        "$rootfs/var/lib/edgeswarm"
    cp -L "$(command -v busybox)" "$rootfs/bin/busybox"
    # /bin/sh is dash: Debian's busybox ash prefers its own applets to PATH,
    # so it would run busybox's tc instead of iproute2's.
    copy_with_libs "$rootfs" "$(readlink -f /bin/sh)" /bin/sh
    # Applet links, except where a real tool (sh, tc, ip, getent) is installed.
    for applet in $(busybox --list); do
        case "$applet" in busybox | sh | tc | ip | getent) continue ;; esac
        [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
    done
    copy_with_libs "$rootfs" "$(command -v tc)" /usr/sbin/tc
    copy_with_libs "$rootfs" "$(command -v ip)" /usr/sbin/ip
    copy_with_libs "$rootfs" "$(command -v getent)" /usr/bin/getent
    [ -d /etc/iproute2 ] && cp -a /etc/iproute2 "$rootfs/etc/"
    [ -d /usr/share/iproute2 ] && mkdir -p "$rootfs/usr/share" && cp -a /usr/share/iproute2 "$rootfs/usr/share/"
    copy_with_libs "$rootfs" "$BIN_DIR/edgeswarm" /out/edgeswarm
    copy_with_libs "$rootfs" "$TARGET_DIR/release-small/edgeswarm-bootstrap" /out/edgeswarm-bootstrap
    copy_with_libs "$rootfs" "$BIN_DIR/examples/push_test_image" /out/edgeswarm-push-test-image
    mkdir -p "$rootfs/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/" 2>/dev/null ||
        log "no /etc/ssl/certs/ca-certificates.crt on the host; image has no CA bundle"
    # The runtime base leaves out /out (the Dockerfile copies the binaries
    # from the builder stage); the builder base has them.
    tar -C "$rootfs" --numeric-owner --exclude=./out -cf - . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        - edgeswarm-base:local >/dev/null
    tar -C "$rootfs" --numeric-owner -cf - . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        - edgeswarm-builder-base:local >/dev/null
    rm -rf "$rootfs"
    log "    edgeswarm-base:local $(docker image inspect -f '{{.Size}}' edgeswarm-base:local) bytes," \
        "edgeswarm-builder-base:local $(docker image inspect -f '{{.Size}}' edgeswarm-builder-base:local) bytes"
}

build_registry_image() {
    log "(c) registry image edgeswarm-registry:local from /usr/bin/docker-registry"
    local rootfs
    rootfs=$(mktemp -d)
    base_etc "$rootfs"
    mkdir -p "$rootfs/etc/docker/registry" "$rootfs/var/lib/registry"
    copy_with_libs "$rootfs" /usr/bin/docker-registry /usr/bin/docker-registry
    cat >"$rootfs/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
EOF
    tar -C "$rootfs" --numeric-owner -cf - . | docker import \
        --change 'EXPOSE 5000' \
        --change 'VOLUME /var/lib/registry' \
        --change 'CMD ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]' \
        - edgeswarm-registry:local >/dev/null
    rm -rf "$rootfs"
    log "    edgeswarm-registry:local $(docker image inspect -f '{{.Size}}' edgeswarm-registry:local) bytes"
}

images() {
    need
    build_binaries
    build_base_image
    build_registry_image
    log "(d) docker-compose build (Dockerfile FROM edgeswarm-base:local)"
    docker-compose build gateway
}

up() {
    local n=${1:-3}
    images
    log "docker-compose up -d --scale node=$n"
    docker-compose up -d --scale node="$n"
}

seed() {
    local reference=${1:-demo/app:v1} size=${2:-48M}
    [ -x "$BIN_DIR/examples/push_test_image" ] || build_binaries
    log "pushing $reference ($size) to 127.0.0.1:$REGISTRY_PORT"
    for _ in $(seq 1 30); do
        "$BIN_DIR/examples/push_test_image" "127.0.0.1:$REGISTRY_PORT" "$reference" "$size" && return 0
        sleep 1
    done
    die "could not push to 127.0.0.1:$REGISTRY_PORT (docker-compose logs registry)"
}

demo() {
    local n=${1:-3} size=${2:-48M} t0 t1
    up "$n"
    seed demo/app:v1 "$size"
    # Let mDNS and the gossip mesh settle (nodes report status over gossip).
    sleep 5
    t0=$(date +%s.%N)
    docker-compose exec -T gateway edgeswarm deploy registry:5000/demo/app:v1 --api 127.0.0.1:7465
    docker-compose exec -T gateway edgeswarm status --wait registry:5000/demo/app:v1 \
        --nodes $((n + 1)) --timeout 300 --api 127.0.0.1:7465
    t1=$(date +%s.%N)
    log "deploy + status --wait for $((n + 1)) nodes: $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s"
    docker-compose exec -T gateway edgeswarm status --api 127.0.0.1:7465
}

# Checks after `demo`: every node reports the image done with all bytes from
# peers, none from the cloud; its root filesystem runs the app; the gateway
# alone pulled, and the registry's shaped interface sent about one image.
check() {
    local n=${1:-3} image=registry:5000/demo/app:v1 i failed=0 json sent total
    for i in $(seq 1 "$n"); do
        json=$(docker-compose exec -T --index="$i" node edgeswarm status --json)
        if ! echo "$json" | python3 -c '
import json, sys
image = sys.argv[1]
r = [r for r in json.load(sys.stdin)["self"]["releases"] if r["image"] == image]
assert r, "no release of " + image
r = r[0]
assert r["state"] == "done", r
assert r["bytes_done"] == r["bytes_total"] > 0, r
assert r["bytes_from_cloud"] == 0, r
assert r["bytes_from_peers"] > 0, r
' "$image"; then
            log "FAIL node $i: $json"
            failed=1
        fi
        out=$(docker-compose exec -T --index="$i" node sh -c \
            'chroot /var/lib/edgeswarm/rootfs/registry_5000_demo_app_v1 /bin/sh /app/run.sh' || true)
        [ "$out" = "edgeswarm app v1" ] || { log "FAIL node $i: app printed '$out'"; failed=1; }
    done
    json=$(docker-compose exec -T gateway edgeswarm status --json)
    total=$(echo "$json" | python3 -c '
import json, sys
r = [r for r in json.load(sys.stdin)["self"]["releases"] if r["image"] == sys.argv[1]][0]
assert r["state"] == "done" and r["bytes_from_cloud"] == r["bytes_total"], r
print(r["bytes_total"])' "$image") || { log "FAIL gateway: $json"; failed=1; total=0; }
    sent=$(docker-compose exec -T registry-link tc -s qdisc show dev eth0 |
        sed -n 's/.*Sent \([0-9]*\) bytes.*/\1/p' | head -1)
    log "image layers $total bytes; registry sent $sent bytes over the cloud link"
    if [ "$total" -gt 0 ] && [ "$sent" -gt $((total * 110 / 100)) ]; then
        log "FAIL cloud link carried more than 1.1x the image"
        failed=1
    fi
    [ "$failed" = 0 ] && log "PASS: $n nodes + gateway have $image; cloud link $sent bytes"
    return "$failed"
}

test_e2e() {
    local n=${1:-3}
    trap 'log "docker-compose down -v"; docker-compose down -v >/dev/null 2>&1 || true' EXIT
    demo "$@"
    check "$n"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    images) images ;;
    up) up "$@" ;;
    seed) seed "$@" ;;
    demo) demo "$@" ;;
    test) test_e2e "$@" ;;
    compose) exec docker-compose "$@" ;;
    down) exec docker-compose down -v ;;
    *)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
