//! # edgeswarm-protocol
//!
//! The sans-IO core of edgeswarm: everything two edgeswarm nodes must agree
//! on, and the decisions that can be made without touching a socket, a disk
//! or a clock. This crate has no tokio, no threads, no time source and no
//! randomness of its own; callers pass in time and seeds, which makes every
//! behaviour reproducible in tests and simulations.
//!
//! ## Layout
//!
//! - [`address`]: content addresses. A [`Digest`] is a sha2-256 digest; it
//!   converts 1:1 to an OCI digest string (`sha256:<hex>`) and to a CIDv1.
//! - [`chunkmap`]: the `.torrent` of a blob. A [`ChunkMap`] lists a blob's
//!   size, its chunk size and the digest of every chunk; it can be built
//!   incrementally from a byte stream with [`ChunkMapBuilder`] (the gateway
//!   sees bytes as the registry sends them) and verifies chunks.
//! - [`bitfield`]: which chunks of a blob a peer holds.
//! - [`encoding`]: canonical, size-bounded CBOR shared by every wire type,
//!   and the CBOR head reader that gives version errors their types.
//! - [`signing`]: ed25519 keys, key files and the [`signing::Signed`]
//!   envelope with per-type domain separation.
//! - [`release`]: what a publisher signs: release announcements and
//!   removal requests.
//! - [`wire`]: versioned swarm messages: the chunk-exchange stream protocol
//!   and the gossip messages (availability, node status, the gateway's
//!   signed messages), with the protocol and topic names of a locality.
//! - [`election`]: which gateway-capable node pulls a release (rendezvous
//!   hashing), so every node agrees without a coordinator.
//! - [`picker`]: the piece picker, pure deterministic logic deciding which
//!   chunk to request from which peer (rarest-first, in-order deadline
//!   window, per-peer caps, endgame, seeded tie-breaking).
//! - [`upload`]: the serving side's policy (upload slots and choking,
//!   `Busy`, seed sparing), a state machine fed events and returning
//!   actions, which the node serves by; and request pipelining sized to the
//!   bandwidth-delay product.
//! - [`sim`]: a deterministic discrete-event simulator of a locality's
//!   swarm that drives the picker and the upload policy over a link model
//!   (`examples/sim.rs` prints its figures up to 10,000 nodes).
//!
//! ## Goals
//!
//! - One precise definition of every byte on the wire, pinned by golden
//!   tests, so a second implementation can interoperate (see
//!   `docs/PROTOCOL.md`).
//! - Paranoia about data integrity: every decoder is bounded in size,
//!   rejects non-canonical input and never panics on arbitrary bytes.
//!
//! ## Non-goals
//!
//! - I/O of any kind. Networking, storage and timers live in `edgeswarm-node`.
//! - Registry formats (OCI manifests): those are parsed by the node's
//!   registry client; this crate only speaks in digests.

pub mod address;
pub mod bitfield;
pub mod chunkmap;
pub mod election;
pub mod encoding;
pub mod picker;
pub mod release;
pub mod signing;
pub mod sim;
pub mod upload;
pub mod wire;

pub use address::{AddressError, Codec, Digest};
pub use bitfield::Bitfield;
pub use chunkmap::{ChunkError, ChunkMap, ChunkMapBuilder, ChunkSize};
pub use encoding::DecodeError;
