//! Platforms (`OS/ARCH[/VARIANT]`) and choosing one entry of a multi-arch index.
//!
//! Names follow Go's `GOOS`/`GOARCH` as the OCI image spec does. The host
//! platform maps Rust's `std::env::consts::{OS, ARCH}` to those names
//! (`x86_64` -> `amd64`, `aarch64` -> `arm64`, ...). Matching follows
//! containerd's rules in the parts that matter for edge fleets: `arm64`
//! without variant equals `arm64/v8`; a request without variant accepts any
//! variant (preferring an entry without one); entries for `unknown/unknown`
//! (BuildKit attestation manifests) are never chosen.

use std::fmt;
use std::str::FromStr;

/// A target platform as in `--platform linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// Operating system, GOOS spelling (`linux`, `windows`).
    pub os: String,
    /// CPU architecture, GOARCH spelling (`amd64`, `arm64`, `arm`).
    pub architecture: String,
    /// CPU variant (`v7` for 32-bit arm, `v8` for arm64), if any.
    pub variant: Option<String>,
}

/// The platform a release names (normalised like `--platform`).
impl From<&edgeswarm_protocol::release::Platform> for Platform {
    fn from(p: &edgeswarm_protocol::release::Platform) -> Self {
        Platform::new(&p.os, &p.architecture, p.variant.as_deref())
    }
}

/// The platform as a release carries it.
impl From<&Platform> for edgeswarm_protocol::release::Platform {
    fn from(p: &Platform) -> Self {
        edgeswarm_protocol::release::Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        }
    }
}

/// Why a `--platform` string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8")]
pub struct PlatformError(pub String);

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
        .normalized()
    }

    /// Parses `OS/ARCH[/VARIANT]` (lowercased; GOARCH aliases such as
    /// `x86_64` and `aarch64` are accepted and normalised).
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(PlatformError(s.to_owned())),
        }
    }

    /// The platform this binary runs on.
    pub fn host() -> Platform {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let (arch, variant) = goarch(std::env::consts::ARCH);
        Platform::new(os, arch, variant)
    }

    /// Canonical spelling: GOARCH aliases folded, arm64's implicit `v8` dropped.
    fn normalized(mut self) -> Platform {
        let original = std::mem::take(&mut self.architecture);
        let (arch, default_variant) = goarch(&original);
        let arch = arch.to_owned();
        self.architecture = arch.clone();
        if self.variant.is_none() && arch == "arm" {
            self.variant = default_variant.map(str::to_owned);
        }
        if arch == "arm64" && self.variant.as_deref() == Some("v8") {
            self.variant = None;
        }
        if arch == "arm" {
            if let Some(v) = &self.variant {
                if !v.starts_with('v') {
                    self.variant = Some(format!("v{v}"));
                }
            }
        }
        self
    }

    /// Whether an index entry for `candidate` can run here (see module docs).
    pub fn matches(&self, candidate: &Platform) -> bool {
        let candidate = candidate.clone().normalized();
        if candidate.os == "unknown" || candidate.architecture == "unknown" {
            return false;
        }
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && match (&self.variant, &candidate.variant) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                // An arm/v7 host does not take an arm entry of unknown variant
                // unless nothing better exists; handled by `choose`.
                (Some(_), None) => true,
            }
    }

    /// Picks the best entry for this platform among `candidates`: exact
    /// variant first, then an entry without variant, then (for a request
    /// without variant) the first entry of the right OS/architecture.
    pub fn choose<'a, T>(
        &self,
        candidates: impl IntoIterator<Item = (&'a Platform, T)>,
    ) -> Option<T> {
        let mut best: Option<(u8, T)> = None;
        for (candidate, item) in candidates {
            if !self.matches(candidate) {
                continue;
            }
            let candidate = candidate.clone().normalized();
            let rank = if candidate.variant == self.variant {
                0
            } else if candidate.variant.is_none() {
                1
            } else {
                2
            };
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, item));
            }
        }
        best.map(|(_, item)| item)
    }
}

/// Rust `ARCH` (or a GOARCH alias) -> (GOARCH, default variant).
fn goarch(arch: &str) -> (&str, Option<&'static str>) {
    match arch {
        "x86_64" | "amd64" | "x86-64" => ("amd64", None),
        "aarch64" | "arm64" => ("arm64", None),
        "arm" | "armhf" | "armv7" => ("arm", Some("v7")),
        "x86" | "i386" | "i686" | "386" => ("386", None),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "riscv64" | "riscv64gc" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let p = Platform::parse("linux/amd64").unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm").unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            Platform::parse("linux/arm/6").unwrap().to_string(),
            "linux/arm/v6"
        );
        assert_eq!(
            Platform::parse("Linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        for bad in ["", "linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_is_goarch() {
        let host = Platform::host();
        if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            assert_eq!(host.to_string(), "linux/amd64");
        }
    }

    #[test]
    fn chooses_entries() {
        let entries = [
            Platform::new("unknown", "unknown", None),
            Platform::new("linux", "arm", Some("v6")),
            Platform::new("linux", "arm", Some("v7")),
            Platform::new("linux", "arm64", Some("v8")),
            Platform::new("linux", "amd64", None),
            Platform::new("windows", "amd64", None),
        ];
        let pick = |want: &str| {
            Platform::parse(want)
                .unwrap()
                .choose(entries.iter().enumerate().map(|(i, p)| (p, i)))
        };
        assert_eq!(pick("linux/amd64"), Some(4));
        assert_eq!(pick("windows/amd64"), Some(5));
        assert_eq!(pick("linux/arm64"), Some(3));
        assert_eq!(pick("linux/arm/v6"), Some(1));
        assert_eq!(pick("linux/arm/v7"), Some(2));
        assert_eq!(pick("linux/arm/v5"), None);
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("unknown/unknown"), None, "attestations never chosen");
    }
}
