//! `edgeswarm-bootstrap`: a lightweight rendezvous peer for localities
//! without mDNS. It has a fixed identity (from a key file, generated on
//! first start) and fixed listen addresses, and serves only the locality's
//! DHT and gossip mesh: no store, no chunks. Nodes point `--bootstrap` at
//! the address it prints.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use edgeswarm_node::swarm::{Node, SwarmConfig};
use libp2p::Multiaddr;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Command line of `edgeswarm-bootstrap`.
#[derive(Parser, Debug)]
#[command(name = "edgeswarm-bootstrap", version, about)]
struct Args {
    /// Locality served (scopes DHT and gossip protocol names).
    #[arg(long, default_value = "default")]
    locality: String,
    /// Address(es) to listen on.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/4001")]
    listen: Vec<Multiaddr>,
    /// Identity key file (libp2p protobuf ed25519); created if absent.
    #[arg(long, default_value = "bootstrap.key")]
    key: PathBuf,
    /// Locality membership key (go-ipfs swarm.key).
    #[arg(long)]
    swarm_key: Option<PathBuf>,
    /// Other bootstrap peers to join.
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Also discover LAN peers with mDNS.
    #[arg(long)]
    mdns: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    // `RUST_LOG` as `target=level` directives (`info`, `libp2p_kad=debug`).
    let filter =
        edgeswarm_node::logging::log_filter(std::env::var("RUST_LOG").ok().as_deref(), "info");
    edgeswarm_node::logging::subscriber(filter, edgeswarm_node::logging::Format::Text).init();
    let args = Args::parse();
    let data_dir = args
        .key
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut config = SwarmConfig::new(data_dir, &args.locality);
    config.listen = args.listen;
    config.bootstrap = args.bootstrap;
    config.swarm_key = args.swarm_key;
    config.mdns = args.mdns;
    let (client, task) = Node::start_bootstrap(config, args.key.clone())
        .await
        .with_context(|| format!("starting bootstrap peer with key {}", args.key.display()))?;
    for addr in client
        .listen_addrs()
        .await
        .context("reading listen addresses")?
    {
        println!("{addr}");
    }
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for ctrl-c")?;
            client.shutdown();
        }
        _ = terminate() => client.shutdown(),
    }
    task.await.context("swarm task")?;
    Ok(())
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}
