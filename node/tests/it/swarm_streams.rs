//! A burst of inbound chunk streams waits for the accepting task instead of
//! being dropped: the vendored libp2p-stream queues them (see
//! third_party/libp2p-stream/PATCHES.md). Upstream keeps one, so every
//! peer opening its sessions and chunk-map asks as a release begins had
//! all but one of its streams dropped by a busy node.

use std::collections::HashSet;
use std::time::Duration;

use edgeswarm_node::swarm::behaviour::{build_swarm, NetConfig, Protocols};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::identity::Keypair;
use libp2p::swarm::SwarmEvent;

use crate::support::init_tracing;

fn net_config() -> NetConfig {
    NetConfig {
        protocols: Protocols::new("lab").unwrap(),
        swarm_key: None,
        mdns: false,
        max_connections: 16,
        idle_timeout: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_inbound_streams_is_queued_until_accepted() {
    init_tracing();
    // More than one (upstream's queue), fewer than the queue's bound.
    let burst: usize = 48;
    const _: () = assert!(48 < libp2p_stream::INBOUND_STREAMS_QUEUED);
    let chunks = net_config().protocols.chunks;

    let mut server = build_swarm(Keypair::generate_ed25519(), &net_config()).unwrap();
    let server_id = *server.local_peer_id();
    let mut incoming = server
        .behaviour()
        .stream
        .new_control()
        .accept(chunks.clone())
        .unwrap();
    server
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });

    let mut client = build_swarm(Keypair::generate_ed25519(), &net_config()).unwrap();
    let client_id = *client.local_peer_id();
    let control = client.behaviour().stream.new_control();
    client.dial(addr).unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                client.select_next_some().await
            {
                if peer_id == server_id {
                    return;
                }
            }
        }
    })
    .await
    .expect("the client never connected");
    let client_task = tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });

    // The whole burst is opened, and each stream names itself, while
    // nothing accepts.
    let opens = (0..burst).map(|_| {
        let mut control = control.clone();
        let chunks = chunks.clone();
        async move { control.open_stream(server_id, chunks).await }
    });
    let opened = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(opens))
        .await
        .expect("opening the burst timed out");
    let mut streams = Vec::new();
    for (i, stream) in opened.into_iter().enumerate() {
        let mut stream = stream.expect("open failed");
        // A dropped stream may fail here; the accept side below tells.
        let _ = stream.write_all(&[i as u8]).await;
        let _ = stream.flush().await;
        streams.push(stream);
    }
    // Time for the server's swarm task to hand every stream over (then,
    // with one slot, all but one would be gone).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut named = HashSet::new();
    while named.len() < burst {
        let (peer, mut stream) = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {burst} streams were accepted; the rest were dropped",
                    named.len()
                )
            })
            .expect("accepting ended");
        assert_eq!(peer, client_id);
        let mut name = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut name))
            .await
            .expect("a queued stream's first byte never came")
            .expect("a queued stream was closed");
        assert!(named.insert(name[0]), "stream {} accepted twice", name[0]);
    }
    assert_eq!(named.len(), burst);
    drop(streams);
    server_task.abort();
    client_task.abort();
}
