//! Key file parsers: errors, never panics.
#![no_main]

use edgeswarm_protocol::release::Platform;
use edgeswarm_protocol::signing::{PublicKey, PublisherKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = PublisherKey::from_file_contents(text) {
            let again = PublisherKey::from_file_contents(&key.to_file_contents()).unwrap();
            assert_eq!(again.public(), key.public());
        }
        let _ = PublicKey::from_file_contents(text);
        let _ = Platform::parse(text);
    }
});
