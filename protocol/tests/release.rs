//! Release signing, trust, key files and the release encoding.

use edgeswarm_protocol::encoding::DecodeError;
use edgeswarm_protocol::release::*;
use edgeswarm_protocol::signing::*;
use edgeswarm_protocol::Digest;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn release() -> Release {
    Release {
        image: "registry.local:5000/app:1.0".into(),
        manifest: Digest::of(b"manifest"),
        platform: Platform::new("linux", "amd64"),
        created: 1_700_000_000,
        locality: "plant-a".into(),
        selector: vec![
            ("role".into(), "camera".into()),
            ("zone".into(), "3".into()),
        ],
        seq: 0,
    }
}

fn keys() -> (PublisherKey, PublisherKey) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    (
        PublisherKey::generate(&mut rng),
        PublisherKey::generate(&mut rng),
    )
}

#[test]
fn trusted_signature_verifies() {
    let (publisher, _) = keys();
    let trusted: TrustedKeys = [publisher.public()].into_iter().collect();
    let signed = SignedRelease::sign(release(), &publisher);
    let bytes = signed.encode();
    let decoded = SignedRelease::decode(&bytes).unwrap();
    assert_eq!(decoded.verify_trusted(&trusted).unwrap(), &release());
    assert_eq!(decoded.release_id(), release().id());
}

#[test]
fn untrusted_signer_is_refused_even_with_a_valid_signature() {
    let (publisher, stranger) = keys();
    let trusted: TrustedKeys = [publisher.public()].into_iter().collect();
    let signed = SignedRelease::sign(release(), &stranger);
    assert!(signed.verify_embedded().is_ok());
    assert_eq!(
        signed.verify_trusted(&trusted),
        Err(SigningError::UntrustedKey {
            what: "release",
            signer: stranger.public()
        })
    );
    assert!(signed.verify_trusted(&TrustedKeys::new()).is_err());
}

#[test]
fn tampered_release_is_refused() {
    let (publisher, stranger) = keys();
    let trusted: TrustedKeys = [publisher.public()].into_iter().collect();
    let signed = SignedRelease::sign(release(), &publisher);
    // Another locality, same signature.
    let mut body = release();
    body.locality = "plant-b".into();
    let forged = SignedRelease::from_parts(body, publisher.public(), *signed.signature());
    assert_eq!(
        forged.verify_trusted(&trusted),
        Err(SigningError::BadSignature {
            what: "release",
            signer: publisher.public()
        })
    );
    // A trusted signer claimed over a stranger's signature.
    let stolen = SignedRelease::from_parts(
        release(),
        publisher.public(),
        *SignedRelease::sign(release(), &stranger).signature(),
    );
    assert!(matches!(
        stolen.verify_trusted(&trusted),
        Err(SigningError::BadSignature { .. })
    ));
    // Flip one bit anywhere in the encoding: never a verified release.
    let bytes = signed.encode();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        if let Ok(d) = SignedRelease::decode(&b) {
            assert!(
                d.verify_trusted(&trusted).is_err(),
                "bit flip at byte {i} verified"
            );
        }
    }
}

#[test]
fn embedded_key_mode_checks_only_the_carried_key() {
    let (node_identity, other) = keys();
    let signed = SignedRelease::sign(release(), &node_identity);
    assert_eq!(signed.signer(), &node_identity.public());
    assert!(signed.verify_embedded().is_ok());
    assert!(signed.verify_signer(&node_identity.public()).is_ok());
    assert!(matches!(
        signed.verify_signer(&other.public()),
        Err(SigningError::UntrustedKey { .. })
    ));
}

#[test]
fn release_id_is_the_body_digest_independent_of_signer() {
    let (a, b) = keys();
    let r = release();
    assert_eq!(
        r.id(),
        Digest::of(&edgeswarm_protocol::encoding::encode(&r))
    );
    assert_eq!(
        SignedRelease::sign(r.clone(), &a).release_id(),
        SignedRelease::sign(r.clone(), &b).release_id()
    );
    let mut later = r.clone();
    later.created += 1;
    assert_ne!(later.id(), r.id());
}

#[test]
fn release_encoding_is_pinned() {
    let r = Release {
        image: "a".into(),
        manifest: Digest::from_bytes([0u8; 32]),
        platform: Platform::parse("linux/arm64/v8").unwrap(),
        created: 1,
        locality: "l".into(),
        selector: vec![("k".into(), "v".into())],
        seq: 0,
    };
    let expected = concat!(
        "87",   // array(7)
        "01",   // version 1
        "6161", // "a"
        "5820",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "83",
        "656c696e7578",
        "6561726d3634",
        "627638", // ["linux", "arm64", "v8"]
        "01",     // created
        "616c",   // "l"
        "81",
        "82",
        "616b",
        "6176", // [["k", "v"]]
    );
    assert_eq!(
        hex::encode(edgeswarm_protocol::encoding::encode(&r)),
        expected
    );
    let key = PublisherKey::from_secret_bytes([1u8; 32]);
    let signed = SignedRelease::sign(r, &key);
    let bytes = signed.encode();
    // [1, release, signer, signature]
    assert_eq!(&bytes[..2], &[0x84, 0x01]);
    assert_eq!(
        &bytes[2..2 + expected.len() / 2],
        hex::decode(expected).unwrap()
    );
}

#[test]
fn decode_errors_are_typed() {
    let (k, _) = keys();
    let bytes = SignedRelease::sign(release(), &k).encode();
    let mut v2 = bytes.clone();
    v2[1] = 0x02;
    assert_eq!(
        SignedRelease::decode(&v2),
        Err(ReleaseError::Decode(DecodeError::UnsupportedVersion {
            what: "signed release",
            found: 2,
            supported: 1
        }))
    );
    assert!(matches!(
        SignedRelease::decode(&vec![0x80; MAX_RELEASE_BYTES + 1]),
        Err(ReleaseError::Decode(DecodeError::TooLarge { .. }))
    ));
    assert!(matches!(
        SignedRelease::decode(&bytes[..bytes.len() - 1]),
        Err(ReleaseError::Decode(DecodeError::Malformed { .. }))
    ));
    // A signer that is not a curve point is a decode error, not a panic.
    let pos = bytes.len() - 64 - 2 - 32;
    assert_eq!(&bytes[pos - 2..pos], &[0x58, 0x20]);
    let not_a_point = (2u8..)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| PublicKey::from_bytes(*b).is_err())
        .unwrap();
    let mut bad_key = bytes.clone();
    bad_key[pos..pos + 32].copy_from_slice(&not_a_point);
    assert!(matches!(
        SignedRelease::decode(&bad_key),
        Err(ReleaseError::Decode(DecodeError::Malformed { .. }))
    ));
}

#[test]
fn key_files_round_trip() {
    let (k, _) = keys();
    let secret = k.to_file_contents();
    assert!(secret.starts_with("edgeswarm-publisher-secret-v1 "));
    let public = k.public().to_file_contents();
    assert!(public.starts_with("edgeswarm-publisher-public-v1 "));
    let back = PublisherKey::from_file_contents(&secret).unwrap();
    assert_eq!(back.public(), k.public());
    assert_eq!(PublicKey::from_file_contents(&public).unwrap(), k.public());
    // Comments and blank lines are fine.
    let commented = format!("# publisher of plant-a\n\n{public}\n");
    assert_eq!(
        PublicKey::from_file_contents(&commented).unwrap(),
        k.public()
    );
    // Debug never shows the secret.
    assert!(!format!("{k:?}").contains(&hex::encode(k.secret_bytes())));
}

#[test]
fn bad_key_files_are_typed_errors() {
    let (k, _) = keys();
    let secret = k.to_file_contents();
    let public = k.public().to_file_contents();
    for bad in [
        "",
        "# only a comment\n",
        "edgeswarm-publisher-secret-v1",
        "edgeswarm-publisher-secret-v1 abcd",
        "edgeswarm-publisher-secret-v1 zz",
        public.as_str(),
        &format!("{secret}{secret}"),
    ] {
        assert!(
            matches!(
                PublisherKey::from_file_contents(bad),
                Err(SigningError::InvalidKey(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        PublicKey::from_file_contents(&secret),
        Err(SigningError::InvalidKey(_))
    ));
    assert!(PublicKey::from_hex("00").is_err());
}

#[test]
fn selector_and_platform() {
    let r = release();
    assert!(r.selects([("role", "camera"), ("zone", "3"), ("x", "y")]));
    assert!(!r.selects([("role", "camera")]));
    assert!(!r.selects([("role", "gateway"), ("zone", "3")]));
    let everyone = Release {
        selector: vec![],
        ..release()
    };
    assert!(everyone.selects(std::iter::empty::<(&str, &str)>()));
    assert_eq!(
        Release::parse_selector_term("role=camera").unwrap(),
        ("role".into(), "camera".into())
    );
    assert!(matches!(
        Release::parse_selector_term("=x"),
        Err(ReleaseError::InvalidField(_))
    ));
    assert!(Release::parse_selector_term("novalue").is_err());
    assert_eq!(
        Platform::parse("linux/arm/v7").unwrap().to_string(),
        "linux/arm/v7"
    );
    assert!(matches!(
        Platform::parse("linux"),
        Err(ReleaseError::InvalidField(_))
    ));
    assert!(Platform::parse("linux//v7").is_err());
    assert!(Platform::parse("a/b/c/d").is_err());
}

proptest! {
    #[test]
    fn arbitrary_key_files_never_panic(s in ".{0,200}") {
        let _ = PublisherKey::from_file_contents(&s);
        let _ = PublicKey::from_file_contents(&s);
        let _ = Platform::parse(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(d) = SignedRelease::decode(&bytes) {
            prop_assert_eq!(d.encode(), bytes);
        }
    }

    #[test]
    fn any_key_signs_and_verifies(secret in any::<[u8; 32]>(), created in any::<u64>()) {
        let k = PublisherKey::from_secret_bytes(secret);
        let r = Release { created, ..release() };
        let s = SignedRelease::sign(r.clone(), &k);
        let back = SignedRelease::decode(&s.encode()).unwrap();
        prop_assert_eq!(back.verify_signer(&k.public()).unwrap(), &r);
    }
}
