//! The connection's security upgrade: noise, or TLS 1.3 where
//! `EDGESWARM_SECURITY` asks for it and both ends offer it.
//!
//! Every byte between two nodes is encrypted once by the security upgrade
//! (and again by pnet when the locality has a swarm key). Noise's only
//! cipher is ChaCha20-Poly1305; TLS 1.3 also has AES-GCM, which CPUs with
//! AES instructions run several times faster. Measured with ring on this
//! project's 2-core x86-64 test machine (AVX-512, AES-NI, 64 KiB records):
//! ChaCha20-Poly1305 1.42-1.46 GB/s, AES-128-GCM 7.67-7.68 GB/s. There,
//! noise's sealing and opening were 11 % of a node's CPU in a 5-node
//! deploy (`perf`, issue 15), the largest item after sha256.
//!
//! Measured end to end, that gain was small and cost bytes, so noise stays
//! the first choice by default. On the 2-core x86-64 test machine (N = 5,
//! one 46 MB layer, `--import none`, one binary, interleaved;
//! `testnet/results/issue15-tls-2026-12-06/`): 0.346 and 0.356 CPU-s per
//! node with TLS against 0.358 and 0.370 with noise (3-4 % less), but
//! 1.022-1.023x N x image into the node links against 1.018-1.019x
//! (0.4 % more). Since yamux frames fill a noise message
//! ([`YAMUX_FRAME_PAYLOAD`], `testnet/results/issue15-yamux-frames-2026-12-06/`)
//! TLS still costs bytes: 1.017-1.018x against noise's 1.011-1.013x on
//! another machine of the kind (an AMD EPYC; three rounds each, not
//! interleaved with each other; the cause of the difference was not
//! measured). Issue 11's bytes target (<= 1.05x) has less room
//! than the CPU TLS might save is worth.
//!
//! So TLS is opt-in. `EDGESWARM_SECURITY=tls` offers TLS and noise, TLS
//! first (dialing and listening); `auto` does so where the CPU has AES
//! instructions (a Raspberry Pi 4 has none); anything else, or unset,
//! offers noise alone, exactly as nodes did before TLS was offered (one
//! protocol, so multistream-select's `V1Lazy` sends the handshake without
//! waiting a round trip for the listener's confirmation, which two
//! proposals would cost). A connection is TLS when the dialer proposes it
//! first and the listener offers it; otherwise noise, so every mix of
//! settings and versions connects. Inside TLS the cipher suite follows the
//! CPU (`libp2p_tls::has_aes_hardware`, third_party/libp2p-tls/PATCHES.md).

use std::iter;

use futures::future::{BoxFuture, Either};
use futures::{AsyncRead, AsyncWrite, FutureExt as _};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::{noise, tls, PeerId};

/// Noise alone, or TLS and noise, as [`prefer_tls`] says.
#[derive(Clone)]
pub(crate) struct Security {
    /// The TLS 1.3 upgrade (libp2p's TLS spec).
    tls: tls::Config,
    /// The noise XX upgrade.
    noise: noise::Config,
    /// Whether `/tls/1.0.0` is offered (before `/noise`), dialing and
    /// listening.
    tls_first: bool,
}

/// The environment variable that chooses the first proposal: `tls`,
/// `auto` (TLS where the CPU has AES instructions) or `noise` (the
/// default; see the module docs).
pub(crate) const SECURITY_ENV: &str = "EDGESWARM_SECURITY";

/// Whether this node offers TLS (before noise), as [`SECURITY_ENV`] says.
pub(crate) fn prefer_tls() -> bool {
    let setting = std::env::var(SECURITY_ENV).ok();
    if let Some(unknown) = setting
        .as_deref()
        .filter(|v| !matches!(*v, "tls" | "auto" | "noise"))
    {
        // A typo must not pass unseen as the default.
        tracing::warn!(
            value = unknown,
            "{SECURITY_ENV} is not tls, auto or noise; offering noise alone"
        );
    }
    first_choice(setting.as_deref(), tls::has_aes_hardware())
}

/// The most bytes noise seals in one message (libp2p-noise's
/// `MAX_FRAME_LEN`: 65,535 less 1,024 kept for the tag and headroom).
const NOISE_MESSAGE_PAYLOAD: usize = 65_535 - 1_024;
/// A yamux frame's header.
const YAMUX_HEADER: usize = 12;

/// The payload of the yamux data frames a node sends (yamux's
/// `split_send_size`; its default is 16 KiB): a frame with its header
/// fills one noise message. yamux flushes after every frame, so a frame
/// is what the security layer seals at once and one write to the socket;
/// at 16 KiB that was four noise messages (length prefixes, tags, socket
/// writes, and TCP segments cut short at each) where one does. Measured
/// on the 2-core test machine, N = 5, one 46 MB layer, `--import none`,
/// interleaved (`testnet/results/issue15-yamux-frames-2026-12-06/`):
/// non-gateway nodes 0.59-0.65 CPU-s against 0.65-0.76, 8 % fewer TCP
/// segments, 1.011-1.013x N x image into the node links against
/// 1.017-1.018x. TLS gains from it too (a frame is four records there):
/// 1.017-1.018x against 1.024-1.027x with frames of one record each
/// (16,372 bytes), which had been this code's guess for TLS.
pub(crate) const YAMUX_FRAME_PAYLOAD: usize = NOISE_MESSAGE_PAYLOAD - YAMUX_HEADER;

/// TLS first or not, from the setting (if any) and the CPU.
fn first_choice(setting: Option<&str>, aes_hardware: bool) -> bool {
    match setting {
        Some("tls") => true,
        Some("auto") => aes_hardware,
        _ => false,
    }
}

impl Security {
    /// The upgrades for `key`: TLS then noise if `tls_first`, else noise
    /// alone.
    pub(crate) fn new(key: &Keypair, tls_first: bool) -> Result<Self, SecurityError> {
        Ok(Security {
            tls: tls::Config::new(key).map_err(|e| SecurityError::Setup(e.to_string()))?,
            noise: noise::Config::new(key).map_err(|e| SecurityError::Setup(e.to_string()))?,
            tls_first,
        })
    }
}

/// One of the two protocol names, tagged with the upgrade that speaks it.
#[derive(Debug, Clone)]
pub(crate) enum SecurityProtocol {
    /// `/tls/1.0.0`.
    Tls(&'static str),
    /// `/noise`.
    Noise(&'static str),
}

impl AsRef<str> for SecurityProtocol {
    fn as_ref(&self) -> &str {
        match self {
            SecurityProtocol::Tls(name) | SecurityProtocol::Noise(name) => name,
        }
    }
}

/// Why a connection's security upgrade failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecurityError {
    /// The upgrades could not be built (a certificate for TLS, noise's
    /// static key).
    #[error("security upgrade setup: {0}")]
    Setup(String),
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(#[from] tls::UpgradeError),
    /// The noise handshake failed.
    #[error("noise: {0}")]
    Noise(#[from] noise::Error),
}

impl UpgradeInfo for Security {
    type Info = SecurityProtocol;
    type InfoIter =
        iter::Chain<iter::Once<SecurityProtocol>, std::option::IntoIter<SecurityProtocol>>;

    fn protocol_info(&self) -> Self::InfoIter {
        let tls = self.tls.protocol_info().next().map(SecurityProtocol::Tls);
        let noise = self
            .noise
            .protocol_info()
            .next()
            .map(SecurityProtocol::Noise);
        // Each upgrade names exactly one protocol.
        let (tls, noise) = (
            tls.unwrap_or(SecurityProtocol::Tls("/tls/1.0.0")),
            noise.unwrap_or(SecurityProtocol::Noise("/noise")),
        );
        if self.tls_first {
            iter::once(tls).chain(Some(noise))
        } else {
            iter::once(noise).chain(None)
        }
    }
}

/// The secured connection: TLS's stream or noise's.
pub(crate) type Secured<C> = Either<tls::TlsStream<C>, noise::Output<C>>;

/// A finished TLS handshake, as the upgrade's output.
fn tls_secured<C>(
    result: Result<(PeerId, tls::TlsStream<C>), tls::UpgradeError>,
) -> Result<(PeerId, Secured<C>), SecurityError> {
    let (peer, stream) = result?;
    Ok((peer, Either::Left(stream)))
}

/// A finished noise handshake, as the upgrade's output.
fn noise_secured<C>(
    result: Result<(PeerId, noise::Output<C>), noise::Error>,
) -> Result<(PeerId, Secured<C>), SecurityError> {
    let (peer, stream) = result?;
    Ok((peer, Either::Right(stream)))
}

impl<C> InboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        match info {
            SecurityProtocol::Tls(name) => self
                .tls
                .upgrade_inbound(socket, name)
                .map(tls_secured)
                .boxed(),
            SecurityProtocol::Noise(name) => self
                .noise
                .upgrade_inbound(socket, name)
                .map(noise_secured)
                .boxed(),
        }
    }
}

impl<C> OutboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        match info {
            SecurityProtocol::Tls(name) => self
                .tls
                .upgrade_outbound(socket, name)
                .map(tls_secured)
                .boxed(),
            SecurityProtocol::Noise(name) => self
                .noise
                .upgrade_outbound(socket, name)
                .map(noise_secured)
                .boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use libp2p::core::transport::memory::{Channel, MemoryTransport};
    use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
    use libp2p::core::{Endpoint, Transport as _};
    use libp2p::Multiaddr;
    use multistream_select::{dialer_select_proto, listener_select_proto, Version};

    use super::*;

    /// Which upgrade secured a connection.
    #[derive(Debug, PartialEq, Clone, Copy)]
    enum Used {
        Tls,
        Noise,
    }

    /// What a node offers.
    enum Offer {
        /// Both upgrades, in this build's way ([`Security`]).
        Both(Box<Security>),
        /// A node built before TLS was offered: noise only.
        NoiseOnly(Box<noise::Config>),
    }

    fn used<C>(secured: &Secured<C>) -> Used {
        match secured {
            Either::Left(_) => Used::Tls,
            Either::Right(_) => Used::Noise,
        }
    }

    /// A secured connection, kept open until both sides are done (a TLS
    /// server still flushes its session tickets after the client is done).
    type Open = Box<dyn Send>;

    /// One side's half of connection setup, as libp2p's transport upgrade
    /// does it: multistream-select over `io`, then the chosen upgrade.
    async fn handshake(offer: Offer, io: Channel<Vec<u8>>, dialer: bool) -> (PeerId, Used, Open) {
        match offer {
            Offer::Both(security) => {
                let security = *security;
                let names: Vec<SecurityProtocol> = security.protocol_info().collect();
                let (name, io) = if dialer {
                    dialer_select_proto(io, names, Version::V1).await
                } else {
                    listener_select_proto(io, names).await
                }
                .expect("negotiation");
                let (peer, secured) = if dialer {
                    security.upgrade_outbound(io, name).await
                } else {
                    security.upgrade_inbound(io, name).await
                }
                .expect("upgrade");
                (peer, used(&secured), Box::new(secured))
            }
            Offer::NoiseOnly(noise) => {
                let noise = *noise;
                let names: Vec<&'static str> = noise.protocol_info().collect();
                let (name, io) = if dialer {
                    dialer_select_proto(io, names, Version::V1).await
                } else {
                    listener_select_proto(io, names).await
                }
                .expect("negotiation");
                let (peer, secured) = if dialer {
                    noise.upgrade_outbound(io, name).await
                } else {
                    noise.upgrade_inbound(io, name).await
                }
                .expect("upgrade");
                (peer, Used::Noise, Box::new(secured))
            }
        }
    }

    /// Connects a dialer offering `dialer` to a listener offering
    /// `listener` over an in-memory transport; returns what each ended with.
    async fn connect(
        dialer: Offer,
        listener: Offer,
        port: u64,
    ) -> ((PeerId, Used), (PeerId, Used)) {
        let addr: Multiaddr = format!("/memory/{port}").parse().expect("address");
        let mut server = MemoryTransport::default().boxed();
        server
            .listen_on(ListenerId::next(), addr.clone())
            .expect("listen");
        let dial = MemoryTransport::default()
            .boxed()
            .dial(
                addr,
                DialOpts {
                    role: Endpoint::Dialer,
                    port_use: PortUse::New,
                },
            )
            .expect("dial");
        let accept = async {
            loop {
                if let TransportEvent::Incoming { upgrade, .. } = server.select_next_some().await {
                    return upgrade.await.expect("inbound connection");
                }
            }
        };
        let (out, inbound) = futures::join!(dial, accept);
        let ((a, a_used, _a), (b, b_used, _b)) = futures::join!(
            handshake(dialer, out.expect("outbound connection"), true),
            handshake(listener, inbound, false)
        );
        ((a, a_used), (b, b_used))
    }

    fn both(key: &Keypair, tls_first: bool) -> Offer {
        Offer::Both(Box::new(Security::new(key, tls_first).expect("security")))
    }

    fn noise_only(key: &Keypair) -> Offer {
        Offer::NoiseOnly(Box::new(noise::Config::new(key).expect("noise")))
    }

    #[tokio::test]
    async fn tls_secures_the_connection_only_when_both_sides_offer_it() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        for tls_first in [true, false] {
            for listener_tls_first in [true, false] {
                let expected = if tls_first && listener_tls_first {
                    Used::Tls
                } else {
                    Used::Noise
                };
                let port = 40_000 + u64::from(tls_first) * 2 + u64::from(listener_tls_first);
                let ((seen_by_dialer, dialer_used), (seen_by_listener, listener_used)) =
                    connect(both(&a, tls_first), both(&b, listener_tls_first), port).await;
                assert_eq!(dialer_used, expected);
                assert_eq!(listener_used, expected);
                assert_eq!(seen_by_dialer, b.public().to_peer_id());
                assert_eq!(seen_by_listener, a.public().to_peer_id());
            }
        }
    }

    #[tokio::test]
    async fn a_node_that_speaks_only_noise_still_connects_both_ways() {
        let (new, old) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let ((peer, used), (_, old_used)) =
            connect(both(&new, true), noise_only(&old), 40_100).await;
        assert_eq!(
            (peer, used, old_used),
            (old.public().to_peer_id(), Used::Noise, Used::Noise)
        );
        let ((peer, _), (_, used)) = connect(noise_only(&old), both(&new, true), 40_101).await;
        assert_eq!((peer, used), (new.public().to_peer_id(), Used::Noise));
    }

    /// Records the size of every write that reaches the socket.
    struct Recorder {
        inner: tokio_util::compat::Compat<tokio::io::DuplexStream>,
        writes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
            if let std::task::Poll::Ready(Ok(n)) = &written {
                self.writes.lock().expect("writes").push(*n);
            }
            written
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_close(cx)
        }
    }

    /// Sends `data` on one yamux stream over noise, the sender's frames
    /// `split` bytes; returns what arrived and the sizes of the sender's
    /// socket writes after the handshake.
    async fn over_noise(data: Vec<u8>, split: usize) -> (Vec<u8>, Vec<usize>) {
        use futures::future::poll_fn;
        use futures::{AsyncReadExt as _, AsyncWriteExt as _};
        use libp2p::core::muxing::StreamMuxerExt as _;
        use tokio_util::compat::TokioAsyncReadCompatExt as _;

        // Room for all of `data`: no write is ever cut short, so a write
        // holds whole noise messages.
        let (a, b) = tokio::io::duplex(data.len() * 2);
        let writes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Recorder {
            inner: a.compat(),
            writes: writes.clone(),
        };
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (dialed, accepted) = futures::join!(
            noise::Config::new(&ka)
                .expect("noise")
                .upgrade_outbound(recorded, "/noise"),
            noise::Config::new(&kb)
                .expect("noise")
                .upgrade_inbound(b.compat(), "/noise"),
        );
        let ((_, dialed), (_, accepted)) = (dialed.expect("dial"), accepted.expect("accept"));
        writes.lock().expect("writes").clear();
        let mut config = libp2p::yamux::Config::default();
        config.set_split_send_size(split);
        let mut sender = config
            .upgrade_outbound(dialed, "/yamux/1.0.0")
            .await
            .expect("yamux");
        let mut receiver = libp2p::yamux::Config::default()
            .upgrade_inbound(accepted, "/yamux/1.0.0")
            .await
            .expect("yamux");
        let reading = tokio::spawn(async move {
            let mut stream = poll_fn(|cx| receiver.poll_inbound_unpin(cx))
                .await
                .expect("inbound");
            let drive = tokio::spawn(async move {
                while poll_fn(|cx| receiver.poll_unpin(cx)).await.is_ok() {}
            });
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.expect("read");
            drive.abort();
            got
        });
        let mut stream = poll_fn(|cx| sender.poll_outbound_unpin(cx))
            .await
            .expect("outbound");
        let drive =
            tokio::spawn(async move { while poll_fn(|cx| sender.poll_unpin(cx)).await.is_ok() {} });
        stream.write_all(&data).await.expect("write");
        stream.close().await.expect("close");
        let got = reading.await.expect("reader");
        drive.abort();
        let writes = writes.lock().expect("writes").clone();
        (got, writes)
    }

    /// With noise, a data frame of [`YAMUX_FRAME_PAYLOAD`] fills one noise
    /// message exactly: the socket sees full messages (2-byte length,
    /// 64,511 bytes sealed, 16-byte tag), where yamux's 16 KiB frames
    /// made four, and one byte more would spill each frame into a second
    /// message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_yamux_frame_fills_one_noise_message() {
        let sent: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let full_message = 2 + NOISE_MESSAGE_PAYLOAD + 16;
        let (got, writes) = over_noise(sent.clone(), YAMUX_FRAME_PAYLOAD).await;
        assert!(got == sent, "every byte arrives in order");
        let full = writes.iter().filter(|&&n| n == full_message).count();
        assert_eq!(writes.iter().copied().max(), Some(full_message));
        // Most bytes went in full messages (a frame is shorter where the
        // stream's send window ran out).
        assert!(full * NOISE_MESSAGE_PAYLOAD >= sent.len() / 2, "{writes:?}");

        let (got, writes) = over_noise(sent.clone(), 16 << 10).await;
        assert!(got == sent);
        assert_eq!(
            writes.iter().copied().max(),
            Some(2 + YAMUX_HEADER + (16 << 10) + 16)
        );

        let (got, writes) = over_noise(sent.clone(), YAMUX_FRAME_PAYLOAD + 1).await;
        assert!(got == sent);
        // Noise writes the full message and the one the last byte spilled
        // into at once.
        assert!(
            writes.iter().any(|&n| n == full_message + 2 + 1 + 16),
            "the frame's last byte spilled into a second message: {writes:?}"
        );
    }

    #[test]
    fn the_offer_follows_the_setting() {
        let key = Keypair::generate_ed25519();
        let names = |tls_first| -> Vec<String> {
            Security::new(&key, tls_first)
                .expect("security")
                .protocol_info()
                .map(|p| p.as_ref().to_string())
                .collect()
        };
        assert_eq!(names(true), ["/tls/1.0.0", "/noise"]);
        assert_eq!(names(false), ["/noise"]);
        // Unset (or unknown): noise, measured the better default; `auto`
        // follows the CPU; `tls` and `noise` win either way.
        for aes in [true, false] {
            assert!(!first_choice(None, aes));
            assert!(!first_choice(Some("chacha"), aes));
            assert_eq!(first_choice(Some("auto"), aes), aes);
            assert!(first_choice(Some("tls"), aes));
            assert!(!first_choice(Some("noise"), aes));
        }
    }
}
