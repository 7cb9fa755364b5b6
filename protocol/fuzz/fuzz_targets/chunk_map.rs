//! Chunk maps and bitfields: errors, never panics.
#![no_main]

use edgeswarm_protocol::{encoding, Bitfield, ChunkMap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = ChunkMap::decode(data) {
        assert_eq!(map.encode(), data, "decoded input must be canonical");
    }
    let _ = encoding::decode::<Bitfield>("bitfield", data, 1 << 16);
});
