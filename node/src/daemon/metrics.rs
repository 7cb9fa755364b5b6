//! The daemon's release-level Prometheus metrics (releases done and
//! failed, their duration, bytes by source, removals), registered beside
//! the swarm's in one registry that [`Daemon::encode_metrics`] renders for
//! `/metrics`.

use std::time::Duration;

use edgeswarm_protocol::wire::{ReleaseProgress, ReleaseState};

use super::Daemon;

/// Release-level Prometheus metrics.
#[derive(Clone, Default)]
pub(super) struct DaemonMetrics {
    /// Releases imported.
    pub(super) releases_done: prometheus_client::metrics::counter::Counter,
    /// Releases failed.
    pub(super) releases_failed: prometheus_client::metrics::counter::Counter,
    /// Seconds from accepting a release to its image being imported.
    pub(super) release_seconds: ReleaseHistogram,
    /// Bytes pulled from the cloud registry.
    pub(super) cloud_bytes: prometheus_client::metrics::counter::Counter,
    /// Images removed (`rm`, `rm --locality`, the rollback window).
    pub(super) images_removed: prometheus_client::metrics::counter::Counter,
    /// Removal requests refused (untrusted, other locality, stale).
    pub(super) removals_refused: prometheus_client::metrics::counter::Counter,
    /// Per release and source (`cloud` or `peers`): layer bytes this node
    /// received, so an operator sees whether P2P is working for a release.
    pub(super) release_bytes: prometheus_client::metrics::family::Family<
        ReleaseBytesLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

/// Labels of [`DaemonMetrics::release_bytes`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct ReleaseBytesLabels {
    /// The image reference of the release.
    pub(super) image: String,
    /// `cloud` or `peers`.
    pub(super) source: &'static str,
}

/// A histogram of release durations (seconds).
#[derive(Clone)]
pub(super) struct ReleaseHistogram(pub(super) prometheus_client::metrics::histogram::Histogram);

impl Default for ReleaseHistogram {
    fn default() -> Self {
        ReleaseHistogram(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.5, 2.0, 12),
        ))
    }
}

impl DaemonMetrics {
    pub(super) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "releases_done",
            "Releases imported",
            self.releases_done.clone(),
        );
        registry.register(
            "releases_failed",
            "Releases failed",
            self.releases_failed.clone(),
        );
        registry.register(
            "release_duration_seconds",
            "Seconds from accepting a release to its image being imported",
            self.release_seconds.0.clone(),
        );
        registry.register(
            "cloud_bytes",
            "Bytes pulled from the cloud registry",
            self.cloud_bytes.clone(),
        );
        registry.register(
            "release_bytes",
            "Layer bytes received per release, by source (cloud or peers)",
            self.release_bytes.clone(),
        );
        registry.register(
            "images_removed",
            "Images removed by rm, rm --locality or the rollback window",
            self.images_removed.clone(),
        );
        registry.register(
            "removals_refused",
            "Removal requests refused (untrusted, other locality, stale, busy)",
            self.removals_refused.clone(),
        );
    }

    /// Sets the per-release byte gauges from a release's progress.
    pub(super) fn record_progress(&self, image: &str, progress: &ReleaseProgress) {
        for (source, bytes) in [
            ("cloud", progress.bytes_from_cloud),
            ("peers", progress.bytes_from_peers),
        ] {
            self.release_bytes
                .get_or_create(&ReleaseBytesLabels {
                    image: image.to_owned(),
                    source,
                })
                .set(bytes as i64);
        }
    }

    /// Counts a release that just became done (in `took`) or failed.
    pub(super) fn record_phase(&self, new: ReleaseState, took: Option<Duration>) {
        match new {
            ReleaseState::Done => {
                self.releases_done.inc();
                if let Some(took) = took {
                    self.release_seconds.0.observe(took.as_secs_f64());
                }
            }
            ReleaseState::Failed => {
                self.releases_failed.inc();
            }
            _ => {}
        }
    }
}

impl Daemon {
    /// Every metric of the node in the Prometheus text format.
    pub fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.metrics_registry)?;
        Ok(text)
    }
}
