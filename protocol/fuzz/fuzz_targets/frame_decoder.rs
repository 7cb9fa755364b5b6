//! A chunk stream read the way the node reads it (prefix, header, payload:
//! node/src/swarm/frame.rs), against the incremental `FrameDecoder` fed the
//! same bytes in arbitrary pieces: both agree frame by frame, never panic
//! and never allocate past the frame limits.
//!
//! The check is shared with the stable proptest equivalent in
//! `protocol/tests/fuzz.rs`.
#![no_main]

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::frame_reader(data));
