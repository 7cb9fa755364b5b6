//! The incremental frame decoder fed arbitrary bytes in arbitrary pieces.
#![no_main]

use edgeswarm_protocol::wire::{FrameDecoder, MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = step.max(1) as usize;
    let mut dec = FrameDecoder::new();
    for piece in rest.chunks(step) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert_eq!(frame.payload.len() as u64, frame.message.payload_len());
                    assert!(frame.message.payload_len() <= MAX_PAYLOAD_BYTES);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Never more buffered than one maximal frame plus the last piece.
        assert!(
            dec.buffered() <= 4 + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES as usize + step,
            "decoder buffered {} bytes",
            dec.buffered()
        );
    }
});
