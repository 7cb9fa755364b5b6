// Copyright 2021 Parity Technologies (UK) Ltd.
// Copyright 2022 Protocol Labs.
//
// Permission is hereby granted, free of charge, to any person obtaining a
// copy of this software and associated documentation files (the "Software"),
// to deal in the Software without restriction, including without limitation
// the rights to use, copy, modify, merge, publish, distribute, sublicense,
// and/or sell copies of the Software, and to permit persons to whom the
// Software is furnished to do so, subject to the following conditions:
//
// The above copyright notice and this permission notice shall be included in
// all copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
// OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
// FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
// AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
// LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
// FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
// DEALINGS IN THE SOFTWARE.

//! TLS configuration based on libp2p TLS specs.
//!
//! See <https://github.com/libp2p/specs/blob/master/tls/tls.md>.

#![cfg_attr(docsrs, feature(doc_cfg, doc_auto_cfg))]

pub mod certificate;
mod upgrade;
mod verifier;

use std::sync::Arc;

use certificate::AlwaysResolvesCert;
pub use futures_rustls::TlsStream;
use libp2p_identity::{Keypair, PeerId};
pub use upgrade::{Config, UpgradeError};

const P2P_ALPN: [u8; 6] = *b"libp2p";

/// Create a TLS client configuration for libp2p.
pub fn make_client_config(
    keypair: &Keypair,
    remote_peer_id: Option<PeerId>,
) -> Result<rustls::ClientConfig, certificate::GenError> {
    let (certificate, private_key) = certificate::generate(keypair)?;

    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = verifier::cipher_suites();

    let cert_resolver = Arc::new(
        AlwaysResolvesCert::new(certificate, &private_key)
            .expect("Client cert key DER is valid; qed"),
    );

    let mut crypto = rustls::ClientConfig::builder_with_provider(provider.into())
        .with_protocol_versions(verifier::PROTOCOL_VERSIONS)
        .expect("Cipher suites and kx groups are configured; qed")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            verifier::Libp2pCertificateVerifier::with_remote_peer_id(remote_peer_id),
        ))
        .with_client_cert_resolver(cert_resolver);
    crypto.alpn_protocols = vec![P2P_ALPN.to_vec()];
    crypto.key_log = Arc::new(rustls::KeyLogFile::new());

    Ok(crypto)
}

/// Create a TLS server configuration for libp2p.
pub fn make_server_config(
    keypair: &Keypair,
) -> Result<rustls::ServerConfig, certificate::GenError> {
    let (certificate, private_key) = certificate::generate(keypair)?;

    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = verifier::cipher_suites();

    let cert_resolver = Arc::new(
        AlwaysResolvesCert::new(certificate, &private_key)
            .expect("Server cert key DER is valid; qed"),
    );

    let mut crypto = rustls::ServerConfig::builder_with_provider(provider.into())
        .with_protocol_versions(verifier::PROTOCOL_VERSIONS)
        .expect("Cipher suites and kx groups are configured; qed")
        .with_client_cert_verifier(Arc::new(verifier::Libp2pCertificateVerifier::new()))
        .with_cert_resolver(cert_resolver);
    crypto.alpn_protocols = vec![P2P_ALPN.to_vec()];
    crypto.key_log = Arc::new(rustls::KeyLogFile::new());
    // A server without AES instructions picks ChaCha20-Poly1305 even when
    // the client (with them) lists AES-GCM first: software AES costs it
    // more than ChaCha20 costs the client. With them, the client decides.
    crypto.ignore_client_order = !has_aes_hardware();

    Ok(crypto)
}

/// Whether this CPU has the instructions that make AES-GCM fast (AES
/// rounds and carry-less multiply): then AES-128-GCM is the preferred
/// cipher suite (about 5x the throughput of ChaCha20-Poly1305 with ring on
/// an x86-64 server with AVX-512, see PATCHES.md), otherwise
/// ChaCha20-Poly1305 (a Raspberry Pi 4's Cortex-A72 has no AES
/// instructions, and software AES there is slower than ChaCha20).
pub fn has_aes_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        // Rust's "aes" on aarch64 covers the AES and PMULL instructions.
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use rustls::{CipherSuite, NamedGroup};

    use super::*;

    #[test]
    fn key_exchange_prefers_x25519() {
        let keypair = Keypair::generate_ed25519();
        let config = make_client_config(&keypair, None).unwrap();

        assert_eq!(
            config.crypto_provider().kx_groups[0].name(),
            NamedGroup::X25519
        );
    }

    /// Runs a whole TLS handshake between `client` and `server` in memory
    /// and returns the cipher suite both ended with.
    fn negotiate(client: rustls::ClientConfig, server: rustls::ServerConfig) -> CipherSuite {
        use rustls::pki_types::ServerName;
        let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
            if !c.is_handshaking() && !s.is_handshaking() {
                let suite = c.negotiated_cipher_suite().unwrap().suite();
                assert_eq!(Some(suite), s.negotiated_cipher_suite().map(|s| s.suite()));
                return suite;
            }
        }
        panic!("the handshake did not complete in 10 round trips");
    }

    #[test]
    fn the_suite_follows_the_cpu() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let suite = negotiate(
            make_client_config(&a, None).unwrap(),
            make_server_config(&b).unwrap(),
        );
        let expected = if has_aes_hardware() {
            CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(suite, expected);
    }

    #[test]
    fn a_server_without_aes_instructions_overrides_the_client() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        // A client that prefers AES-GCM (as one with AES instructions does).
        let mut client = make_client_config(&a, None).unwrap();
        let mut provider = (**client.crypto_provider()).clone();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() == CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        client = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(verifier::PROTOCOL_VERSIONS)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                verifier::Libp2pCertificateVerifier::with_remote_peer_id(None),
            ))
            .with_client_cert_resolver(client.client_auth_cert_resolver.clone());
        client.alpn_protocols = vec![P2P_ALPN.to_vec()];
        // A server that behaves as one without AES instructions.
        let mut server = make_server_config(&b).unwrap();
        let mut provider = (**server.crypto_provider()).clone();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let resolver = server.cert_resolver.clone();
        server = rustls::ServerConfig::builder_with_provider(provider.into())
            .with_protocol_versions(verifier::PROTOCOL_VERSIONS)
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier::Libp2pCertificateVerifier::new()))
            .with_cert_resolver(resolver);
        server.alpn_protocols = vec![P2P_ALPN.to_vec()];
        server.ignore_client_order = true;
        assert_eq!(
            negotiate(client.clone(), server.clone()),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        // And one with them follows the client.
        server.ignore_client_order = false;
        assert_eq!(
            negotiate(client, server),
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }
}
