//! # OCI Distribution v2 pull client
//!
//! Only the gateway talks to the cloud registry; this module is how it does.
//!
//! ## Layout
//!
//! - [`reference`](mod@reference): Docker's image reference grammar ([`Reference`]).
//! - [`platform`]: `OS/ARCH[/VARIANT]` and index entry selection ([`Platform`]).
//! - [`manifest`]: serde types for manifests, indexes and configs, media types.
//! - [`config`]: [`RegistryConfig`]: insecure registries (and the loopback
//!   rule), the credential source, retry, timeout and size settings.
//! - [`auth`]: credentials (`~/.docker/config.json`, `--registry-auth FILE`,
//!   credential helpers), `WWW-Authenticate` parsing, the token cache, and
//!   the token flow (the `Authorization` of each request).
//! - [`client`]: [`RegistryClient`], the request core: `/v2/` probe,
//!   redirects, retries and backoff, re-authentication, status mapping,
//!   size-limited documents, byte counters.
//! - [`resolve`]: manifests with the full Accept list and digest checks,
//!   platform resolution, config fetch ([`ResolvedImage`]).
//! - [`stream`]: resumable blob streams ([`BlobStream`]).
//! - `testing` (feature `test-support` only): builds realistic multi-layer
//!   images from this machine's files and pushes them; runs a real
//!   `docker-registry` for tests. A library module rather than
//!   `#[cfg(test)]` because the node's integration tests, benches and
//!   example and the testnet reuse it; behind a feature so no shipped
//!   binary contains it.
//!
//! ## Goals
//!
//! - Every byte verified against the digest it was asked for: manifests on
//!   the exact bytes received (and against `Docker-Content-Digest` and a
//!   pinned digest), configs whole. Layer bytes are streamed unhashed; the
//!   store verifies every chunk and the whole blob.
//! - A blob download survives resets and stalls: the stream reopens with
//!   `Range: bytes=N-` from the last byte delivered, invisibly to the
//!   consumer, so a flaky cloud link costs ~1x the blob size.
//! - Bounded memory: blob streams hold one HTTP chunk; documents are capped
//!   (4 MiB manifests, 16 MiB configs).
//! - Docker's behaviour where users expect it: reference normalisation,
//!   credentials, insecure registries (plain HTTP only for registries listed
//!   with `--insecure-registry HOST:PORT`; like dockerd, loopback registries
//!   — `localhost`, 127.0.0.0/8, `::1` — are insecure implicitly, which
//!   [`RegistryConfig::loopback_insecure`] can switch off).
//! - Registry credentials never leave the registry's origin: redirects to
//!   another host/port/scheme (object storage) are followed without the
//!   `Authorization` header; foreign-layer URLs get no credentials.
//!
//! ## Non-goals
//!
//! - Pushing (except the test helper), schema 1 manifests, digest
//!   algorithms other than sha256, mutual TLS (HTTPS trusts the system CA
//!   store and each `--registry-ca` file, see
//!   [`RegistryConfig::add_ca_file`]), trying HTTPS before HTTP for insecure registries
//!   (dockerd does; we go straight to HTTP), HTTP-date forms of `Retry-After` (seconds only;
//!   dates fall back to exponential backoff), CIDR entries in the insecure list.

pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod manifest;
pub mod platform;
pub mod reference;
pub mod resolve;
pub mod stream;
#[cfg(feature = "test-support")]
pub mod testing;

pub use auth::{Challenge, CredentialError, Credentials, DockerConfig};
pub use client::{RegistryClient, RegistryStats};
pub use config::RegistryConfig;
pub use error::RegistryError;
pub use manifest::Compression;
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError};
pub use resolve::{FetchedManifest, LayerDescriptor, ResolvedImage};
pub use stream::BlobStream;
