//! edgeswarm-testnet: emulated edgeswarm localities on one Linux machine.
//!
//! # Layout
//! - [`topology`]: builds and removes a testnet (cloud namespace, per
//!   locality a router, a bridge and N node namespaces, links shaped with
//!   `tc tbf`), recorded in a state file; runs commands in its namespaces.
//! - [`process`]: long-running processes in a namespace with their own log
//!   and data dir, killed on drop.
//! - [`counters`]: kernel interface byte counters and a CSV time-series
//!   sampler (the experiments' source of truth for cloud-link bytes).
//! - [`registry`]: a real `docker-registry` in the cloud namespace.
//! - [`rate`]: link rates in `tc` bit notation.
//! - [`images`]: realistic multi-layer test images from the host's files,
//!   pushed into the cloud registry.
//! - [`experiment`]: the naive baseline and edgeswarm runs at one N.
//! - [`faults`]: issue 12's fault-injection suite (randomized, seeded
//!   trials of kills, restarts, late joiners, registry cuts, link bounces
//!   and replays, each checked for convergence, integrity, refetches,
//!   leaks and cloud bytes).
//! - [`engines`]: private Docker engines, one per node, for the fault
//!   suite's `--import docker`.
//! - [`mirror_pull`]: issue 14's containerd experiment: every node's
//!   containerd pulls through its node's registry mirror, against one
//!   node's pull straight from the registry in the same run.
//! - [`measure`]: per-link bytes, per-process CPU, pull times and node
//!   metrics of a run.
//! - [`watch`]: polling nodes' APIs from inside the testnet.
//! - [`report`]: results CSV, Markdown summary and SVG figures.
//! - [`scratch`]: a fresh loop-mounted ext4 for one run's data dirs, so
//!   that file creation costs do not depend on the runs before it.
//! - [`hostmem`]: a virtual machine's free page reporting paused during an
//!   experiment, and its memory touched beforehand, so that page cache
//!   costs do not depend on which free pages the hypervisor took back.
//! - [`cgroup`]: a device budget (CPU quota, memory limit) for one process
//!   in a cgroup of its own, v1 or v2, and what it used (issue 15's
//!   `budget` command).
//!
//! # Goals
//! Real TCP/IP between real processes over links with the paper's rate
//! ratios, measured by the kernel, set up and torn down in about a second,
//! with nothing left behind.
//!
//! # Non-goals
//! Latency/loss emulation (no netem in this kernel), IPv6 addressing,
//! multi-host testnets, running without root.
//!
//! # Example
//! ```no_run
//! use edgeswarm_testnet::{topology::{Topology, TopologySpec}, registry::{Registry, RegistryOptions}};
//! use edgeswarm_testnet::{process::SpawnSpec, counters::{Probe, Sampler}};
//! # fn main() -> Result<(), edgeswarm_testnet::TestnetError> {
//! let topo = Topology::up(&TopologySpec::new("demo", 5))?;
//! let mut reg = Registry::start(&topo, RegistryOptions::default())?;
//! let n0 = topo.node(0, 0)?.clone();
//! reg.wait_ready(&topo, &n0.ns, std::time::Duration::from_secs(10))?;
//! let cloud = topo.locality(0)?.cloud_link.clone();
//! let sampler = Sampler::start(vec![Probe::new("cloud", cloud), Probe::new("node0", n0.link.clone())],
//!                              std::time::Duration::from_millis(200), Some("util.csv".into()))?;
//! let _node = topo.spawn(&n0.ns, SpawnSpec::new("edgeswarm", "/tmp/n0.log").arg("run").data_dir("/tmp/n0"))?;
//! // ... wait for the experiment ...
//! let series = sampler.stop()?;
//! println!("cloud bytes: {}", series.delta("cloud").unwrap().tx_bytes);
//! topo.down()?;
//! # Ok(()) }
//! ```

pub mod cgroup;
mod cmd;
pub mod counters;
pub mod engines;
pub mod error;
pub mod experiment;
pub mod faults;
pub mod hostmem;
pub mod images;
pub mod measure;
pub mod mirror_pull;
pub mod process;
pub mod rate;
pub mod registry;
pub mod report;
pub mod scratch;
pub mod topology;
pub mod watch;

pub use error::{Result, TestnetError};
pub use rate::{ByteSize, Rate};
pub use topology::{Iface, NodeInfo, Topology, TopologySpec};
