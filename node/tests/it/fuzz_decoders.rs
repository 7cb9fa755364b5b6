//! Stable fuzzing of the node's own decoders of untrusted input, driven by
//! proptest in bounded time (CI runs them with the rest of the suite):
//! image references, `WWW-Authenticate` challenges, manifests (arbitrary
//! bytes and mutated valid documents) and signed removals handed to the
//! API. Each must return an error or a value, never panic, and what it
//! accepts must be consistent. The swarm's frame reader, `Content-Range`
//! and the store's journal replay are fuzzed in their modules' unit tests
//! (private functions); the `dir` sink's tar entry checks in
//! `import_dir.rs` (hostile layers imported for real); the protocol's
//! decoders in `protocol/tests/fuzz.rs`.

use edgeswarm_node::daemon::decode_removal;
use edgeswarm_node::registry::manifest::{parse_manifest, ManifestDocument};
use edgeswarm_node::registry::{Challenge, Reference};
use proptest::prelude::*;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":32}]}"#;

const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":7,"platform":{"os":"linux","architecture":"amd64"}}]}"#;

/// `valid` with a few bytes replaced, then cut.
fn mutate(valid: &str, flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut v = valid.as_bytes().to_vec();
    let n = v.len();
    for (pos, byte) in flips {
        v[pos % n] = *byte;
    }
    v.truncate(cut % (n + 2));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// References: what parses prints back to something that parses to
    /// the same reference.
    #[test]
    fn references_never_panic_and_round_trip(
        text in "[a-zA-Z0-9._:/@+-]{0,80}",
        noise in ".{0,60}",
    ) {
        for input in [text.as_str(), noise.as_str()] {
            if let Ok(r) = Reference::parse(input) {
                let again = Reference::parse(&r.to_string());
                prop_assert_eq!(again.as_ref().ok(), Some(&r), "{} -> {}", input, r);
            }
        }
    }

    /// `WWW-Authenticate` from any server: parsed or refused, never a
    /// panic.
    #[test]
    fn www_authenticate_never_panics(
        scheme in "(Bearer|Basic|bearer|)",
        params in r#"[a-z]{0,8}(=("[^"]{0,20}"?|[^,]{0,20}))?(, ?[a-z]{0,8}=("[^"]{0,20}"?|[^,]{0,20})){0,4}"#,
        noise in ".{0,80}",
    ) {
        let _ = Challenge::parse(&format!("{scheme} {params}"));
        let _ = Challenge::parse(&noise);
    }

    /// Manifests: arbitrary bytes and damaged valid documents, under every
    /// content type the client may see.
    #[test]
    fn manifests_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
        content_type in proptest::option::of("(application/vnd\\.oci\\.image\\.(manifest|index)\\.v1\\+json|application/json|text/plain)"),
    ) {
        let ct = content_type.as_deref();
        let _ = parse_manifest(ct, &bytes);
        for valid in [MANIFEST, INDEX] {
            let damaged = mutate(valid, &flips, cut);
            match parse_manifest(ct, &damaged) {
                Ok(ManifestDocument::Image(m)) => prop_assert!(m.layers.len() <= 1),
                Ok(ManifestDocument::Index(_)) | Err(_) => {}
            }
        }
    }

    /// Signed removals handed to the API (base64-decoded bytes): decoded
    /// within bounds or refused.
    #[test]
    fn removals_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(r) = decode_removal(&bytes) {
            prop_assert!(bytes.len() <= 4096);
            let _ = r.body_unverified();
        }
    }
}
