//! Sealed gossip: errors, never panics; seals open on one topic at most;
//! the body passes the gossip message checks.
//!
//! The check is shared with the stable proptest equivalent in
//! `protocol/tests/fuzz.rs`.
#![no_main]

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::sealed_gossip(data));
