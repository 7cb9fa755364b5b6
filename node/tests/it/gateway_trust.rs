//! Who may pull a release for the locality, against a real
//! `docker-registry`, real daemons and real hostile libp2p peers: a
//! gateway-capable node that refuses a release is passed over, a Sybil
//! gateway outside `--trust-gateway` is never elected, and a false claim
//! to hold a layer does not make the gateway skip it.

use std::time::{Duration, Instant};

use crate::support::daemon::*;
use crate::support::{init_tracing, push};
use edgeswarm_node::daemon::Daemon;
use edgeswarm_node::registry::testing::{build_image, BuiltImage, ImageSpec, TestRegistry};
use edgeswarm_node::swarm::behaviour::{
    build_swarm, gossip_key, seal_gossip, NetConfig, Protocols, Topic,
};
use edgeswarm_node::swarm::keys;
use edgeswarm_protocol::election::weight;
use edgeswarm_protocol::wire::{
    Availability, AvailabilityBatch, AvailabilityEntry, GossipMessage, NodeStatus, PeerRole,
    ReleaseProgress, ReleaseState,
};
use edgeswarm_protocol::Digest;
use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Writes a fresh identity into `dir` (where the daemon loads it from)
/// until it ranks above every one of `others` in the election of the
/// release of `manifest`; returns its peer id.
fn identity_above(dir: &std::path::Path, manifest: &Digest, others: &[PeerId]) -> PeerId {
    let path = dir.join(keys::IDENTITY_FILE);
    loop {
        let _ = std::fs::remove_file(&path);
        let id = keys::load_or_create_identity(&path)
            .unwrap()
            .public()
            .to_peer_id();
        if beats(&id, manifest, others) {
            return id;
        }
    }
}

/// Whether `id` ranks above every one of `others` for `manifest`.
fn beats(id: &PeerId, manifest: &Digest, others: &[PeerId]) -> bool {
    let mine = weight(manifest, &id.to_bytes());
    others
        .iter()
        .all(|o| weight(manifest, &o.to_bytes()) < mine)
}

/// The identity a daemon started in `dir` will have.
fn identity(dir: &std::path::Path) -> PeerId {
    keys::load_or_create_identity(&dir.join(keys::IDENTITY_FILE))
        .unwrap()
        .public()
        .to_peer_id()
}

/// A hostile member of locality `locality`: a real libp2p peer speaking
/// our protocols with identity `key`, connected to `target`, publishing
/// the messages `messages` holds every 300 ms (a live member's status and
/// availability), and serving nothing.
fn hostile_member(
    locality: &str,
    key: Keypair,
    target: Multiaddr,
    messages: watch::Receiver<Vec<(Topic, Vec<u8>)>>,
) -> JoinHandle<()> {
    let config = NetConfig {
        protocols: Protocols::new(locality).unwrap(),
        swarm_key: None,
        mdns: false,
        max_connections: 16,
        idle_timeout: Duration::from_secs(60),
    };
    // It seals its messages with its own identity, as any member does.
    let seal_key = gossip_key(&key).unwrap();
    let mut swarm = build_swarm(key, &config).unwrap();
    swarm.dial(target).unwrap();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = swarm.select_next_some() => {}
                _ = tick.tick() => {
                    for (topic, bytes) in messages.borrow().iter() {
                        seq += 1;
                        let sealed = seal_gossip(&seal_key, &config.protocols, *topic, seq, bytes.clone());
                        let topic = config.protocols.topic(*topic);
                        let _ = swarm.behaviour_mut().gossipsub.publish(topic, sealed);
                    }
                }
            }
        }
    })
}

/// A status report of a gateway-capable node that accepted `releases`.
fn gateway_status(releases: &[Digest]) -> Vec<u8> {
    GossipMessage::Status(NodeStatus {
        role: PeerRole::Gateway,
        gateway_capable: true,
        timestamp_ms: 0,
        releases: releases
            .iter()
            .map(|id| ReleaseProgress {
                release_id: *id,
                state: ReleaseState::Fetching,
                bytes_total: 0,
                bytes_done: 0,
                bytes_from_cloud: 0,
                bytes_from_peers: 0,
                error: None,
                waiting: None,
            })
            .collect(),
        desired: None,
    })
    .encode()
}

async fn image(registry: &TestRegistry, repo: &str) -> (BuiltImage, String) {
    let build = tempfile::tempdir().unwrap();
    let image = build_image(ImageSpec::realistic(2 << 20, repo), build.path())
        .await
        .unwrap();
    let reference = push(registry, repo, "v1", &image).await;
    (image, reference)
}

/// The gateway `daemon` elected for its release of `image`.
async fn gateway_seen_by(daemon: &Daemon, image: &str) -> Option<String> {
    release_of(daemon, image).await.and_then(|r| r.gateway)
}

/// A gateway-capable node that trusts no publisher, ranked first in the
/// election of the release, refuses it: the accepting gateway is elected
/// instead, and the release completes on the accepting nodes promptly
/// (before, the refusing node was elected and the release never moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_that_refuses_a_release_is_not_elected_and_the_release_completes() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (built, reference) = image(&registry, "refused/app").await;
    let manifest = built.manifest_digest;
    let mut ids = Vec::new();
    // 0: an accepting gateway; 1: a gateway that refuses every release,
    // ranked above 0 for this one; 2: an accepting node.
    let locality = Locality::start_with("refuse", 3, |i, c| {
        c.gateway = i < 2;
        let id = if i == 1 {
            c.allow_any_publisher = false;
            identity_above(&c.data_dir, &manifest, &ids)
        } else {
            identity(&c.data_dir)
        };
        ids.push(id);
    })
    .await;
    assert!(beats(&ids[1], &manifest, &ids[..1]));
    let (lab, closed, node) = (
        &locality.daemons[0],
        &locality.daemons[1],
        &locality.daemons[2],
    );
    let signed = lab.prepare_release(&reference, vec![], None).await.unwrap();
    let started = Instant::now();
    lab.publish_release(signed).await.unwrap();
    let accepting = [lab.clone(), node.clone()];
    wait_done(&accepting, &reference, Duration::from_secs(60)).await;
    let took = started.elapsed();
    println!(
        "refusing gateway ranked first: release done on the accepting nodes in {:.1}s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    for d in &accepting {
        assert_eq!(
            gateway_seen_by(d, &reference).await,
            Some(ids[0].to_string()),
            "the accepting gateway pulled it"
        );
    }
    // The refusing node said so, and tracks nothing.
    let status = closed.status().await;
    assert!(
        status.this.releases.is_empty(),
        "{:?}",
        status.this.releases
    );
    assert!(
        status
            .refused
            .iter()
            .any(|r| r.reason.contains("trusts no publisher")),
        "{:?}",
        status.refused
    );
    assert_eq!(closed.registry().unwrap().stats().bytes_pulled, 0);
    locality.shutdown().await;
}

/// A Sybil member that claims to be a gateway that accepted the release,
/// with an identity ground to win its election, is not among the
/// `--trust-gateway` peers: it is never elected, and the trusted gateway
/// pulls the release for the locality.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sybil_gateway_outside_trust_gateway_is_never_elected() {
    let took = sybil_gateway("sybil", true).await;
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// Without `--trust-gateway` (labs), the same Sybil wins the election and
/// never pulls: silent, it is passed over after `GATEWAY_SILENCE` (10 s),
/// and the honest gateway pulls the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_elected_gateway_is_replaced_within_a_bounded_time() {
    let took = sybil_gateway("silent", false).await;
    assert!(
        took >= Duration::from_secs(10),
        "the sybil was not elected? {took:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// A locality of an honest gateway and a node (both listing the gateway
/// with `--trust-gateway` when `trusted`), and a Sybil member ranked first
/// in the election of the release that claims it accepted it; returns how
/// long the release took to complete on both nodes, the honest gateway
/// having pulled it.
async fn sybil_gateway(name: &str, trusted: bool) -> Duration {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (built, reference) = image(&registry, &format!("{name}/app")).await;
    let manifest = built.manifest_digest;
    let mut honest = None;
    let locality = Locality::start_with(name, 2, |i, c| {
        c.gateway = i == 0;
        let gateway = *honest.get_or_insert_with(|| identity(&c.data_dir));
        if trusted {
            c.trusted_gateways = vec![gateway];
        }
    })
    .await;
    let gateway = honest.unwrap();
    let (a, node) = (&locality.daemons[0], &locality.daemons[1]);

    let key = std::iter::repeat_with(Keypair::generate_ed25519)
        .find(|k| beats(&k.public().to_peer_id(), &manifest, &[gateway]))
        .unwrap();
    let sybil = key.public().to_peer_id();
    let (claims, rx) = watch::channel(vec![(Topic::Status, gateway_status(&[]))]);
    let attacker = hostile_member(
        name,
        key,
        a.swarm().listen_addrs().await.unwrap()[0].clone(),
        rx,
    );
    crate::support::eventually("the sybil is seen", Duration::from_secs(20), async || {
        let nodes = node.status().await.nodes;
        nodes
            .iter()
            .any(|p| p.peer_id == sybil.to_string() && p.gateway_capable)
            .then_some(())
            .ok_or(format!("{} peers", nodes.len()))
    })
    .await;

    // It claims the release before anyone else has heard of it.
    let signed = a.prepare_release(&reference, vec![], None).await.unwrap();
    claims
        .send(vec![(
            Topic::Status,
            gateway_status(&[signed.release_id()]),
        )])
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    a.publish_release(signed).await.unwrap();
    let both = [a.clone(), node.clone()];
    wait_done(&both, &reference, Duration::from_secs(60)).await;
    let took = started.elapsed();
    println!(
        "sybil gateway ranked first, trust-gateway {trusted}: done in {:.1}s",
        took.as_secs_f64()
    );
    for d in &both {
        assert_eq!(
            gateway_seen_by(d, &reference).await,
            Some(gateway.to_string())
        );
    }
    assert!(a.registry().unwrap().stats().bytes_pulled >= built.layers_size());
    attacker.abort();
    locality.shutdown().await;
    took
}

/// A member announces that it holds every layer of the image complete,
/// and serves none of them: the gateway asks it for a layer's chunk map,
/// gets none, and pulls the layers from the registry; the release
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_false_claim_to_hold_a_layer_does_not_make_the_gateway_skip_it() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    let (built, reference) = image(&registry, "claims/app").await;
    let locality = Locality::start("claims", 1, 2).await;
    let (a, node) = (&locality.daemons[0], &locality.daemons[1]);

    let claim = AvailabilityBatch {
        entries: built
            .layers
            .iter()
            .map(|l| AvailabilityEntry {
                blob: l.digest,
                availability: Availability::Complete,
            })
            .collect(),
    };
    let status = GossipMessage::Status(NodeStatus {
        role: PeerRole::Node,
        gateway_capable: false,
        timestamp_ms: 0,
        releases: Vec::new(),
        desired: None,
    })
    .encode();
    let (_claims, rx) = watch::channel(vec![
        (Topic::Status, status),
        (
            Topic::Availability,
            GossipMessage::Availability(claim).encode(),
        ),
    ]);
    let key = Keypair::generate_ed25519();
    let liar = key.public().to_peer_id();
    let attacker = hostile_member(
        "claims",
        key,
        a.swarm().listen_addrs().await.unwrap()[0].clone(),
        rx,
    );
    crate::support::eventually("the liar is seen", Duration::from_secs(20), async || {
        let nodes = a.status().await.nodes;
        nodes
            .iter()
            .any(|p| p.peer_id == liar.to_string() && !p.gone)
            .then_some(())
            .ok_or(format!("{} peers", nodes.len()))
    })
    .await;
    // Its availability is on its way with its status.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let signed = a.prepare_release(&reference, vec![], None).await.unwrap();
    let started = Instant::now();
    a.publish_release(signed).await.unwrap();
    let both = [a.clone(), node.clone()];
    wait_done(&both, &reference, Duration::from_secs(60)).await;
    println!(
        "false availability: release done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        a.registry().unwrap().stats().bytes_pulled >= built.layers_size(),
        "a layer was skipped"
    );
    attacker.abort();
    locality.shutdown().await;
}

/// A member that holds the real chunk map of every layer (maps are public
/// in the locality) but none of their data, and announces them complete:
/// it serves the maps, but not the random chunk the gateway asks it for,
/// so the gateway pulls the layers from the registry; the release
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_backed_by_the_map_alone_does_not_make_the_gateway_skip_a_layer() {
    init_tracing();
    let registry = TestRegistry::start().await.unwrap();
    // Built here: the layer files are read below.
    let build = tempfile::tempdir().unwrap();
    let built = build_image(ImageSpec::realistic(2 << 20, "maponly"), build.path())
        .await
        .unwrap();
    let reference = push(&registry, "maponly/app", "v1", &built).await;
    let locality = Locality::start("maponly", 1, 2).await;
    let (a, node) = (&locality.daemons[0], &locality.daemons[1]);

    // A real node of the locality whose store holds the layers' maps only.
    let dir = tempfile::tempdir().unwrap();
    let liar = crate::support::swarm::start(
        dir.path(),
        crate::support::swarm::config(
            dir.path(),
            "maponly",
            &[a.swarm().listen_addrs().await.unwrap()[0].clone()],
        ),
    )
    .await;
    let chunk = edgeswarm_protocol::ChunkSize::new(256 << 10).unwrap();
    for layer in &built.layers {
        let bytes = std::fs::read(&layer.path).unwrap();
        let map =
            edgeswarm_protocol::ChunkMap::from_bytes(&bytes, chunk.for_blob(layer.size).unwrap());
        liar.store.put_chunk_map(layer.digest, &map).await.unwrap();
        assert!(!liar.store.is_complete(&layer.digest));
    }
    let claim = GossipMessage::Availability(AvailabilityBatch {
        entries: built
            .layers
            .iter()
            .map(|l| AvailabilityEntry {
                blob: l.digest,
                availability: Availability::Complete,
            })
            .collect(),
    })
    .encode();
    let client = liar.client.clone();
    let claims = tokio::spawn(async move {
        loop {
            let status = GossipMessage::Status(NodeStatus {
                role: PeerRole::Node,
                gateway_capable: false,
                timestamp_ms: rand::random(),
                releases: Vec::new(),
                desired: None,
            })
            .encode();
            let _ = client.publish(Topic::Status, status).await;
            let _ = client.publish(Topic::Availability, claim.clone()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let liar_id = liar.client.local_peer_id().to_string();
    crate::support::eventually("the liar is seen", Duration::from_secs(20), async || {
        let nodes = a.status().await.nodes;
        nodes
            .iter()
            .any(|p| p.peer_id == liar_id && !p.gone)
            .then_some(())
            .ok_or(format!("{} peers", nodes.len()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let signed = a.prepare_release(&reference, vec![], None).await.unwrap();
    a.publish_release(signed).await.unwrap();
    let both = [a.clone(), node.clone()];
    wait_done(&both, &reference, Duration::from_secs(60)).await;
    assert!(
        a.registry().unwrap().stats().bytes_pulled >= built.layers_size(),
        "a layer was skipped"
    );
    claims.abort();
    liar.stop().await;
    locality.shutdown().await;
}
