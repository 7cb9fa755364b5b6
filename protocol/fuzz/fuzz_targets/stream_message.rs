//! Stream frame headers: errors, never panics; whatever decodes is canonical.
#![no_main]

use edgeswarm_protocol::wire::StreamMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = StreamMessage::decode(data) {
        assert_eq!(msg.encode(), data, "decoded input must be canonical");
    }
});
