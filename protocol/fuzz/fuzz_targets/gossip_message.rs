//! Gossip messages: errors, never panics; signatures check without panics.
#![no_main]

use edgeswarm_protocol::wire::GossipMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = GossipMessage::decode(data) {
        assert_eq!(msg.encode(), data, "decoded input must be canonical");
        match &msg {
            GossipMessage::Release(s) => drop(s.verify_embedded()),
            GossipMessage::ChunkDigests(s) => drop(s.verify_embedded()),
            GossipMessage::Resolution(s) => drop(s.verify_embedded()),
            GossipMessage::Availability(_) | GossipMessage::Status(_) => {}
        }
    }
});
