//! Throughput of the XSalsa20 keystream pnet applies to every byte, per
//! backend, against the salsa20 crate's (upstream libp2p-pnet's cipher).
//!
//! `cargo bench -p libp2p-pnet` prints MiB/s for 64 KiB writes (the size of
//! the noise frames pnet encrypts) and for 1448-byte ones (one TCP segment).

use std::time::{Duration, Instant};

use libp2p_pnet::xsalsa20::{Backend, XSalsa20};
use salsa20::cipher::{KeyIvInit, StreamCipher};

/// Bytes each measurement encrypts.
const TOTAL: usize = 512 << 20;

fn rate(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

fn main() {
    let (key, nonce) = ([7u8; 32], [9u8; 24]);
    for write in [64 * 1024, 1448] {
        let mut buf = vec![0u8; write];
        let rounds = TOTAL / write;
        let mut reference = salsa20::XSalsa20::new(&key.into(), &nonce.into());
        let start = Instant::now();
        for _ in 0..rounds {
            reference.apply_keystream(&mut buf);
        }
        let base = rate(rounds * write, start.elapsed());
        println!("{write:>6}-byte writes: salsa20 0.11 (upstream) {base:7.0} MiB/s");
        for backend in Backend::available() {
            let mut cipher = XSalsa20::with_backend(&key, &nonce, backend);
            let start = Instant::now();
            for _ in 0..rounds {
                cipher.apply_keystream(&mut buf);
            }
            let mib = rate(rounds * write, start.elapsed());
            println!(
                "{write:>6}-byte writes: {:<27} {mib:7.0} MiB/s ({:.2}x upstream)",
                format!("{backend:?}"),
                mib / base
            );
        }
        std::hint::black_box(&buf);
    }
}
