//! Signed releases: errors, never panics.
#![no_main]

use edgeswarm_protocol::release::SignedRelease;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedRelease::decode(data) {
        assert_eq!(signed.encode(), data, "decoded input must be canonical");
        let _ = signed.verify_embedded();
        let _ = signed.release_id();
    }
});
