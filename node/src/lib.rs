//! # edgeswarm-node
//!
//! The edgeswarm daemon and operator CLI. Every edge device runs one node; a
//! node is a libp2p peer of its locality's swarm that stores verified
//! chunks, serves them to its neighbours, and imports images into the local
//! container runtime.
//!
//! ## Layout
//!
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
//!   gateway's registry pull, and the fetch-and-import pipeline of every node.
//! - [`api`]: the local HTTP API (`/v1/...`, `/metrics`) the CLI talks to.
//!
//! The binary (`src/main.rs`) is a thin clap front-end over these modules.
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
#[cfg(feature = "import")]
pub mod import;
#[cfg(feature = "registry")]
pub mod registry;
pub mod store;
pub mod swarm;
