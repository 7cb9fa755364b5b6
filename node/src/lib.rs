//! # edgeswarm-node
//!
//! The edgeswarm daemon and operator CLI. Every edge device runs one node; a
//! node is a libp2p peer of its locality's swarm that stores verified
//! chunks, serves them to its neighbours, and imports images into the local
//! container runtime.
//!
//! ## Layout
//!
//! - [`fsutil`]: crash-safe state-file writes (temp, fsync, rename, fsync
//!   the directory) and the data-dir lock.
//! - [`store`]: the content-addressed, crash-safe chunk store under
//!   `--data-dir` (per-blob bitfields, resume, quota and GC).
//! - [`registry`]: the OCI Distribution pull client the gateway uses
//!   (references, platforms, auth, resumable blob streams), and (feature
//!   `test-support`) test support to build and push images to a real
//!   registry.
//! - [`import`]: the streaming import pipeline: verified layer bytes ->
//!   decompression -> diff_id check -> Docker, a rootfs directory or an
//!   OCI layout.
//! - [`swarm`]: the libp2p layer: identity, membership (pnet), locality-scoped
//!   Kademlia and gossipsub, mDNS, and the chunk exchange over raw streams.
//! - [`daemon`]: the release flow: trust checks, gateway election and the
//!   gateway's registry pull, and the fetch-and-import pipeline of every node;
//!   readiness ([`daemon::Daemon::readiness`], with a [`daemon::ReadyGate`]
//!   per optional component such as the registry mirror).
//! - [`api`]: the local HTTP API (`/v1/...`, `/metrics`) the CLI talks to,
//!   and the probes (`/v1/health`, `/v1/ready`).
//! - [`mirror`]: the registry mirror (`--mirror`): the OCI Distribution
//!   read API for containerd, Docker and skopeo, pulling misses through
//!   the locality (feature `api`).
//!
//! The binary (`src/main.rs`, with `src/operator.rs`) is not part of this
//! library. It holds the clap command line; the `edgeswarm node` options
//! and how they merge (command line > `EDGESWARM_*` environment >
//! `--config` TOML file > default) into a [`daemon::DaemonConfig`]; the
//! node runner (data-dir lock, removal of a killed node's leftovers,
//! daemon, API, `READY=1` to systemd, shutdown on Ctrl-C or SIGTERM); key generation (`keygen`,
//! `swarm-key`); and the operator commands, which are HTTP clients of a
//! running node's API. Those do some work of their own: `deploy --key`
//! signs the release the node prepared with the publisher key locally (the
//! key never reaches the node), `status --wait` polls until enough nodes
//! report the image done, and `operator.rs` renders status as progress
//! bars or plain lines.
//!
//! ## Features
//!
//! `store` and `swarm` are always built. The default feature `full` adds
//! `registry`, `import`, `daemon` and `api` (each also a feature of its
//! own) and the CLI's crates; the `edgeswarm` binary requires it. The
//! bootstrap peer depends on the node without default features: the swarm
//! and nothing of reqwest, bollard or axum. `test-support` adds
//! `registry::testing` and the swarm's fault injection, for tests only.
//!
//! ## Goals
//!
//! - Near the physical limit: one image over the cloud link per locality,
//!   each device receiving at close to its own link speed.
//! - Paranoid integrity: every chunk verified before it is used or
//!   forwarded; lying peers are banned.
//! - Edge-device budgets: bounded memory (no whole layer in memory), no
//!   blocking work on the async runtime.
//!
//! ## Non-goals
//!
//! - Running containers (that is the runtime's job: Docker, runc, podman).
//! - Building or pushing images to registries in production.

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod fsutil;
#[cfg(feature = "import")]
pub mod import;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "api")]
pub mod mirror;
#[cfg(feature = "registry")]
pub mod registry;
pub mod store;
pub mod swarm;
