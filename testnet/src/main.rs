//! `edgeswarm-testnet`: build, use and remove emulated edgeswarm localities.
//!
//! Thin CLI over the `edgeswarm_testnet` library: `up` builds a topology and
//! leaves it running (recorded in a state file), `down` removes it, `exec`
//! runs a command inside one of its namespaces, `show` prints it again.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgeswarm_testnet::topology::{self, Topology, TopologySpec, DEFAULT_STATE_DIR};
use edgeswarm_testnet::Rate;

/// Emulated edgeswarm localities in Linux network namespaces (needs root).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Directory holding one JSON state file per testnet.
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a testnet and print its namespaces and addresses.
    Up(UpArgs),
    /// Remove everything `up` created for a testnet (processes, namespaces,
    /// links, state file), and nothing else.
    Down {
        /// Testnet name (1-12 chars of [a-z0-9]).
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Print the description of a running testnet.
    Show {
        /// Testnet name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Print JSON (the state file) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a namespace of a testnet (a node's by default).
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Nodes per locality.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Number of localities, each with its own bridge, router and cloud link.
    #[arg(long, default_value_t = 1)]
    localities: usize,
    /// Rate of each locality's cloud link, both directions (tc bit units:
    /// bit, kbit, mbit, gbit).
    #[arg(long, default_value = "200mbit")]
    cloud_rate: Rate,
    /// Rate of each node's link to its bridge, both directions.
    #[arg(long, default_value = "100mbit")]
    node_rate: Rate,
    /// Testnet name (1-12 chars of [a-z0-9]); namespaces are `es-<name>-*`.
    #[arg(long, default_value = "default")]
    name: String,
    /// Print JSON (the state file) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Testnet name.
    #[arg(long, default_value = "default")]
    name: String,
    /// Locality of the node (0-based).
    #[arg(long, default_value_t = 0)]
    locality: usize,
    /// Node index inside the locality (0-based).
    #[arg(long, default_value_t = 0, conflicts_with_all = ["cloud", "router"])]
    node: usize,
    /// Run in the cloud namespace instead of a node's.
    #[arg(long, conflicts_with = "router")]
    cloud: bool,
    /// Run in the locality's router namespace instead of a node's.
    #[arg(long)]
    router: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeswarm-testnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Up(a) => {
            let spec = TopologySpec {
                name: a.name.clone(),
                localities: a.localities,
                nodes_per_locality: a.nodes,
                cloud_rate: a.cloud_rate,
                node_rate: a.node_rate,
                state_dir: cli.state_dir,
            };
            let mut topo =
                Topology::up(&spec).with_context(|| format!("creating testnet {:?}", a.name))?;
            topo.detach();
            print(&topo, a.json)?;
        }
        Cmd::Down { name } => {
            topology::down(&cli.state_dir, &name)
                .with_context(|| format!("removing testnet {name:?}"))?;
            println!("testnet {name:?} removed");
        }
        Cmd::Show { name, json } => {
            let topo = Topology::load(&cli.state_dir, &name)?;
            print(&topo, json)?;
        }
        Cmd::Exec(a) => {
            let topo = Topology::load(&cli.state_dir, &a.name)?;
            let ns = if a.cloud {
                topo.cloud().ns.clone()
            } else if a.router {
                topo.locality(a.locality)?.router_ns.clone()
            } else {
                topo.node(a.locality, a.node)?.ns.clone()
            };
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&a.command)
                .status()
                .with_context(|| format!("running ip netns exec {ns} ..."))?;
            return Ok(match status.code() {
                Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
                None => ExitCode::FAILURE,
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print(topo: &Topology, json: bool) -> Result<()> {
    let s = topo.state();
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "testnet {:?}  cloud link {}  node links {}  state {}",
        s.name,
        s.cloud_rate,
        s.node_rate,
        topo.state_path().display()
    );
    println!(
        "{:<10} {:<22} {:<16} {}",
        "role", "namespace", "address", "counters"
    );
    println!(
        "{:<10} {:<22} {:<16} {}",
        "cloud", s.cloud.ns, s.cloud.addr, "-"
    );
    for l in &s.localities {
        println!(
            "{:<10} {:<22} {:<16} cloud link: {} in {}",
            format!("router{}", l.index),
            l.router_ns,
            l.router_addr,
            l.cloud_link.name,
            l.cloud_link.ns
        );
        for n in &l.nodes {
            println!(
                "{:<10} {:<22} {:<16} {} in {}",
                format!("node{}.{}", l.index, n.index),
                n.ns,
                n.addr,
                n.link.name,
                n.link.ns
            );
        }
    }
    Ok(())
}
