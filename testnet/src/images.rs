//! Test images built from this machine's own files (no Docker Hub), pushed
//! into a testnet's cloud registry.
//!
//! # Layout of an image
//!
//! `testnet/img<MB>:v1` and `:v2`, each three or four gzip layers, base first:
//! 1. host shared libraries (`/usr/lib/<arch>-linux-gnu`), sized so that the
//!    compressed image is about `<MB>` megabytes;
//! 2. `/usr/share` files, only when the libraries alone are too small;
//! 3. busybox-static with applet links (a usable `/bin/sh`);
//! 4. a small app layer (`/app/run.sh`, `/app/config.json`) naming the tag.
//!
//! v1 and v2 differ only in the app layer, so they share every base layer
//! (a "version upgrade" deploys a few hundred bytes of new layer).
//!
//! [`Layout::Spread`] (`testnet/spread<MB>`, used by `pull-bench`) replaces
//! layers 1-2 with four base layers of about equal raw size: host
//! libraries, `/usr/share`, `/usr/bin` and the rest of `/usr/lib`.
//!
//! [`Layout::Single`] (`testnet/single<MB>`) is issue 11's image: a
//! host-library layer holding [`SINGLE_BULK_FRACTION`] of the image (46 MB
//! of 48.7 MB), and the rest in a `/usr/share` layer, busybox and the app.
//! Below 50 MB the [`Layout::Base`] image is close to it (its library
//! layer holds ~98 % of the image); the two differ in the size of the big
//! layer and in the small layers the gateway pulls after it.
//!
//! # Goals
//! Realistic content (real ELF libraries compress like real images do,
//! about 3:1), deterministic digests (fixed mtimes, sorted entries), sizes
//! within ~15 % of the request.
//!
//! # Non-goals
//! Exact sizes, other architectures, non-gzip layers (the node's tests
//! cover zstd and uncompressed layers).
//!
//! Building runs wherever the caller is; pushing must happen from inside the
//! cloud namespace ([`crate::topology::Topology::command`] with the
//! `edgeswarm-testnet helper push-images` subcommand), because the host has
//! no route into the testnet and a push from a node would cross, and
//! pollute, the cloud link's counters.

use std::path::{Path, PathBuf};

use edgeswarm_node::registry::testing::{
    build_image, BuiltImage, ImageSpec, LayerSource, ManifestFormat, Pusher,
};
use edgeswarm_node::registry::{Compression, Platform};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TestnetError};

/// How an image's bytes are spread over its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Layout {
    /// One big base layer (host libraries, topped up from `/usr/share`),
    /// busybox and an app layer: the shape of a distroless-style image.
    #[default]
    Base,
    /// Four base layers of about equal raw size (host libraries,
    /// `/usr/share`, `/usr/bin`, the rest of `/usr/lib`), busybox and an
    /// app layer: the shape of a language-runtime image built in several
    /// `RUN` steps, and what pipelined import can overlap.
    Spread,
    /// Issue 11's image: one host-library layer of [`SINGLE_BULK_FRACTION`]
    /// of the image, the rest in a `/usr/share` layer, busybox and an app
    /// layer.
    Single,
}

/// The share of a [`Layout::Single`] image in its big layer: issue 11's
/// 46 MB layer of a 48.7 MB image.
pub const SINGLE_BULK_FRACTION: f64 = 46.0 / 48.7;

impl Layout {
    /// The name used on command lines (`base`, `spread`, `single`).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Base => "base",
            Layout::Spread => "spread",
            Layout::Single => "single",
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "base" => Ok(Layout::Base),
            "spread" => Ok(Layout::Spread),
            "single" => Ok(Layout::Single),
            other => Err(format!(
                "unknown layout {other:?} (use base, spread or single)"
            )),
        }
    }
}

/// Repository of the image of about `mb` megabytes.
pub fn repo(mb: u64) -> String {
    format!("testnet/img{mb}")
}

/// Repository of the image of about `mb` megabytes in `layout`.
pub fn layout_repo(mb: u64, layout: Layout) -> String {
    match layout {
        Layout::Base => repo(mb),
        Layout::Spread => format!("testnet/spread{mb}"),
        Layout::Single => format!("testnet/single{mb}"),
    }
}

/// A pushed test image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TestImage {
    /// Full reference, `10.77.250.1:5000/testnet/img50:v1`.
    pub reference: String,
    /// Requested size in megabytes (the name's number).
    pub nominal_mb: u64,
    /// Tag (`v1` or `v2`).
    pub tag: String,
    /// Manifest digest (`sha256:...`).
    pub manifest: String,
    /// Sum of the compressed layer blobs: what must cross the cloud link.
    pub layer_bytes: u64,
    /// Layers + config + manifest: every byte a full pull transfers.
    pub total_bytes: u64,
    /// Compressed size of each layer, base first.
    pub layers: Vec<u64>,
}

/// Ratio of uncompressed library bytes to gzip bytes used for a first guess
/// (measured on Debian's x86_64 libraries: 2.6 to 3.2).
const FIRST_GUESS_RATIO: f64 = 2.8;

/// First guess of `/usr/share`'s ratio (much of it is gzipped already).
const SHARE_FIRST_GUESS_RATIO: f64 = 2.0;

/// A [`Layout::Single`] image's big layer off by more than this (its
/// `/usr/share` layer by more than a fifth of it, of the whole image) is
/// rebuilt with the measured ratios.
const SINGLE_TOLERANCE: f64 = 0.03;

/// Most builds of one [`Layout::Single`] image.
const SINGLE_BUILDS: u32 = 5;

/// Raw (uncompressed) bytes taken from the host for the size-driven layers
/// of an image; reused to build another tag with identical base layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The base layers' bytes (all of them for `base` and `spread`; the big
    /// layer's for `single`).
    pub raw: u64,
    /// `single` only: the `/usr/share` layer's bytes (0: no such layer).
    pub share_raw: u64,
}
/// Most library bytes taken before `/usr/share` fills the rest.
const MAX_LIB_BYTES: u64 = 600 << 20;

fn host_dir(src: &str, max_bytes: u64) -> LayerSource {
    LayerSource::HostDir {
        src: PathBuf::from(src),
        dest: src.trim_start_matches('/').into(),
        max_bytes,
    }
}

/// What `build_image` makes of tag `tag` in `layout` with `budget` (the
/// same budget gives the same base layers, byte for byte).
pub fn image_spec(layout: Layout, budget: Budget, tag: &str) -> ImageSpec {
    spec(layout, budget, tag)
}

fn spec(layout: Layout, budget: Budget, tag: &str) -> ImageSpec {
    let raw_bytes = budget.raw;
    let mut layers = match layout {
        Layout::Base => {
            let libs = raw_bytes.min(MAX_LIB_BYTES);
            let mut layers = vec![LayerSource::host_libs(libs)];
            if raw_bytes > libs {
                layers.push(host_dir("/usr/share", raw_bytes - libs));
            }
            layers
        }
        Layout::Spread => {
            let quarter = raw_bytes / 4;
            vec![
                LayerSource::host_libs(quarter),
                host_dir("/usr/share", quarter),
                host_dir("/usr/bin", quarter),
                host_dir("/usr/lib", quarter),
            ]
        }
        Layout::Single => {
            let mut layers = vec![LayerSource::host_libs(raw_bytes)];
            if budget.share_raw > 0 {
                layers.push(host_dir("/usr/share", budget.share_raw));
            }
            layers
        }
    };
    layers.push(LayerSource::busybox());
    layers.push(LayerSource::app(tag));
    ImageSpec {
        layers,
        compression: Compression::Gzip,
        format: ManifestFormat::Docker,
        platform: Platform::host(),
        cmd: vec!["/bin/sh".into(), "/app/run.sh".into()],
    }
}

fn image_err(
    what: String,
) -> impl FnOnce(edgeswarm_node::registry::testing::TestSupportError) -> TestnetError {
    move |e| TestnetError::Image {
        what,
        reason: e.to_string(),
    }
}

/// Builds image `tag` of about `mb` compressed megabytes into `dir`: one
/// build with guessed compression ratios, and a second one with the
/// measured ratios when the first misses by more than 15 % (for `single`:
/// when the big layer or the rest misses by more than 5 %).
/// Returns the image and the byte budget that produced it (to build
/// another tag with identical base layers).
pub async fn build_sized(
    mb: u64,
    layout: Layout,
    tag: &str,
    dir: &Path,
) -> Result<(BuiltImage, Budget)> {
    if layout == Layout::Single {
        return build_single(mb, tag, dir).await;
    }
    let target = mb * 1_000_000;
    let mut budget = Budget {
        raw: (target as f64 * FIRST_GUESS_RATIO) as u64,
        share_raw: 0,
    };
    let mut image = build_image(spec(layout, budget, tag), dir)
        .await
        .map_err(image_err(format!("building {mb} MB image {tag}")))?;
    let got = image.layers_size();
    let off = (got as f64 - target as f64).abs() / target as f64;
    if off > 0.15 && got > 0 {
        budget.raw = (budget.raw as f64 * target as f64 / got as f64) as u64;
        tracing::info!(
            mb,
            got,
            raw = budget.raw,
            "rebuilding test image with the measured ratio"
        );
        image = build_image(spec(layout, budget, tag), dir)
            .await
            .map_err(image_err(format!("rebuilding {mb} MB image {tag}")))?;
    }
    Ok((image, budget))
}

/// Compressed byte targets of a [`Layout::Single`] image of `mb` MB whose
/// busybox and app layers take `small` bytes: `(big layer, share layer)`.
/// The share layer makes up what the big layer and the small layers leave
/// (0 when they leave nothing, as in images of a few MB).
pub fn single_targets(mb: u64, small: u64) -> (u64, u64) {
    let target = mb * 1_000_000;
    let big = (target as f64 * SINGLE_BULK_FRACTION) as u64;
    (big, target.saturating_sub(big).saturating_sub(small))
}

/// [`build_sized`] for [`Layout::Single`]: each size-driven layer (the
/// libraries, `/usr/share`) is calibrated on its own, since they compress
/// differently, in up to [`SINGLE_BUILDS`] builds (which files fit a
/// budget changes the mix, so one rescaling may not land).
async fn build_single(mb: u64, tag: &str, dir: &Path) -> Result<(BuiltImage, Budget)> {
    // busybox + app: about 1.1 MB here; measured after the first build.
    let (big, share) = single_targets(mb, 1_100_000);
    let mut budget = Budget {
        raw: (big as f64 * FIRST_GUESS_RATIO) as u64,
        share_raw: (share as f64 * SHARE_FIRST_GUESS_RATIO) as u64,
    };
    // Budgets that gave a big layer below / above its target: bisect
    // between them once both are known (the layer size jumps as files
    // enter or leave the budget, so rescaling alone can oscillate).
    let (mut below, mut above): (Option<u64>, Option<u64>) = (None, None);
    let mut best: Option<(f64, BuiltImage, Budget)> = None;
    for _ in 0..SINGLE_BUILDS {
        let image = build_image(spec(Layout::Single, budget, tag), dir)
            .await
            .map_err(image_err(format!("building {mb} MB image {tag}")))?;
        let has_share = budget.share_raw > 0;
        let got_big = image.layers[0].size;
        let got_share = if has_share { image.layers[1].size } else { 0 };
        let small: u64 = image.layers[if has_share { 2 } else { 1 }..]
            .iter()
            .map(|l| l.size)
            .sum();
        let (big, share) = single_targets(mb, small);
        let big_off = (got_big as f64 - big as f64).abs() / big.max(1) as f64;
        // The share layer's miss counts against the whole image: a 1.5 MB
        // layer 20 % off moves the image by 0.6 %.
        let share_off = (got_share as f64 - share as f64).abs() / (mb * 1_000_000) as f64;
        let off = big_off.max(share_off * 5.0);
        let prev = budget;
        if best.as_ref().is_none_or(|b| off < b.0) {
            best = Some((off, image, prev));
        }
        if off <= SINGLE_TOLERANCE {
            break;
        }
        if got_big < big {
            below = Some(below.map_or(prev.raw, |b| b.max(prev.raw)));
        } else {
            above = Some(above.map_or(prev.raw, |a| a.min(prev.raw)));
        }
        budget.raw = match (below, above) {
            (Some(lo), Some(hi)) => lo + (hi - lo) / 2,
            _ => (prev.raw as f64 * big as f64 / got_big.max(1) as f64) as u64,
        };
        budget.share_raw = if has_share && got_share > 0 {
            (prev.share_raw as f64 * share as f64 / got_share as f64) as u64
        } else {
            (share as f64 * SHARE_FIRST_GUESS_RATIO) as u64
        };
        tracing::info!(
            mb,
            got_big,
            got_share,
            ?budget,
            "rebuilding single-layer test image"
        );
    }
    // Every build keeps its own layer files in `dir`, so the best one's
    // are still there.
    let (_, image, budget) = best.expect("at least one build");
    Ok((image, budget))
}

/// Builds `v1` (and `v2` when `versions`) of each size in `sizes_mb` in a
/// temporary directory under `work` and pushes them to the registry at
/// `registry_host` (`10.77.250.1:5000`), in `layout`. Blobs the registry
/// already holds are not uploaded again. Must run inside the cloud
/// namespace.
pub async fn build_and_push(
    registry_host: &str,
    sizes_mb: &[u64],
    versions: bool,
    layout: Layout,
    work: &Path,
) -> Result<Vec<TestImage>> {
    std::fs::create_dir_all(work)
        .map_err(|e| TestnetError::io(format!("creating {}", work.display()), e))?;
    let pusher =
        Pusher::new(registry_host, None).map_err(image_err(format!("registry {registry_host}")))?;
    let mut out = Vec::new();
    let tags: &[&str] = if versions { &["v1", "v2"] } else { &["v1"] };
    for &mb in sizes_mb {
        let mut ratio_raw: Option<Budget> = None;
        for tag in tags {
            let dir = tempfile::Builder::new()
                .prefix("es-image-")
                .tempdir_in(work)
                .map_err(|e| TestnetError::io("creating image build dir", e))?;
            // v2 reuses v1's calibrated size, so that the base layers are
            // byte-identical (same digests, shared).
            let image = match ratio_raw {
                Some(raw) => build_image(spec(layout, raw, tag), dir.path())
                    .await
                    .map_err(image_err(format!("building {mb} MB image {tag}")))?,
                None => {
                    let (image, raw) = build_sized(mb, layout, tag, dir.path()).await?;
                    ratio_raw = Some(raw);
                    image
                }
            };
            let repo = layout_repo(mb, layout);
            let manifest = pusher
                .push_image(&repo, Some(tag), &image)
                .await
                .map_err(image_err(format!("pushing {repo}:{tag}")))?;
            let layer_bytes = image.layers_size();
            let img = TestImage {
                reference: format!("{registry_host}/{repo}:{tag}"),
                nominal_mb: mb,
                tag: tag.to_string(),
                manifest: manifest.to_oci(),
                layer_bytes,
                total_bytes: layer_bytes
                    + image.config_bytes.len() as u64
                    + image.manifest_bytes.len() as u64,
                layers: image.layers.iter().map(|l| l.size).collect(),
            };
            tracing::info!(reference = %img.reference, bytes = img.layer_bytes, "pushed test image");
            out.push(img);
        }
    }
    Ok(out)
}
