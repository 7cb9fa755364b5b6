//! XSalsa20 keystream, several blocks at a time (edgeswarm's change; see
//! PATCHES.md).
//!
//! pnet encrypts every byte a node sends or receives a second time, under
//! noise. The salsa20 crate (0.11) computes its keystream one 64-byte block
//! at a time in portable code: 373-407 MiB/s on the development machine (an
//! AMD EPYC at 2 cores), which made a node with a swarm key cost a fifth to
//! a third more CPU than one without (issue 15). Salsa20's blocks are
//! independent given their counter, so this module computes eight of them
//! at once, one 32-bit word of each block per SIMD lane: 2219 MiB/s with AVX2 (8 lanes), 1154 MiB/s with SSE2 (4
//! lanes, every x86_64 CPU), keystream alone, same machine
//! (`cargo bench -p libp2p-pnet`). Elsewhere (aarch64 among others) the
//! portable loop computes the same bytes one block at a time.
//!
//! The output is XSalsa20 as the salsa20 crate and go-libp2p compute it:
//! HSalsa20 derives a subkey from the key and the nonce's first 16 bytes,
//! then Salsa20/20 runs with that subkey, the nonce's last 8 bytes and a
//! 64-bit block counter from 0. The tests compare every backend with the
//! salsa20 crate, for arbitrary keys, nonces and splits of the data.

/// Bytes of one Salsa20 block.
const BLOCK: usize = 64;
/// Blocks computed per refill: the widest backend's lanes.
const BLOCKS_PER_REFILL: usize = 8;
/// Bytes of keystream computed per refill.
const REFILL: usize = BLOCK * BLOCKS_PER_REFILL;
/// "expand 32-byte k", the constant words of every Salsa20 input.
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Salsa20's double round count for Salsa20/20.
const DOUBLE_ROUNDS: usize = 10;

/// Which implementation computes the blocks: chosen once per cipher from
/// the CPU's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One block at a time, in portable code.
    Portable,
    /// Four blocks per call, SSE2 (every x86_64 CPU has it).
    #[cfg(target_arch = "x86_64")]
    Sse2,
    /// Eight blocks per call, AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Backend {
    /// The fastest backend this CPU runs.
    pub fn detect() -> Backend {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                return Backend::Avx2;
            }
            if std::is_x86_feature_detected!("sse2") {
                return Backend::Sse2;
            }
        }
        Backend::Portable
    }

    /// Every backend this CPU runs (for the tests and the benchmark).
    pub fn available() -> Vec<Backend> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut backends = vec![Backend::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("sse2") {
                backends.push(Backend::Sse2);
            }
            if std::is_x86_feature_detected!("avx2") {
                backends.push(Backend::Avx2);
            }
        }
        backends
    }

    /// Writes the keystream of blocks `counter..counter + 8` into `out`.
    fn refill(self, input: &[u32; 16], counter: u64, out: &mut [u8; REFILL]) {
        match self {
            Backend::Portable => {
                for (i, block) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let words = portable_block(input, counter.wrapping_add(i as u64));
                    for (bytes, word) in block.chunks_exact_mut(4).zip(words) {
                        bytes.copy_from_slice(&word.to_le_bytes());
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Sse2 => {
                let (first, second) = out.split_at_mut(REFILL / 2);
                // SAFETY: `Sse2` is only chosen (`detect`, `available`) when
                // the CPU has SSE2.
                unsafe {
                    x86::blocks_sse2(input, counter, first.try_into().expect("half a refill"));
                    x86::blocks_sse2(
                        input,
                        counter.wrapping_add(4),
                        second.try_into().expect("half a refill"),
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only chosen when the CPU has AVX2.
            Backend::Avx2 => unsafe { x86::blocks_avx2(input, counter, out) },
        }
    }
}

/// The XSalsa20 stream cipher: [`XSalsa20::apply_keystream`] XORs the next
/// bytes of the keystream into a buffer, whatever the sizes of the calls.
pub struct XSalsa20 {
    /// Salsa20's input words with the HSalsa20 subkey and the nonce's tail;
    /// words 8 and 9 (the block counter) are set per block.
    input: [u32; 16],
    /// The counter of the first block the next refill computes.
    next_block: u64,
    /// Keystream computed ahead and not yet used: `keystream[used..]`.
    keystream: [u8; REFILL],
    /// Bytes of `keystream` already applied.
    used: usize,
    /// The implementation that computes the blocks.
    backend: Backend,
}

impl XSalsa20 {
    /// A cipher for `key` and `nonce`, on the fastest backend of this CPU.
    pub fn new(key: &[u8; 32], nonce: &[u8; 24]) -> XSalsa20 {
        XSalsa20::with_backend(key, nonce, Backend::detect())
    }

    /// A cipher computed by `backend`.
    ///
    /// # Panics
    ///
    /// If this CPU cannot run `backend` (not one of [`Backend::available`]).
    pub fn with_backend(key: &[u8; 32], nonce: &[u8; 24], backend: Backend) -> XSalsa20 {
        assert!(
            Backend::available().contains(&backend),
            "this CPU cannot run {backend:?}"
        );
        let head: [u32; 4] = le_words(&nonce[..16]);
        let mut state = salsa_input(key, head);
        double_rounds(&mut state);
        // HSalsa20: the words that held the constants and the nonce, without
        // Salsa20's final addition of the input.
        let subkey_words = [
            state[0], state[5], state[10], state[15], state[6], state[7], state[8], state[9],
        ];
        let mut subkey = [0u8; 32];
        for (bytes, word) in subkey.chunks_exact_mut(4).zip(subkey_words) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        let tail: [u32; 2] = le_words(&nonce[16..]);
        XSalsa20 {
            input: salsa_input(&subkey, [tail[0], tail[1], 0, 0]),
            next_block: 0,
            keystream: [0; REFILL],
            used: REFILL,
            backend,
        }
    }

    /// XORs the next `data.len()` bytes of the keystream into `data`.
    pub fn apply_keystream(&mut self, mut data: &mut [u8]) {
        if self.used < REFILL {
            let take = data.len().min(REFILL - self.used);
            let (head, rest) = data.split_at_mut(take);
            xor_into(head, &self.keystream[self.used..self.used + take]);
            self.used += take;
            data = rest;
        }
        let mut whole = data.chunks_exact_mut(REFILL);
        for chunk in &mut whole {
            let mut keystream = [0u8; REFILL];
            self.backend
                .refill(&self.input, self.next_block, &mut keystream);
            self.next_block = self.next_block.wrapping_add(BLOCKS_PER_REFILL as u64);
            xor_into(chunk, &keystream);
        }
        let tail = whole.into_remainder();
        if !tail.is_empty() {
            self.backend
                .refill(&self.input, self.next_block, &mut self.keystream);
            self.next_block = self.next_block.wrapping_add(BLOCKS_PER_REFILL as u64);
            xor_into(tail, &self.keystream[..tail.len()]);
            self.used = tail.len();
        }
    }
}

/// `data[i] ^= keystream[i]`, eight bytes at a time where it can.
#[inline]
fn xor_into(data: &mut [u8], keystream: &[u8]) {
    debug_assert_eq!(data.len(), keystream.len());
    let mut data_words = data.chunks_exact_mut(8);
    let mut key_words = keystream.chunks_exact(8);
    for (d, k) in (&mut data_words).zip(&mut key_words) {
        let x = u64::from_ne_bytes((&*d).try_into().expect("8 bytes"))
            ^ u64::from_ne_bytes(k.try_into().expect("8 bytes"));
        d.copy_from_slice(&x.to_ne_bytes());
    }
    for (d, k) in data_words
        .into_remainder()
        .iter_mut()
        .zip(key_words.remainder())
    {
        *d ^= k;
    }
}

/// Little-endian words of `bytes` (whose length is `4 * N`).
fn le_words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    core::array::from_fn(|i| {
        u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    })
}

/// Salsa20's input matrix for `key` and four words of nonce and counter.
fn salsa_input(key: &[u8; 32], nonce_and_counter: [u32; 4]) -> [u32; 16] {
    let k: [u32; 8] = le_words(key);
    let n = nonce_and_counter;
    [
        SIGMA[0], k[0], k[1], k[2], k[3], SIGMA[1], n[0], n[1], n[2], n[3], SIGMA[2], k[4], k[5],
        k[6], k[7], SIGMA[3],
    ]
}

#[inline(always)]
fn quarter_round(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[b] ^= x[a].wrapping_add(x[d]).rotate_left(7);
    x[c] ^= x[b].wrapping_add(x[a]).rotate_left(9);
    x[d] ^= x[c].wrapping_add(x[b]).rotate_left(13);
    x[a] ^= x[d].wrapping_add(x[c]).rotate_left(18);
}

/// Salsa20/20's rounds: ten column rounds, each followed by a row round.
fn double_rounds(x: &mut [u32; 16]) {
    for _ in 0..DOUBLE_ROUNDS {
        quarter_round(x, 0, 4, 8, 12);
        quarter_round(x, 5, 9, 13, 1);
        quarter_round(x, 10, 14, 2, 6);
        quarter_round(x, 15, 3, 7, 11);
        quarter_round(x, 0, 1, 2, 3);
        quarter_round(x, 5, 6, 7, 4);
        quarter_round(x, 10, 11, 8, 9);
        quarter_round(x, 15, 12, 13, 14);
    }
}

/// The keystream words of block `counter`.
fn portable_block(input: &[u32; 16], counter: u64) -> [u32; 16] {
    let mut start = *input;
    start[8] = counter as u32;
    start[9] = (counter >> 32) as u32;
    let mut x = start;
    double_rounds(&mut x);
    for (word, initial) in x.iter_mut().zip(start) {
        *word = word.wrapping_add(initial);
    }
    x
}

/// Salsa20 with one word of `LANES` consecutive blocks per SIMD register.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// Defines `$name`, which writes the keystream of blocks
    /// `counter..counter + $lanes` into `out`, with the vector type `$v`
    /// and its intrinsics. Sixteen registers hold word `w` of every block;
    /// the quarter rounds are the portable code's, lane-wise, so the rounds
    /// need no shuffles; the blocks are transposed back to bytes at the end.
    macro_rules! salsa_blocks {
        ($name:ident, $feature:literal, $v:ty, $lanes:literal, $splat:ident, $add:ident,
         $xor:ident, $or:ident, $shl:ident, $shr:ident, $load:ident, $store:ident) => {
            /// # Safety
            ///
            /// The CPU must support the target feature this function enables.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name(
                input: &[u32; 16],
                counter: u64,
                out: &mut [u8; 64 * $lanes],
            ) {
                macro_rules! rotate {
                    ($x:expr, $n:literal) => {
                        $or($shl::<$n>($x), $shr::<{ 32 - $n }>($x))
                    };
                }
                macro_rules! quarter {
                    ($x:ident, $a:literal, $b:literal, $c:literal, $d:literal) => {
                        $x[$b] = $xor($x[$b], rotate!($add($x[$a], $x[$d]), 7));
                        $x[$c] = $xor($x[$c], rotate!($add($x[$b], $x[$a]), 9));
                        $x[$d] = $xor($x[$d], rotate!($add($x[$c], $x[$b]), 13));
                        $x[$a] = $xor($x[$a], rotate!($add($x[$d], $x[$c]), 18));
                    };
                }
                let mut counter_low = [0u32; $lanes];
                let mut counter_high = [0u32; $lanes];
                for lane in 0..$lanes {
                    let block = counter.wrapping_add(lane as u64);
                    counter_low[lane] = block as u32;
                    counter_high[lane] = (block >> 32) as u32;
                }
                let mut x: [$v; 16] = [$splat(0); 16];
                for (vector, word) in x.iter_mut().zip(input) {
                    *vector = $splat(*word as i32);
                }
                // SAFETY: the arrays hold exactly one vector each; the load
                // is unaligned.
                unsafe {
                    x[8] = $load(counter_low.as_ptr().cast());
                    x[9] = $load(counter_high.as_ptr().cast());
                }
                let start = x;
                for _ in 0..super::DOUBLE_ROUNDS {
                    quarter!(x, 0, 4, 8, 12);
                    quarter!(x, 5, 9, 13, 1);
                    quarter!(x, 10, 14, 2, 6);
                    quarter!(x, 15, 3, 7, 11);
                    quarter!(x, 0, 1, 2, 3);
                    quarter!(x, 5, 6, 7, 4);
                    quarter!(x, 10, 11, 8, 9);
                    quarter!(x, 15, 12, 13, 14);
                }
                let mut words = [[0u32; $lanes]; 16];
                for (lanes, (vector, initial)) in words.iter_mut().zip(x.iter().zip(start)) {
                    // SAFETY: `lanes` holds exactly one vector; the store is
                    // unaligned.
                    unsafe { $store(lanes.as_mut_ptr().cast(), $add(*vector, initial)) };
                }
                for (lane, block) in out.chunks_exact_mut(64).enumerate() {
                    for (bytes, lanes) in block.chunks_exact_mut(4).zip(&words) {
                        bytes.copy_from_slice(&lanes[lane].to_le_bytes());
                    }
                }
            }
        };
    }

    salsa_blocks!(
        blocks_sse2,
        "sse2",
        __m128i,
        4,
        _mm_set1_epi32,
        _mm_add_epi32,
        _mm_xor_si128,
        _mm_or_si128,
        _mm_slli_epi32,
        _mm_srli_epi32,
        _mm_loadu_si128,
        _mm_storeu_si128
    );
    salsa_blocks!(
        blocks_avx2,
        "avx2",
        __m256i,
        8,
        _mm256_set1_epi32,
        _mm256_add_epi32,
        _mm256_xor_si256,
        _mm256_or_si256,
        _mm256_slli_epi32,
        _mm256_srli_epi32,
        _mm256_loadu_si256,
        _mm256_storeu_si256
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use salsa20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

    use super::*;

    /// The salsa20 crate's XSalsa20 applied to `data` from keystream byte
    /// `offset`.
    fn reference(key: &[u8; 32], nonce: &[u8; 24], offset: u64, data: &mut [u8]) {
        let mut cipher = salsa20::XSalsa20::new(key.into(), nonce.into());
        cipher.seek(offset);
        cipher.apply_keystream(data);
    }

    /// XSalsa20's published vector (NaCl's `tests/stream3.c`, the keystream
    /// bytes of its first block): a check that the reference is XSalsa20.
    #[test]
    fn every_backend_gives_nacls_xsalsa20_vector() {
        let key: [u8; 32] = [
            0x1b, 0x27, 0x55, 0x64, 0x73, 0xe9, 0x85, 0xd4, 0x62, 0xcd, 0x51, 0x19, 0x7a, 0x9a,
            0x46, 0xc7, 0x60, 0x09, 0x54, 0x9e, 0xac, 0x64, 0x74, 0xf2, 0x06, 0xc4, 0xee, 0x08,
            0x44, 0xf6, 0x83, 0x89,
        ];
        let nonce: [u8; 24] = [
            0x69, 0x69, 0x6e, 0xe9, 0x55, 0xb6, 0x2b, 0x73, 0xcd, 0x62, 0xbd, 0xa8, 0x75, 0xfc,
            0x73, 0xd6, 0x82, 0x19, 0xe0, 0x03, 0x6b, 0x7a, 0x0b, 0x37,
        ];
        let expected: [u8; 32] = [
            0xee, 0xa6, 0xa7, 0x25, 0x1c, 0x1e, 0x72, 0x91, 0x6d, 0x11, 0xc2, 0xcb, 0x21, 0x4d,
            0x3c, 0x25, 0x25, 0x39, 0x12, 0x1d, 0x8e, 0x23, 0x4e, 0x65, 0x2d, 0x65, 0x1f, 0xa4,
            0xc8, 0xcf, 0xf8, 0x80,
        ];
        let mut from_crate = [0u8; 32];
        reference(&key, &nonce, 0, &mut from_crate);
        assert_eq!(from_crate, expected, "the reference is not XSalsa20");
        for backend in Backend::available() {
            let mut keystream = [0u8; 32];
            XSalsa20::with_backend(&key, &nonce, backend).apply_keystream(&mut keystream);
            assert_eq!(keystream, expected, "{backend:?}");
        }
    }

    #[test]
    fn the_detected_backend_is_the_widest_available() {
        assert_eq!(
            Backend::detect(),
            *Backend::available()
                .last()
                .expect("portable is always there")
        );
    }

    proptest! {
        /// Any sequence of calls, of any sizes (within and across refills),
        /// gives the reference's bytes, on every backend.
        #[test]
        fn every_backend_matches_the_reference_for_any_split(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 24]>(),
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(0usize..1200, 0..12),
        ) {
            let mut expected = data.clone();
            reference(&key, &nonce, 0, &mut expected);
            for backend in Backend::available() {
                let mut cipher = XSalsa20::with_backend(&key, &nonce, backend);
                let mut actual = data.clone();
                let mut rest = &mut actual[..];
                for cut in &cuts {
                    let (now, later) = rest.split_at_mut((*cut).min(rest.len()));
                    cipher.apply_keystream(now);
                    rest = later;
                }
                cipher.apply_keystream(rest);
                prop_assert_eq!(&actual, &expected, "{:?}", backend);
            }
        }
    }

    /// Block counters whose low word wraps (the carry into word 9) match the
    /// reference.
    #[test]
    fn the_block_counter_carries_into_its_high_word() {
        let (key, nonce) = ([3u8; 32], [5u8; 24]);
        let first_block = u64::from(u32::MAX) - 3;
        let mut expected = vec![0u8; 2 * REFILL];
        reference(&key, &nonce, first_block * BLOCK as u64, &mut expected);
        for backend in Backend::available() {
            let mut cipher = XSalsa20::with_backend(&key, &nonce, backend);
            cipher.next_block = first_block;
            let mut actual = vec![0u8; 2 * REFILL];
            cipher.apply_keystream(&mut actual);
            assert_eq!(actual, expected, "{backend:?}");
        }
    }
}
