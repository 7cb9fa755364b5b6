//! `edgeswarm`: the node daemon and the operator CLI.
//!
//! `edgeswarm node` runs the daemon; every other command is a thin client
//! of a running node's local HTTP API (`--api`), except `keygen` and
//! `swarm-key`, which only write files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use edgeswarm_node::api::{DeployRequest, DeployResponse, PublishRequest, ResolveResponse};
use edgeswarm_node::daemon::{Daemon, DaemonConfig, StatusView};
use edgeswarm_node::import::ImportSinkKind;
use edgeswarm_node::registry::{Platform, RegistryConfig};
use edgeswarm_node::store::StoreConfig;
use edgeswarm_node::swarm::{keys, SwarmConfig};
use edgeswarm_protocol::release::{PublicKey, PublisherKey, Release, SignedRelease, TrustedKeys};
use edgeswarm_protocol::ChunkSize;
use serde::Deserialize;

/// Default address of a node's local API.
const DEFAULT_API: &str = "127.0.0.1:7465";

/// Provision container images to a locality of edge devices over a
/// peer-to-peer swarm.
#[derive(Parser, Debug)]
#[command(name = "edgeswarm", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  edgeswarm node --data-dir /var/lib/edgeswarm --locality plant-7 --gateway
  edgeswarm deploy registry.example:5000/app:v2
  edgeswarm status --wait registry.example:5000/app:v2 --nodes 10 --timeout 600
  edgeswarm keygen --out publisher.key     # writes publisher.key and publisher.key.pub
  edgeswarm swarm-key --out swarm.key";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node daemon.
    Node(Box<NodeArgs>),
    /// Write a new publisher key pair: the secret key to FILE, the public
    /// key to FILE.pub.
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a new locality membership key (go-ipfs swarm.key format).
    SwarmKey {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Announce a release of IMAGE to the locality.
    Deploy {
        /// Image reference, e.g. `registry:5000/app:v2` or `app@sha256:...`.
        image: String,
        /// Publisher secret key signing the release [default: the node's
        /// own identity, accepted only by nodes without --trust].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Only nodes carrying this label install the release
        /// (`LABEL=VALUE`, repeatable) [default: every node].
        #[arg(long = "select")]
        select: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the locality as the local node sees it.
    Status {
        /// Wait until `--nodes` nodes report IMAGE imported.
        #[arg(long)]
        wait: Option<String>,
        /// Nodes that must report the image done, with --wait [default: 1].
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Seconds to wait, with --wait [default: 600].
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the blobs in the local store and what pins them.
    Images {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Options of commands that talk to a node.
#[derive(Args, Debug)]
struct ClientArgs {
    /// The node's API address [default: 127.0.0.1:7465].
    #[arg(long, env = "EDGESWARM_API", default_value = DEFAULT_API)]
    api: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `edgeswarm node`. Each can also be set in the `--config` TOML
/// file (same name, `-` as `_`) or as `EDGESWARM_<NAME>`; precedence is
/// command line > environment > file > default.
#[derive(Args, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct NodeArgs {
    /// TOML file with any of these options [default: none].
    #[arg(long, env = "EDGESWARM_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the options in effect (after merging the command line, the
    /// environment and the config file) as TOML, and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Where the node keeps its store, identity and imported images
    /// [default: /var/lib/edgeswarm].
    #[arg(long, env = "EDGESWARM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The locality: scopes discovery, gossip and chunk exchange
    /// [default: default].
    #[arg(long, env = "EDGESWARM_LOCALITY")]
    locality: Option<String>,
    /// Listen address, repeatable [default: /ip4/0.0.0.0/tcp/4001].
    #[arg(long, env = "EDGESWARM_LISTEN", value_delimiter = ',')]
    listen: Option<Vec<String>>,
    /// Peer to dial at start (multiaddr with /p2p/ID), repeatable
    /// [default: none].
    #[arg(long, env = "EDGESWARM_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Option<Vec<String>>,
    /// Locality membership key (go-ipfs swarm.key); peers without it
    /// cannot connect [default: none].
    #[arg(long, env = "EDGESWARM_SWARM_KEY")]
    swarm_key: Option<PathBuf>,
    /// Disable mDNS discovery [default: mDNS on].
    #[arg(long, env = "EDGESWARM_NO_MDNS", num_args = 0..=1, default_missing_value = "true")]
    no_mdns: Option<bool>,
    /// Upload cap, bytes per second with optional K/M/G suffix
    /// [default: unlimited].
    #[arg(long, env = "EDGESWARM_MAX_UPLOAD_RATE")]
    max_upload_rate: Option<String>,
    /// Store quota, bytes with optional K/M/G suffix [default: unlimited].
    #[arg(long, env = "EDGESWARM_MAX_STORE_SIZE")]
    max_store_size: Option<String>,
    /// This node may pull from the cloud registry [default: off].
    #[arg(long, env = "EDGESWARM_GATEWAY", num_args = 0..=1, default_missing_value = "true")]
    gateway: Option<bool>,
    /// Registry (HOST:PORT) spoken to over plain HTTP, repeatable
    /// [default: none; loopback registries are always allowed, as in Docker].
    #[arg(long, env = "EDGESWARM_INSECURE_REGISTRY", value_delimiter = ',')]
    insecure_registry: Option<Vec<String>>,
    /// Registry credentials, in Docker's config.json format
    /// [default: ~/.docker/config.json].
    #[arg(long, env = "EDGESWARM_REGISTRY_AUTH")]
    registry_auth: Option<PathBuf>,
    /// Platform to pull, OS/ARCH[/VARIANT] [default: this host's].
    #[arg(long, env = "EDGESWARM_PLATFORM")]
    platform: Option<String>,
    /// Where images go: docker, dir, oci or none [default: docker when
    /// the Docker socket answers, else dir].
    #[arg(long, env = "EDGESWARM_IMPORT")]
    import: Option<String>,
    /// Accept only releases signed by this publisher public key file,
    /// repeatable [default: accept releases signed by any key].
    #[arg(long, env = "EDGESWARM_TRUST", value_delimiter = ',')]
    trust: Option<Vec<PathBuf>>,
    /// Local HTTP API address [default: 127.0.0.1:7465].
    #[arg(long, env = "EDGESWARM_API")]
    api: Option<SocketAddr>,
    /// A label of this node, LABEL=VALUE, repeatable [default: none].
    #[arg(long, env = "EDGESWARM_LABEL", value_delimiter = ',')]
    label: Option<Vec<String>>,
    /// Chunk size the gateway cuts layers in, bytes with optional suffix,
    /// a power of two from 64K to 16M [default: 1M].
    #[arg(long, env = "EDGESWARM_CHUNK_SIZE")]
    chunk_size: Option<String>,
}

impl NodeArgs {
    /// Fills every option not given on the command line or in the
    /// environment from the config file.
    fn merge_file(mut self) -> Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let file: NodeArgs = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        macro_rules! fill {
            ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = file.$field; } )* };
        }
        fill!(
            data_dir,
            locality,
            listen,
            bootstrap,
            swarm_key,
            no_mdns,
            max_upload_rate,
            max_store_size,
            gateway,
            insecure_registry,
            registry_auth,
            platform,
            import,
            trust,
            api,
            label,
            chunk_size
        );
        Ok(self)
    }

    /// Validates and converts the options.
    fn into_config(self) -> Result<(DaemonConfig, SocketAddr)> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/edgeswarm"));
        let locality = self.locality.unwrap_or_else(|| "default".into());
        if locality.is_empty() || locality.contains('/') {
            bail!("--locality {locality:?} must be non-empty and contain no '/'");
        }
        let mut swarm = SwarmConfig::new(&data_dir, &locality);
        swarm.listen = parse_addrs(
            "--listen",
            &self
                .listen
                .unwrap_or_else(|| vec!["/ip4/0.0.0.0/tcp/4001".into()]),
        )?;
        swarm.bootstrap = parse_addrs("--bootstrap", &self.bootstrap.unwrap_or_default())?;
        swarm.swarm_key = self.swarm_key;
        swarm.mdns = !self.no_mdns.unwrap_or(false);
        swarm.max_upload_rate = self
            .max_upload_rate
            .map(|s| parse_size("--max-upload-rate", &s))
            .transpose()?;
        let store = StoreConfig {
            max_size: self
                .max_store_size
                .map(|s| parse_size("--max-store-size", &s))
                .transpose()?,
        };
        let gateway = self.gateway.unwrap_or(false);
        let registry = RegistryConfig::from_flags(
            &self.insecure_registry.unwrap_or_default(),
            self.registry_auth.as_deref(),
        )
        .context("--insecure-registry / --registry-auth")?;
        let platform = match &self.platform {
            Some(p) => Platform::parse(p).map_err(|e| anyhow::anyhow!("--platform {p:?}: {e}"))?,
            None => Platform::host(),
        };
        let import = self
            .import
            .map(|s| {
                s.parse::<ImportSinkKind>()
                    .map_err(|e| anyhow::anyhow!("--import {s:?}: {e}"))
            })
            .transpose()?;
        let mut trusted = TrustedKeys::new();
        for path in self.trust.unwrap_or_default() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading --trust {}", path.display()))?;
            let key = PublicKey::from_file_contents(&text).with_context(|| {
                format!("--trust {} is not a publisher public key", path.display())
            })?;
            trusted.insert(key);
        }
        let mut labels = BTreeMap::new();
        for term in self.label.unwrap_or_default() {
            let (k, v) = Release::parse_selector_term(&term).context("--label")?;
            labels.insert(k, v);
        }
        let chunk_size = match self.chunk_size {
            Some(s) => {
                let bytes = parse_size("--chunk-size", &s)?;
                ChunkSize::new(u32::try_from(bytes).unwrap_or(u32::MAX))
                    .with_context(|| format!("--chunk-size {s}"))?
            }
            None => ChunkSize::DEFAULT,
        };
        let api = self
            .api
            .unwrap_or_else(|| DEFAULT_API.parse().expect("static address"));
        Ok((
            DaemonConfig {
                data_dir,
                swarm,
                store,
                gateway,
                registry,
                platform,
                import,
                trusted,
                labels,
                chunk_size,
            },
            api,
        ))
    }
}

fn parse_addrs(flag: &str, addrs: &[String]) -> Result<Vec<libp2p::Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("{flag} {a:?} is not a multiaddr"))
        })
        .collect()
}

/// Parses `123`, `64K`, `1M`, `2G` (binary multiples) and `10MB`-style
/// spellings.
fn parse_size(flag: &str, s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .with_context(|| format!("{flag} {s:?} is not a size like 512K, 64M or 2G"))?;
    let mult: u64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => bail!("{flag} {s:?}: unknown unit (use K, M or G)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{flag} {s:?} is too large"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("edgeswarm: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => node(*args).await,
        Command::Keygen { out } => keygen(&out),
        Command::SwarmKey { out } => {
            keys::generate_swarm_key(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote swarm key {}", out.display());
            Ok(())
        }
        Command::Deploy {
            image,
            key,
            select,
            client,
        } => deploy(&client, image, key.as_deref(), select).await,
        Command::Status {
            wait,
            nodes,
            timeout,
            client,
        } => match wait {
            Some(image) => wait_for(&client, &image, nodes, Duration::from_secs(timeout)).await,
            None => status(&client).await,
        },
        Command::Images { client } => {
            let value: serde_json::Value = get_json(&client.api, "/v1/images").await?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn node(args: NodeArgs) -> Result<()> {
    let args = args.merge_file()?;
    if args.print_config {
        print!(
            "{}",
            toml::to_string(&args).context("rendering the options")?
        );
        return Ok(());
    }
    init_tracing();
    let (config, api) = args.into_config()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let (daemon, handle) = Daemon::start(config).await.context("starting the node")?;
    let listener = match tokio::net::TcpListener::bind(api).await {
        Ok(l) => l,
        Err(e) => {
            daemon.shutdown();
            return Err(e).with_context(|| format!("binding the API to {api} (see --api)"));
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let api_task = tokio::spawn(edgeswarm_node::api::serve(
        daemon.clone(),
        listener,
        shutdown.clone(),
    ));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        result = api_task => {
            match result {
                Ok(Err(e)) => return Err(e).with_context(|| format!("API on {api}")),
                Ok(Ok(())) => {}
                Err(e) => bail!("API task failed: {e}"),
            }
        }
    }
    shutdown.cancel();
    daemon.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    Ok(())
}

fn keygen(out: &Path) -> Result<()> {
    let key = PublisherKey::generate(&mut rand::rngs::OsRng);
    let public = out.with_extension(match out.extension() {
        Some(ext) => format!("{}.pub", ext.to_string_lossy()),
        None => "pub".into(),
    });
    write_private(out, key.to_file_contents().as_bytes())?;
    std::fs::write(&public, key.public().to_file_contents())
        .with_context(|| format!("writing {}", public.display()))?;
    println!(
        "wrote secret key {} and public key {}",
        out.display(),
        public.display()
    );
    Ok(())
}

/// Writes a secret file readable by its owner only, refusing to overwrite.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn api_url(api: &str, path: &str) -> String {
    format!("http://{api}{path}")
}

async fn get_json<T: for<'de> Deserialize<'de>>(api: &str, path: &str) -> Result<T> {
    let response = reqwest::get(api_url(api, path)).await.with_context(|| {
        format!("no edgeswarm node answers at {api} (is `edgeswarm node` running? see --api)")
    })?;
    decode_response(response).await
}

async fn post_json<B: serde::Serialize, T: for<'de> Deserialize<'de>>(
    api: &str,
    path: &str,
    body: &B,
) -> Result<T> {
    let response = reqwest::Client::new()
        .post(api_url(api, path))
        .json(body)
        .send()
        .await
        .with_context(|| {
            format!("no edgeswarm node answers at {api} (is `edgeswarm node` running? see --api)")
        })?;
    decode_response(response).await
}

async fn decode_response<T: for<'de> Deserialize<'de>>(response: reqwest::Response) -> Result<T> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .context("reading the node's answer")?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{message}");
    }
    serde_json::from_slice(&bytes).context("the node's answer is not the expected JSON")
}

async fn deploy(
    client: &ClientArgs,
    image: String,
    key: Option<&Path>,
    select: Vec<String>,
) -> Result<()> {
    let request = DeployRequest {
        image,
        selector: select,
    };
    let response: DeployResponse = match key {
        None => post_json(&client.api, "/v1/deploy", &request).await?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading publisher key {}", path.display()))?;
            let key = PublisherKey::from_file_contents(&text)
                .with_context(|| format!("{} is not a publisher secret key", path.display()))?;
            let resolved: ResolveResponse = post_json(&client.api, "/v1/resolve", &request).await?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(resolved.release.as_bytes())
                .context("the node's release is not base64")?;
            let release: Release =
                edgeswarm_protocol::encoding::decode("release", &bytes, 64 << 10)
                    .context("the node's release does not decode")?;
            let signed = SignedRelease::sign(release, &key);
            let publish = PublishRequest {
                release: base64::engine::general_purpose::STANDARD.encode(signed.encode()),
            };
            post_json(&client.api, "/v1/releases", &publish).await?
        }
    };
    if client.json {
        println!("{}", serde_json::to_string(&response)?);
    } else {
        println!(
            "release {} (manifest {})",
            response.release_id, response.manifest
        );
    }
    Ok(())
}

async fn status(client: &ClientArgs) -> Result<()> {
    let view: serde_json::Value = get_json(&client.api, "/v1/status").await?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let view: StatusView = serde_json::from_value(view).context("status shape")?;
    println!(
        "{} ({}, locality {}, {} peers connected)",
        view.this.peer_id, view.this.role, view.this.locality, view.this.connected_peers
    );
    for r in &view.this.releases {
        print_release("  ", r);
    }
    for n in &view.nodes {
        println!(
            "{} ({}{})",
            n.peer_id,
            n.role,
            if n.gone { ", gone" } else { "" }
        );
        for r in &n.releases {
            print_release("  ", r);
        }
    }
    Ok(())
}

fn print_release(indent: &str, r: &edgeswarm_node::daemon::ReleaseView) {
    let percent = if r.bytes_total > 0 {
        100.0 * r.bytes_done as f64 / r.bytes_total as f64
    } else {
        0.0
    };
    println!(
        "{indent}{} {} {:.0}% ({} of {} bytes; cloud {}, peers {}){}{}",
        if r.image.is_empty() { &r.id } else { &r.image },
        r.state,
        percent,
        r.bytes_done,
        r.bytes_total,
        r.bytes_from_cloud,
        r.bytes_from_peers,
        r.seconds
            .map(|s| format!(" in {s:.1}s"))
            .unwrap_or_default(),
        r.error
            .as_ref()
            .map(|e| format!(" error: {e}"))
            .unwrap_or_default(),
    );
}

/// Waits until `nodes` nodes (this one included) report `image` done.
async fn wait_for(client: &ClientArgs, image: &str, nodes: usize, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let view: StatusView = get_json(&client.api, "/v1/status").await?;
        let mine: Vec<_> = view
            .this
            .releases
            .iter()
            .filter(|r| r.image == image)
            .collect();
        let Some(release_id) = mine.first().map(|r| r.id.clone()) else {
            if started.elapsed() > timeout {
                bail!(
                    "no release of {image} seen on this node within {}s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let failed: Vec<&str> = mine.iter().filter_map(|r| r.error.as_deref()).collect();
        if let Some(e) = failed.first() {
            bail!("release of {image} failed on this node: {e}");
        }
        let done = mine.iter().any(|r| r.state == "done") as usize
            + view
                .nodes
                .iter()
                .filter(|n| {
                    n.releases
                        .iter()
                        .any(|r| r.id == release_id && r.state == "done")
                })
                .count();
        if done >= nodes {
            if client.json {
                println!(
                    "{}",
                    serde_json::json!({"image": image, "nodes_done": done})
                );
            } else {
                println!(
                    "{image}: {done} node(s) done in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "timed out after {}s: {done} of {nodes} nodes have {image}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
