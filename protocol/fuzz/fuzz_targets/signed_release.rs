//! Signed releases and removals decoded alone: errors, never panics.
//!
//! The check is shared with the stable proptest equivalent in
//! `protocol/tests/fuzz.rs`.
#![no_main]

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::signed_messages(data));
