//! The node's integration tests, as one test binary: one link instead of
//! one per file (link time and disk in CI), and one support module.
//! Run one file's tests with its module path, for example
//! `cargo test -p edgeswarm-node --test it swarm_exchange::`.

mod support;

mod api;
mod cli;
mod cli_e2e;
mod converge;
mod durability;
mod failover;
mod fuzz_decoders;
mod gateway;
mod gateway_restart;
mod gateway_trust;
mod import_dir;
mod import_docker;
mod import_oci;
mod locality_e2e;
mod mirror;
mod ready;
mod registry_auth;
mod registry_bench;
mod registry_docker;
mod registry_pull;
mod registry_resume;
mod registry_tls;
mod removal_wire;
mod store_basic;
mod store_crash;
mod store_diskfull;
mod store_model;
mod swarm_bootstrap;
mod swarm_exchange;
mod swarm_faults;
mod swarm_hostile;
mod swarm_malformed;
mod swarm_many;
mod swarm_membership;
mod swarm_relay;
mod swarm_streams;
