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
use edgeswarm_node::daemon::{Daemon, DaemonConfig, ReleasePhase, StatusView};
use edgeswarm_node::fsutil::DataDirLock;
use edgeswarm_node::import::{DockerTarget, ImportSinkKind};
use edgeswarm_node::registry::{Platform, RegistryConfig};
use edgeswarm_node::store::StoreConfig;
use edgeswarm_node::swarm::{keys, SwarmConfig};
use edgeswarm_protocol::release::{Release, SignedRelease};
use edgeswarm_protocol::signing::{PublicKey, PublisherKey, TrustedKeys};
use edgeswarm_protocol::ChunkSize;
use serde::Deserialize;

mod operator;

/// Default address of a node's local API.
const DEFAULT_API: &str = "127.0.0.1:7465";

/// Default data dir of a node.
const DEFAULT_DATA_DIR: &str = "/var/lib/edgeswarm";

/// Provision container images to a locality of edge devices over a
/// peer-to-peer swarm.
#[derive(Parser, Debug)]
#[command(name = "edgeswarm", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  edgeswarm keygen --out publisher.key     # writes publisher.key and publisher.key.pub
  edgeswarm swarm-key --out swarm.key      # the locality's membership key, for every node
  edgeswarm node --data-dir /var/lib/edgeswarm --locality plant-7 --gateway \\
    --trust publisher.key.pub --swarm-key swarm.key
  edgeswarm deploy registry.example:5000/app:v2 --key publisher.key
  edgeswarm status --wait registry.example:5000/app:v2 --nodes 10 --timeout 600
  edgeswarm status --watch                 # live progress until every release is done
  edgeswarm images
  edgeswarm rm registry.example:5000/app:v1 --key publisher.key";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node daemon.
    Node(Box<NodeArgs>),
    /// Write a new publisher key pair: the secret key to FILE, the public
    /// key to FILE.pub.
    Keygen {
        /// Where to write the secret key (required; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print JSON (paths and the public key) instead of text
        /// [default: text].
        #[arg(long)]
        json: bool,
    },
    /// Write a new locality membership key (go-ipfs swarm.key format).
    SwarmKey {
        /// Where to write the key (required; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print JSON instead of text [default: text].
        #[arg(long)]
        json: bool,
    },
    /// Announce a release of IMAGE to the locality.
    Deploy {
        /// Image reference, e.g. `registry:5000/app:v2` or `app@sha256:...`.
        image: String,
        /// Publisher secret key signing the release [default: the node's
        /// own identity, accepted only by nodes run with
        /// --allow-any-publisher].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Only nodes carrying this label install the release
        /// (`LABEL=VALUE`, repeatable) [default: every node].
        #[arg(long = "select")]
        select: Vec<String>,
        /// With --key: sign only a release for this locality
        /// [default: the node's locality, shown before signing].
        #[arg(long, requires = "key")]
        locality: Option<String>,
        /// With --key: sign only a release of this manifest digest
        /// (`sha256:...`) [default: the digest in IMAGE if it has one,
        /// else whatever the tag resolves to, shown].
        #[arg(long, requires = "key")]
        digest: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the locality as the local node sees it: every node, its role,
    /// and each release's progress (progress bars on a terminal, plain
    /// lines otherwise).
    Status {
        /// Keep refreshing until every release is done or failed, or
        /// Ctrl-C [default: show once].
        #[arg(long, conflicts_with = "wait")]
        watch: bool,
        /// Wait until `--nodes` nodes report IMAGE imported, then exit 0;
        /// fail at `--timeout` [default: don't wait].
        #[arg(long, value_name = "IMAGE")]
        wait: Option<String>,
        /// Nodes that must report the image done, with --wait [default: 1].
        #[arg(long, default_value_t = 1, hide_default_value = true)]
        nodes: usize,
        /// Seconds to wait, with --wait [default: 600].
        #[arg(long, default_value_t = 600, hide_default_value = true)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the images and blobs in the local store: sizes, completeness,
    /// and what pins them.
    Images {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove IMAGE from this node (store pin, unreferenced blobs, and the
    /// imported copy), or from every node with --locality.
    Rm {
        /// Image reference, exactly as deployed.
        image: String,
        /// Ask every node of the locality to remove it too (a signed
        /// request gossiped like a release) [default: this node only].
        #[arg(long)]
        locality: bool,
        /// Publisher secret key signing the removal, needed unless nodes run
        /// with --allow-any-publisher; implies --locality [default: the
        /// node's own identity].
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Options of commands that talk to a node.
#[derive(Args, Debug)]
struct ClientArgs {
    /// The node's API address [default: 127.0.0.1:7465].
    #[arg(long, env = "EDGESWARM_API", default_value = DEFAULT_API, hide_default_value = true)]
    api: String,
    /// The node's API token file, written by the node at each start and
    /// readable by its owner only; needed by commands that change
    /// anything [default: $EDGESWARM_DATA_DIR/api.token, else
    /// /var/lib/edgeswarm/api.token].
    #[arg(long, env = "EDGESWARM_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text [default: text].
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
    /// Peer to dial at start (multiaddr with /p2p/ID), and again while
    /// the node has no connection (after 1 s, backing off to 30 s),
    /// repeatable [default: none].
    #[arg(long, env = "EDGESWARM_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Option<Vec<String>>,
    /// Locality membership key (go-ipfs swarm.key); peers without it
    /// cannot connect [default: none: the node refuses to start unless
    /// --open-locality is given].
    #[arg(long, env = "EDGESWARM_SWARM_KEY")]
    swarm_key: Option<PathBuf>,
    /// Run without a swarm key: any host that reaches this node can join
    /// the locality, serve it chunks and gossip to it (releases still need
    /// a trusted publisher signature). For labs and closed networks
    /// [default: off].
    #[arg(long, env = "EDGESWARM_OPEN_LOCALITY", num_args = 0..=1, default_missing_value = "true")]
    open_locality: Option<bool>,
    /// Disable mDNS discovery [default: mDNS on].
    #[arg(long, env = "EDGESWARM_NO_MDNS", num_args = 0..=1, default_missing_value = "true")]
    no_mdns: Option<bool>,
    /// Paces uploads to this many bytes per second (optional K/M/G
    /// suffix). Set it a few percent under the uplink's rate (about 92 %:
    /// 11500000 on a 100 Mbit/s link): unpaced uploads fill the uplink's
    /// queue, and every request and `Have` that crosses it waits behind
    /// them, which slowed a 10-node locality by a fifth in the testnet
    /// [default: unpaced].
    #[arg(long, env = "EDGESWARM_MAX_UPLOAD_RATE")]
    max_upload_rate: Option<String>,
    /// Chunk uploads served at once; fewer finish each chunk sooner, so
    /// it can be relayed sooner [default: 3].
    #[arg(long, env = "EDGESWARM_UPLOAD_SLOTS")]
    upload_slots: Option<usize>,
    /// Chunk requests that may wait for an upload slot; more are answered
    /// Busy so the requester asks another holder (at least 3 for blobs this
    /// node did not fetch from peers, such as a gateway's) [default: 0].
    #[arg(long, env = "EDGESWARM_UPLOAD_QUEUE")]
    upload_queue: Option<usize>,
    /// Serve chunks only once whole and verified here, instead of passing
    /// them on to peers while they arrive (cut-through relay; every copy
    /// is verified either way). For comparisons [default: relay on].
    #[arg(long, env = "EDGESWARM_NO_RELAY", num_args = 0..=1, default_missing_value = "true")]
    no_relay: Option<bool>,
    /// Chunk requests kept outstanding at each peer [default: 2].
    #[arg(long, env = "EDGESWARM_REQUESTS_PER_PEER")]
    requests_per_peer: Option<usize>,
    /// Chunk requests of one download kept outstanding over all peers
    /// [default: 4].
    #[arg(long, env = "EDGESWARM_MAX_REQUESTS")]
    max_requests: Option<usize>,
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
    /// PEM file of CA certificates trusted for HTTPS registries besides
    /// the system CA store (a registry behind an internal CA), repeatable
    /// [default: the system store only].
    #[arg(
        long,
        env = "EDGESWARM_REGISTRY_CA",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    registry_ca: Option<Vec<PathBuf>>,
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
    /// Accept only releases and removals signed by this publisher public
    /// key file (`edgeswarm keygen` writes one), repeatable [default: none:
    /// every release and removal is refused].
    #[arg(long, env = "EDGESWARM_TRUST", value_delimiter = ',')]
    trust: Option<Vec<PathBuf>>,
    /// `--import dir`: create character and block device nodes a layer
    /// holds (only as root) [default: off: skipped with a warning].
    #[arg(long, env = "EDGESWARM_DIR_DEVICE_NODES", num_args = 0..=1, default_missing_value = "true")]
    dir_device_nodes: Option<bool>,
    /// `--import dir`: keep setuid/setgid bits and file capabilities
    /// (`security.capability`) [default: off: stripped with a warning].
    #[arg(long, env = "EDGESWARM_DIR_KEEP_SETID", num_args = 0..=1, default_missing_value = "true")]
    dir_keep_setid: Option<bool>,
    /// Accept releases and removals signed by any key, including
    /// `deploy` without --key (signed by the node's own identity). Anyone
    /// in the locality can then change what this node runs: for labs only
    /// [default: off].
    #[arg(long, env = "EDGESWARM_ALLOW_ANY_PUBLISHER", num_args = 0..=1, default_missing_value = "true")]
    allow_any_publisher: Option<bool>,
    /// Only this peer (its peer id, as `edgeswarm status` shows it) may
    /// act as the locality's gateway: be elected to pull a release and
    /// sign its chunk digests; repeatable. Give every node the same list
    /// [default: none: any --gateway member may be elected].
    #[arg(
        long,
        env = "EDGESWARM_TRUST_GATEWAY",
        value_delimiter = ',',
        value_name = "PEERID"
    )]
    trust_gateway: Option<Vec<String>>,
    /// Local HTTP API address [default: 127.0.0.1:7465].
    #[arg(long, env = "EDGESWARM_API")]
    api: Option<SocketAddr>,
    /// Serve the registry mirror (the OCI Distribution read API for
    /// containerd, Docker and skopeo, pulling misses through the
    /// locality) on this address, e.g. 127.0.0.1:5050 [default: off].
    #[arg(long, env = "EDGESWARM_MIRROR")]
    mirror: Option<SocketAddr>,
    /// The upstream registry of mirror requests that do not name one
    /// (containerd sends `?ns=`; skopeo and Docker do not)
    /// [default: docker.io].
    #[arg(long, env = "EDGESWARM_MIRROR_DEFAULT_REGISTRY")]
    mirror_default_registry: Option<String>,
    /// A label of this node, LABEL=VALUE, repeatable [default: none].
    #[arg(long, env = "EDGESWARM_LABEL", value_delimiter = ',')]
    label: Option<Vec<String>>,
    /// Chunk size the gateway cuts layers in, bytes with optional suffix,
    /// a power of two from 64K to 16M [default: 512K].
    #[arg(long, env = "EDGESWARM_CHUNK_SIZE")]
    chunk_size: Option<String>,
    /// Versions of each repository kept once a newer one is imported (the
    /// rollback window); older ones are removed [default: 2].
    #[arg(long, env = "EDGESWARM_KEEP_VERSIONS")]
    keep_versions: Option<usize>,
    /// A layer may expand to this many times its compressed size when
    /// decompressed (at least to 64M); more fails the import as a
    /// decompression bomb [default: 100].
    #[arg(long, env = "EDGESWARM_MAX_UNPACK_RATIO")]
    max_unpack_ratio: Option<u64>,
    /// Largest uncompressed layer, bytes with optional K/M/G suffix
    /// [default: 64G].
    #[arg(long, env = "EDGESWARM_MAX_LAYER_UNPACKED")]
    max_layer_unpacked: Option<String>,
    /// Log line format: `text` for people, `json` (one object
    /// per line) for log collectors [default: text].
    #[arg(long, env = "EDGESWARM_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    // No doc comments here: clap would turn them into a long help layout.
    Text,
    Json,
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
            open_locality,
            no_mdns,
            max_upload_rate,
            upload_slots,
            upload_queue,
            no_relay,
            requests_per_peer,
            max_requests,
            max_store_size,
            gateway,
            insecure_registry,
            registry_ca,
            registry_auth,
            platform,
            import,
            trust,
            allow_any_publisher,
            trust_gateway,
            dir_device_nodes,
            dir_keep_setid,
            api,
            mirror,
            mirror_default_registry,
            label,
            chunk_size,
            keep_versions,
            max_unpack_ratio,
            max_layer_unpacked,
            log_format
        );
        Ok(self)
    }

    /// The registry mirror's address and settings, when it is on.
    fn mirror(&self) -> Option<(SocketAddr, edgeswarm_node::mirror::MirrorConfig)> {
        let addr = self.mirror?;
        let mut config = edgeswarm_node::mirror::MirrorConfig::default();
        if let Some(registry) = &self.mirror_default_registry {
            config.default_registry = registry.clone();
        }
        Some((addr, config))
    }

    /// Validates and converts the options.
    fn into_config(self) -> Result<(DaemonConfig, SocketAddr)> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
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
        if let Some(n) = self.upload_slots {
            if n == 0 {
                bail!("--upload-slots must be at least 1");
            }
            swarm.upload_slots = n;
        }
        if let Some(n) = self.max_requests {
            if n == 0 {
                bail!("--max-requests must be at least 1");
            }
            swarm.max_requests = Some(n);
        }
        if let Some(n) = self.upload_queue {
            swarm.upload_queue = n;
        }
        if self.no_relay == Some(true) {
            swarm.relay = false;
        }
        if let Some(n) = self.requests_per_peer {
            if n == 0 {
                bail!("--requests-per-peer must be at least 1");
            }
            swarm.requests_per_peer = n;
        }
        let store = StoreConfig {
            max_size: self
                .max_store_size
                .map(|s| parse_size("--max-store-size", &s))
                .transpose()?,
            ..StoreConfig::default()
        };
        let gateway = self.gateway.unwrap_or(false);
        let mut registry = RegistryConfig::from_flags(
            &self.insecure_registry.unwrap_or_default(),
            self.registry_auth.as_deref(),
        )
        .context("--insecure-registry / --registry-auth")?;
        for path in self.registry_ca.unwrap_or_default() {
            registry.add_ca_file(&path)?;
        }
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
        let allow_any_publisher = self.allow_any_publisher.unwrap_or(false);
        if allow_any_publisher && !trusted.is_empty() {
            bail!("--allow-any-publisher and --trust exclude each other: drop one");
        }
        let mut trusted_gateways = Vec::new();
        for id in self.trust_gateway.unwrap_or_default() {
            let peer: libp2p::PeerId = id
                .parse()
                .with_context(|| format!("--trust-gateway {id:?} is not a peer id"))?;
            trusted_gateways.push(peer);
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
        let keep_versions = self
            .keep_versions
            .unwrap_or(edgeswarm_node::daemon::DEFAULT_KEEP_VERSIONS);
        if keep_versions == 0 {
            bail!("--keep-versions must be at least 1 (the version just imported)");
        }
        let api = self
            .api
            .unwrap_or_else(|| DEFAULT_API.parse().expect("static address"));
        let mut unpack = edgeswarm_node::import::UnpackLimit::default();
        if let Some(r) = self.max_unpack_ratio {
            if r == 0 {
                bail!("--max-unpack-ratio must be at least 1");
            }
            unpack.ratio = r;
        }
        if let Some(s) = &self.max_layer_unpacked {
            unpack.cap = parse_size("--max-layer-unpacked", s)?;
        }
        // Last, so that a mistyped option is named before this.
        if swarm.swarm_key.is_none() && !self.open_locality.unwrap_or(false) {
            bail!(
                "no --swarm-key: without one any host that reaches this node can join its \
                 locality. Write a key with `edgeswarm swarm-key --out swarm.key`, give it to \
                 every node with --swarm-key swarm.key, or pass --open-locality to run an open \
                 locality (labs, closed networks)"
            );
        }
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
                allow_any_publisher,
                trusted_gateways,
                labels,
                dir: edgeswarm_node::import::DirPolicy {
                    device_nodes: self.dir_device_nodes.unwrap_or(false),
                    keep_setid: self.dir_keep_setid.unwrap_or(false),
                },
                chunk_size,
                keep_versions,
                unpack,
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
        eprintln!("edgeswarm: {}", error_text(&e));
        std::process::exit(1);
    }
}

/// `error` with its causes, each said once: the library errors display
/// the error they wrap and also expose it as their source, so anyhow's
/// `{:#}` repeated every message below the first wrapping one.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => node(*args).await,
        Command::Keygen { out, json } => keygen(&out, json),
        Command::SwarmKey { out, json } => {
            keys::generate_swarm_key(&out).with_context(|| format!("writing {}", out.display()))?;
            if json {
                println!("{}", serde_json::json!({ "swarm_key": out }));
            } else {
                println!("wrote swarm key {}", out.display());
            }
            Ok(())
        }
        Command::Deploy {
            image,
            key,
            select,
            locality,
            digest,
            client,
        } => {
            let expect = Expected { locality, digest };
            deploy(&client, image, key.as_deref(), select, &expect).await
        }
        Command::Status {
            watch,
            wait,
            nodes,
            timeout,
            client,
        } => match wait {
            Some(image) => wait_for(&client, &image, nodes, Duration::from_secs(timeout)).await,
            None => status(&client, watch).await,
        },
        Command::Images { client } => {
            let value: serde_json::Value = get_json(&client.api, "/v1/images").await?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", operator::render_images(&value)?);
            }
            Ok(())
        }
        Command::Rm {
            image,
            locality,
            key,
            client,
        } => rm(&client, image, locality || key.is_some(), key.as_deref()).await,
    }
}

/// `RUST_LOG` when it is unset, empty or does not parse.
const DEFAULT_LOG_FILTER: &str = "info,libp2p=warn";

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = edgeswarm_node::logging::log_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        DEFAULT_LOG_FILTER,
    );
    let format = match format {
        LogFormat::Text => edgeswarm_node::logging::Format::Text,
        LogFormat::Json => edgeswarm_node::logging::Format::Json,
    };
    edgeswarm_node::logging::subscriber(filter, format).init();
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
    init_tracing(args.log_format.unwrap_or(LogFormat::Text));
    let mirror = args.mirror();
    let (config, api) = args.into_config()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Before anything in the data dir is touched: a second process must not
    // empty the first one's temporary files or clean up its imports.
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    // systemd and `docker stop` send SIGTERM: the same orderly shutdown as
    // Ctrl-C. Installed before start so that an early one is not fatal.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    remove_leftovers(&config.data_dir, config.import).await;
    let data_dir = config.data_dir.clone();
    let token =
        tokio::task::spawn_blocking(move || edgeswarm_node::api::write_token_file(&data_dir))
            .await
            .context("token task")?
            .with_context(|| {
                format!(
                    "writing the API token {}",
                    edgeswarm_node::api::token_path(&config.data_dir).display()
                )
            })?;
    let (daemon, handle) = Daemon::start(config).await.context("starting the node")?;
    let listener = match tokio::net::TcpListener::bind(api).await {
        Ok(l) => l,
        Err(e) => {
            daemon.shutdown();
            return Err(e).with_context(|| format!("binding the API to {api} (see --api)"));
        }
    };
    // The store is open, the swarm listens and the API is bound: what a
    // `Type=notify` unit waits for. Joining the locality is not awaited
    // (a down bootstrap peer would fail the start); `/v1/ready` has that.
    notify_systemd_ready();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let api_task = tokio::spawn(edgeswarm_node::api::serve(
        daemon.clone(),
        listener,
        token,
        shutdown.clone(),
    ));
    let mirror_task = match mirror {
        Some((addr, mirror_config)) => {
            // `/v1/ready` stays 503 until the mirror listens: a kubelet
            // pulling through it must not be pointed at it before.
            let gate = daemon.readiness_gate("mirror");
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    gate.set_ready(true);
                    l
                }
                Err(e) => {
                    shutdown.cancel();
                    daemon.shutdown();
                    return Err(e)
                        .with_context(|| format!("binding the mirror to {addr} (see --mirror)"));
                }
            };
            tokio::spawn(edgeswarm_node::mirror::serve(
                daemon.clone(),
                listener,
                mirror_config,
                shutdown.clone(),
            ))
        }
        None => tokio::spawn(std::future::pending()),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted (SIGINT); shutting down"),
        result = mirror_task => {
            match result {
                Ok(Err(e)) => return Err(e).context("registry mirror"),
                Ok(Ok(())) => {}
                Err(e) => bail!("mirror task failed: {e}"),
            }
        }
        _ = sigterm.recv() => tracing::info!("terminated (SIGTERM); shutting down"),
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
    if tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .is_err()
    {
        tracing::warn!("the node did not stop within 5 s; exiting anyway");
    }
    tracing::info!("node stopped");
    Ok(())
}

/// Tells systemd (`Type=notify`) that the node is up: `READY=1` as one
/// datagram to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
/// socket), the whole sd_notify protocol this needs. Without the
/// variable (not under systemd) it does nothing; a failure is logged,
/// since systemd then times the start out and says so itself.
fn notify_systemd_ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt as _;
        let datagram = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = socket.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                std::os::unix::net::SocketAddr::from_abstract_name(name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&socket)?,
        };
        datagram.send_to_addr(b"READY=1\nSTATUS=serving", &addr)?;
        Ok(())
    })();
    match result {
        Ok(()) => tracing::debug!("notified systemd: READY=1"),
        Err(e) => tracing::warn!(socket = ?socket, error = %e, "cannot notify systemd"),
    }
}

/// Removes what a killed node left in the data dir (temporary state files,
/// import work dirs, unpublished versions, Docker helper tags of this data
/// dir), with one log line naming it. A failure is logged, not fatal: the
/// leftovers only cost disk.
async fn remove_leftovers(data_dir: &Path, import: Option<ImportSinkKind>) {
    let docker = match import {
        // Without Docker (`None` falls back to `dir`) there are no tags.
        Some(ImportSinkKind::Docker) | None => DockerTarget::connect(None)
            .await
            .ok()
            .map(|t| t.with_owner(data_dir)),
        Some(_) => None,
    };
    let temp_files = {
        let dir = data_dir.to_owned();
        tokio::task::spawn_blocking(move || edgeswarm_node::fsutil::remove_temp_files(&dir)).await
    };
    let mut leftovers =
        match edgeswarm_node::import::remove_leftovers(data_dir, docker.as_ref()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leftovers of interrupted imports not removed");
                Default::default()
            }
        };
    match temp_files {
        Ok(Ok(files)) => leftovers.paths.extend(files),
        Ok(Err(e)) => tracing::warn!(error = %e, "temporary files not removed"),
        Err(e) => tracing::warn!(error = %e, "temporary files not removed"),
    }
    if !leftovers.is_empty() {
        tracing::info!(
            paths = ?leftovers.paths,
            docker_helper_tags = ?leftovers.helper_tags,
            "removed leftovers of interrupted imports"
        );
    }
}

fn keygen(out: &Path, json: bool) -> Result<()> {
    let key = PublisherKey::generate(&mut rand::rngs::OsRng);
    let public = out.with_extension(match out.extension() {
        Some(ext) => format!("{}.pub", ext.to_string_lossy()),
        None => "pub".into(),
    });
    write_private(out, key.to_file_contents().as_bytes())?;
    edgeswarm_node::fsutil::write_atomic(&public, key.public().to_file_contents().as_bytes())
        .with_context(|| format!("writing {}", public.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "secret_key": out,
                "public_key": public,
                "public_key_hex": key.public().to_hex(),
            })
        );
        return Ok(());
    }
    println!(
        "wrote secret key {} and public key {}",
        out.display(),
        public.display()
    );
    Ok(())
}

/// Writes a secret file readable by its owner only, refusing to overwrite;
/// after a crash the file is absent or complete.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    edgeswarm_node::fsutil::write_new_atomic(path, bytes, 0o600)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))
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

/// Reads the API token for a mutating request.
fn read_token(client: &ClientArgs) -> Result<String> {
    let path = client.token_file.clone().unwrap_or_else(|| {
        // The node's own data dir variable, when set, names the same dir.
        std::env::var_os("EDGESWARM_DATA_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from)
            .join(edgeswarm_node::api::TOKEN_FILE)
    });
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the node's API token {} (pass the node's <data dir>/api.token with \
             --token-file, as a user who may read it)",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

async fn post_json<B: serde::Serialize, T: for<'de> Deserialize<'de>>(
    client: &ClientArgs,
    path: &str,
    body: &B,
) -> Result<T> {
    let api = &client.api;
    let token = read_token(client)?;
    let response = reqwest::Client::new()
        .post(api_url(api, path))
        .bearer_auth(token)
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

/// What the operator expects a release signed with `deploy --key` to say,
/// beyond the image and selector they typed.
struct Expected {
    locality: Option<String>,
    digest: Option<String>,
}

/// Largest gap between a release's creation time and this clock that
/// `deploy --key` signs: a node that back- or forward-dates a release
/// could make it lose to, or override, other releases.
const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Checks that the release a node prepared is the one the operator asked
/// for, before a publisher key signs it: the node (or whoever answers at
/// `--api`) is not trusted to choose what the key vouches for.
fn check_release(
    release: &Release,
    image: &str,
    select: &[String],
    expect: &Expected,
) -> Result<()> {
    if release.image != image {
        bail!(
            "refusing to sign: the node prepared a release of {:?}, not {image:?}",
            release.image
        );
    }
    let selector = select
        .iter()
        .map(|t| Release::parse_selector_term(t))
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("--select")?;
    if release.selector != selector {
        bail!(
            "refusing to sign: the node prepared selector {:?}, not {selector:?}",
            release.selector
        );
    }
    if let Some(locality) = &expect.locality {
        if &release.locality != locality {
            bail!(
                "refusing to sign: the node prepared a release for locality {:?}, not {locality:?}",
                release.locality
            );
        }
    }
    let pinned = match &expect.digest {
        Some(d) => Some(d.clone()),
        None => edgeswarm_node::registry::Reference::parse(image)
            .ok()
            .and_then(|r| r.digest)
            .map(|d| d.to_string()),
    };
    if let Some(digest) = pinned {
        if release.manifest.to_string() != digest {
            bail!(
                "refusing to sign: the node resolved {image} to manifest {}, not {digest} \
                 (if {digest} is an index, pass its platform manifest with --digest)",
                release.manifest
            );
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if release.created.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        bail!(
            "refusing to sign: the release is dated {} (unix), more than {MAX_CLOCK_SKEW_SECS}s \
             from this clock ({now})",
            release.created
        );
    }
    Ok(())
}

async fn deploy(
    client: &ClientArgs,
    image: String,
    key: Option<&Path>,
    select: Vec<String>,
    expect: &Expected,
) -> Result<()> {
    let request = DeployRequest {
        image: image.clone(),
        selector: select.clone(),
    };
    // With --key: the locality of the release signed, shown with the result.
    let mut signed_for = None;
    let response: DeployResponse = match key {
        None => post_json(client, "/v1/deploy", &request).await?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading publisher key {}", path.display()))?;
            let key = PublisherKey::from_file_contents(&text)
                .with_context(|| format!("{} is not a publisher secret key", path.display()))?;
            let resolved: ResolveResponse = post_json(client, "/v1/resolve", &request).await?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(resolved.release.as_bytes())
                .context("the node's release is not base64")?;
            let release: Release =
                edgeswarm_protocol::encoding::decode("release", &bytes, 64 << 10)
                    .context("the node's release does not decode")?;
            check_release(&release, &image, &select, expect)?;
            signed_for = Some(release.locality.clone());
            let signed = SignedRelease::sign(release, &key);
            let publish = PublishRequest {
                release: base64::engine::general_purpose::STANDARD.encode(signed.encode()),
            };
            post_json(client, "/v1/releases", &publish).await?
        }
    };
    if client.json {
        println!("{}", serde_json::to_string(&response)?);
    } else {
        match &signed_for {
            Some(locality) => println!(
                "release {} (manifest {}, signed for locality {locality})",
                response.release_id, response.manifest
            ),
            None => println!(
                "release {} (manifest {})",
                response.release_id, response.manifest
            ),
        }
    }
    Ok(())
}

async fn status(client: &ClientArgs, watch: bool) -> Result<()> {
    let fetch = || get_json::<serde_json::Value>(&client.api, "/v1/status");
    if !watch {
        let value = fetch().await?;
        if client.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        let view: StatusView = serde_json::from_value(value).context("status shape")?;
        if operator::stdout_is_terminal() {
            for w in &view.this.warnings {
                eprintln!("warning: {w}");
            }
            operator::Bars::new().show_once(&view);
        } else {
            print!("{}", operator::render_plain(&view));
        }
        return Ok(());
    }
    let mut bars = operator::stdout_is_terminal()
        .then(operator::Bars::new)
        .filter(|_| !client.json);
    let mut last_plain = String::new();
    loop {
        let value = tokio::select! {
            v = fetch() => v?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let view: StatusView = serde_json::from_value(value.clone()).context("status shape")?;
        if client.json {
            println!("{}", serde_json::to_string(&value)?);
        } else if let Some(bars) = bars.as_mut() {
            bars.update(&view);
        } else {
            // Plain output: a new block only when something changed.
            let text = operator::render_plain(&view);
            if text != last_plain {
                println!("{text}");
                last_plain = text;
            }
        }
        if let Some(outcome) = operator::settled(&view) {
            if let Some(bars) = bars.as_mut() {
                bars.finish();
            }
            return outcome;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn rm(client: &ClientArgs, image: String, locality: bool, key: Option<&Path>) -> Result<()> {
    let removal = match key {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading publisher key {}", path.display()))?;
            let key = PublisherKey::from_file_contents(&text)
                .with_context(|| format!("{} is not a publisher secret key", path.display()))?;
            let view: StatusView = get_json(&client.api, "/v1/status").await?;
            let removal = edgeswarm_node::daemon::Removal {
                image: image.clone(),
                locality: view.this.locality,
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                // Above every sequence the node holds, so the removal wins
                // over the release it removes.
                seq: view.next_seq,
            };
            let signed = edgeswarm_node::daemon::SignedRemoval::sign(removal, &key);
            Some(base64::engine::general_purpose::STANDARD.encode(signed.encode()))
        }
    };
    let request = edgeswarm_node::api::RemoveRequest {
        image: image.clone(),
        locality,
        removal,
    };
    let response: edgeswarm_node::api::RemoveResponse =
        post_json(client, "/v1/rm", &request).await?;
    let r = &response.report;
    let found = r.unpinned || r.releases_dropped > 0 || r.sink_removed.is_some();
    if client.json {
        println!("{}", serde_json::to_string(&response)?);
    } else {
        print!("{}", operator::render_removal(&response));
    }
    if !found && !locality {
        bail!("{image} is not on this node (see `edgeswarm images`)");
    }
    Ok(())
}

/// Waits until `nodes` nodes (this one included) report the newest
/// release of `image` done; shows progress bars meanwhile on a terminal.
async fn wait_for(client: &ClientArgs, image: &str, nodes: usize, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut bars = (operator::stdout_is_terminal() && !client.json).then(operator::Bars::new);
    loop {
        let view: StatusView = get_json(&client.api, "/v1/status").await?;
        if let Some(bars) = bars.as_mut() {
            bars.update(&view);
        }
        // A redeploy of the same image is a new release: follow the newest.
        let newest = view
            .this
            .releases
            .iter()
            .filter(|r| r.image == image)
            .max_by_key(|r| (r.seq, r.created));
        let Some(mine) = newest else {
            if started.elapsed() > timeout {
                bail!(
                    "no release of {image} seen on this node within {}s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if let Some(e) = &mine.error {
            bail!("release of {image} failed on this node: {e}");
        }
        let release_id = mine.id.clone();
        let done = (mine.state == ReleasePhase::Done) as usize
            + view
                .nodes
                .iter()
                .filter(|n| {
                    n.releases
                        .iter()
                        .any(|r| r.id == release_id && r.state == ReleasePhase::Done)
                })
                .count();
        if done >= nodes {
            if let Some(bars) = bars.as_mut() {
                bars.finish();
            }
            if client.json {
                println!(
                    "{}",
                    serde_json::json!({"image": image, "release_id": release_id, "nodes_done": done})
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
            if let Some(bars) = bars.as_mut() {
                bars.finish();
            }
            bail!(
                "timed out after {}s: {done} of {nodes} nodes have {image}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
