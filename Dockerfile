# edgeswarm node image, multi-stage.
#
# With internet (Docker Hub):
#   docker build -t edgeswarm:local .
# Offline (no Docker Hub), see scripts/compose-offline.sh: the binaries are
# built on the host; the builder stage starts FROM a local image that already
# holds them in /out (so the cargo step is skipped) and the runtime stage
# FROM a local base that has a shell and tc (so the apt step is skipped):
#   DOCKER_BUILDKIT=0 docker build --build-arg BUILDER_IMAGE=edgeswarm-builder-base:local \
#     --build-arg RUNTIME_IMAGE=edgeswarm-base:local --build-arg INSTALL_PACKAGES=0 \
#     -t edgeswarm:local .

# 1.89: the workspace's rust-version, which is also the newest rust-version
# of a locked dependency (uuid 1.29).
ARG RUST_VERSION=1.89
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- builder: release binaries into /out --------------------------------
FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
# A builder image that already has /out/edgeswarm (the offline base) skips
# the build. Otherwise: edgeswarm, edgeswarm-bootstrap and the test-image
# pusher (node/examples/push_test_image.rs), release mode, in three cargo
# runs: cargo unifies a package's features over everything one run builds,
# so together the bootstrap would link the whole node and edgeswarm the
# test support (feature test-support) that the pusher needs. The bootstrap
# ships from the size-optimised profile (it moves no image bytes; see
# docs/OPERATOR.md, "Binary size").
RUN if [ -x /out/edgeswarm ]; then \
        echo "using prebuilt binaries in /out"; \
    else \
        cargo build --release --locked -p edgeswarm-node --bin edgeswarm \
        && cargo build --profile release-small --locked -p edgeswarm-bootstrap \
        && cargo build --release --locked -p edgeswarm-node --features test-support \
            --example push_test_image \
        && mkdir -p /out \
        && cp target/release/edgeswarm target/release-small/edgeswarm-bootstrap /out/ \
        && cp target/release/examples/push_test_image /out/edgeswarm-push-test-image; \
    fi

# ---- runtime: debian-slim + tc + the binaries ---------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# 1: install iproute2 (tc, ip) and CA certificates with apt; 0: the runtime
# image already has them (the offline base).
ARG INSTALL_PACKAGES=1
RUN if [ "$INSTALL_PACKAGES" = 1 ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            iproute2 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=builder /out/edgeswarm /out/edgeswarm-bootstrap /out/edgeswarm-push-test-image /usr/local/bin/
COPY docker/entrypoint.sh /usr/local/bin/edgeswarm-entrypoint
ENV EDGESWARM_DATA_DIR=/var/lib/edgeswarm
# libp2p swarm (TCP) and the local API (loopback by default).
EXPOSE 4001
ENTRYPOINT ["/usr/local/bin/edgeswarm-entrypoint"]
# Closed by default: give the node its keys (EDGESWARM_TRUST=publisher.key.pub,
# EDGESWARM_SWARM_KEY=swarm.key, mounted in), or for a lab
# EDGESWARM_ALLOW_ANY_PUBLISHER=true and EDGESWARM_OPEN_LOCALITY=true (what
# docker-compose.yml sets). Without a swarm key or the open-locality setting
# it does not start; without a trusted key it refuses every release.
CMD ["edgeswarm", "node"]
