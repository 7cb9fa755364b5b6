//! Image references in Docker's grammar.
//!
//! `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`, following
//! `github.com/distribution/reference` (the parser `docker pull` uses):
//!
//! - The first path component is a registry host when it contains a `.` or
//!   a `:`, is `localhost`, or contains an uppercase letter; otherwise the
//!   reference names Docker Hub (`docker.io`), and a single-component Hub
//!   name gets the `library/` prefix (`alpine:3` ->
//!   `docker.io/library/alpine:3`). `index.docker.io` is an alias of
//!   `docker.io`. The API host of Docker Hub is `registry-1.docker.io`.
//! - Path components are lowercase `[a-z0-9]+` joined by `.`, `_`, `__` or
//!   runs of `-`; the whole name is at most 255 characters.
//! - A tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; without tag or digest the
//!   tag is `latest`. A digest pins the content; when both are given the
//!   digest wins for pulling (as in Docker) and the tag is informational.
//!
//! Non-goals: digest algorithms other than sha256 (edgeswarm addresses all
//! content by sha256; they are rejected with a typed error).

use std::fmt;
use std::str::FromStr;

use edgeswarm_protocol::Digest;

/// The registry name Docker Hub references normalise to.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Longest repository name (host excluded) Docker accepts.
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The input was empty or only whitespace.
    #[error("image reference is empty")]
    Empty,
    /// The repository name exceeds 255 characters.
    #[error("repository name {0:?} is longer than 255 characters")]
    NameTooLong(String),
    /// The registry host part is not a valid `host[:port]`.
    #[error("invalid registry host {0:?} in image reference")]
    InvalidDomain(String),
    /// A repository path component breaks the grammar.
    #[error("invalid repository path component {component:?} in {reference:?}")]
    InvalidPathComponent {
        /// The offending component (may be empty, e.g. for `a//b`).
        component: String,
        /// The whole input, to show the user what was parsed.
        reference: String,
    },
    /// The repository name contains uppercase letters (Docker's own message).
    #[error("repository name must be lowercase: {0:?}")]
    Uppercase(String),
    /// The tag breaks the grammar.
    #[error("invalid tag {0:?} (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")]
    InvalidTag(String),
    /// The digest is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The digest text after `@`.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A well-formed digest of an algorithm edgeswarm does not address content with.
    #[error("unsupported digest algorithm {0:?} (only sha256)")]
    UnsupportedDigestAlgorithm(String),
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry name as normalised (`docker.io`, `127.0.0.1:5000`,
    /// `[::1]:5000`); the key for credentials and insecure-registry lists.
    pub registry: String,
    /// Repository path within the registry (`library/alpine`).
    pub repository: String,
    /// Tag, if given (defaults to `latest` only when no digest is given).
    pub tag: Option<String>,
    /// Content digest pinning the manifest, if given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference the way `docker pull` does (see module docs).
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // Digest.
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (s, None),
        };
        if rest.is_empty() {
            return Err(ReferenceError::Empty);
        }
        // Tag: a colon after the last slash.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                let tag = &rest[colon + 1..];
                if !valid_tag(tag) {
                    return Err(ReferenceError::InvalidTag(tag.to_owned()));
                }
                (&rest[..colon], Some(tag.to_owned()))
            }
            _ => (rest, None),
        };
        // Domain.
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                if !valid_domain(first) {
                    return Err(ReferenceError::InvalidDomain(first.to_owned()));
                }
                let registry = if first == "index.docker.io" {
                    DOCKER_HUB_DOMAIN.to_owned()
                } else {
                    first.to_owned()
                };
                (registry, remainder.to_owned())
            }
            _ => (DOCKER_HUB_DOMAIN.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(repository));
        }
        if repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong(repository));
        }
        for component in repository.split('/') {
            if !valid_path_component(component) {
                return Err(ReferenceError::InvalidPathComponent {
                    component: component.to_owned(),
                    reference: input.to_owned(),
                });
            }
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The `host[:port]` serving the registry API (Docker Hub's is
    /// `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The `<reference>` path segment of a manifest URL: the digest when
    /// pinned (content wins over a mutable tag), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_oci(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// A copy pinned to `digest` (keeps the tag for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{}", digest.to_oci())?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn parse_digest(digest: &str) -> Result<Digest, ReferenceError> {
    let invalid = |reason: &str| ReferenceError::InvalidDigest {
        digest: digest.to_owned(),
        reason: reason.to_owned(),
    };
    let (algorithm, encoded) = digest
        .split_once(':')
        .ok_or_else(|| invalid("missing `algorithm:` prefix"))?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
    if !algorithm_ok || encoded.is_empty() {
        return Err(invalid("not of the form algorithm:hex"));
    }
    if algorithm != "sha256" {
        return Err(ReferenceError::UnsupportedDigestAlgorithm(
            algorithm.to_owned(),
        ));
    }
    Digest::parse_hex(encoded).map_err(|e| invalid(&e.to_string()))
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__`, or one or more `-`.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host[:port]` where host is DNS labels or a bracketed IPv6 literal.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(stripped) = domain.strip_prefix('[') {
        let Some((v6, after)) = stripped.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(input: &str) -> Reference {
        Reference::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"))
    }

    #[test]
    fn docker_hub_shorthand() {
        let r = ok("alpine:3");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.tag.as_deref(), Some("3"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/alpine:3");

        let r = ok("alpine");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");

        let r = ok("bitnami/redis:7.2");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "bitnami/redis");

        let r = ok("docker.io/alpine");
        assert_eq!(r.repository, "library/alpine");
        let r = ok("index.docker.io/library/alpine:edge");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
    }

    #[test]
    fn explicit_hosts_and_ports() {
        let r = ok("127.0.0.1:5000/team/app:v1.2-rc_3");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1.2-rc_3"));

        let r = ok("localhost/app");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag.as_deref(), Some("latest"));

        let r = ok("localhost:5000/app");
        assert_eq!(r.registry, "localhost:5000");

        let r = ok("ghcr.io/owner/deep/path/image");
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "owner/deep/path/image");

        let r = ok("[::1]:5000/app:1");
        assert_eq!(r.registry, "[::1]:5000");

        // Uppercase first component is a host, as in Docker.
        let r = ok("MyRegistry/app");
        assert_eq!(r.registry, "MyRegistry");
        assert_eq!(r.repository, "app");
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{HEX}");
        let r = ok(&format!("registry.example.com/app@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().to_oci(), d);
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.to_string(), format!("registry.example.com/app@{d}"));

        let r = ok(&format!("app:1.0@{d}"));
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.manifest_reference(), d, "digest wins over tag");

        let r = ok(&format!("localhost:5000/app@{d}"));
        assert_eq!(r.registry, "localhost:5000");
    }

    #[test]
    fn separators_in_path() {
        for good in ["a.b/c_d", "x/a__b", "x/a---b", "x/a-b.c_d", "x/0", "x/a1b2"] {
            ok(good);
        }
    }

    #[test]
    fn typed_errors() {
        use ReferenceError as E;
        assert_eq!(Reference::parse(""), Err(E::Empty));
        assert_eq!(Reference::parse("   "), Err(E::Empty));
        assert!(matches!(Reference::parse("Alpine"), Err(E::Uppercase(_))));
        assert!(matches!(
            Reference::parse("docker.io/Library/alpine"),
            Err(E::Uppercase(_))
        ));
        assert!(matches!(Reference::parse("alpine:"), Err(E::InvalidTag(_))));
        assert!(matches!(
            Reference::parse("alpine:-x"),
            Err(E::InvalidTag(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("alpine:{}", "a".repeat(129))),
            Err(E::InvalidTag(_))
        ));
        assert!(matches!(
            Reference::parse("alpine:a/b"),
            Err(E::InvalidDomain(_))
        ));
        assert!(matches!(
            Reference::parse("a//b"),
            Err(E::InvalidPathComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("x/-a"),
            Err(E::InvalidPathComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("x/a_"),
            Err(E::InvalidPathComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("x/a___b"),
            Err(E::InvalidPathComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("x/a._b"),
            Err(E::InvalidPathComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("host:99999/app"),
            Err(E::InvalidDomain(_))
        ));
        assert!(matches!(
            Reference::parse("host:/app"),
            Err(E::InvalidDomain(_))
        ));
        assert!(matches!(
            Reference::parse("-bad.com/app"),
            Err(E::InvalidDomain(_))
        ));
        assert!(matches!(
            Reference::parse("[zz]:5000/app"),
            Err(E::InvalidDomain(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("x/{}", "a".repeat(300))),
            Err(E::NameTooLong(_))
        ));
        assert!(matches!(
            Reference::parse("app@sha256:abc"),
            Err(E::InvalidDigest { .. })
        ));
        assert!(matches!(
            Reference::parse(&format!("app@sha256:{}", HEX.to_uppercase())),
            Err(E::InvalidDigest { .. })
        ));
        assert!(matches!(
            Reference::parse("app@nocolon"),
            Err(E::InvalidDigest { .. })
        ));
        assert!(matches!(
            Reference::parse(&format!("app@sha512:{HEX}{HEX}")),
            Err(E::UnsupportedDigestAlgorithm(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("@sha256:{HEX}")),
            Err(E::Empty)
        ));
        assert!(matches!(
            Reference::parse("app name"),
            Err(E::InvalidPathComponent { .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "docker.io/library/alpine:3",
            "127.0.0.1:5000/team/app:v1",
            "ghcr.io/o/i:latest",
        ] {
            assert_eq!(ok(input).to_string(), input);
            assert_eq!(ok(&ok(input).to_string()), ok(input));
        }
    }
}
