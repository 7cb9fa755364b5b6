//! The `RUST_LOG` filter of the `edgeswarm` and `edgeswarm-bootstrap`
//! binaries: `target=level` directives (`info,libp2p=warn`, `debug`,
//! `edgeswarm_node::swarm=debug`).
//!
//! A `Targets` filter rather than `EnvFilter`, whose span and field
//! matching (`[span{field=value}]=level`) links a regex engine: 0.94 MB of
//! the stripped binary for a syntax no deployment here uses
//! (docs/OPERATOR.md, "Binary size"). [`subscriber`] builds the binaries'
//! subscriber from that filter; installing it (`.init()`) is the binary's.

use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;

/// How the binaries write log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, fields at the top level.
    Json,
}

/// The filter `rust_log` (the `RUST_LOG` value, if set) asks for, or
/// `default` when it is unset, empty or does not parse; a value that does
/// not parse is reported on stderr, not ignored silently.
///
/// # Panics
/// If `default` itself does not parse (a constant of the caller).
pub fn log_filter(rust_log: Option<&str>, default: &str) -> Targets {
    let fallback = || default.parse().expect("the default log filter parses");
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => fallback(),
        Some(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} ignored ({e}): using {default}");
            fallback()
        }),
    }
}

/// The binaries' subscriber: `filter` over a `fmt` subscriber writing
/// `format` to stdout.
///
/// The `fmt` subscriber's own level is the filter's most verbose directive:
/// lower (its default is INFO) it would cap `RUST_LOG=debug`; higher, it
/// would raise the subscriber's level hint, which installing the subscriber
/// also makes the `log` crate's maximum level (the records of yamux,
/// multistream-select and other dependencies that log through `log`). At
/// `TRACE` under an `info` filter, every `log::trace!` on a hot path (yamux
/// logs per frame) went through `LogTracer` and the filter before being
/// dropped (about 1 % of a node's CPU, issue 15); now it stops at one
/// integer comparison.
pub fn subscriber(filter: Targets, format: Format) -> Box<dyn Subscriber + Send + Sync> {
    let builder = tracing_subscriber::fmt().with_max_level(max_level(&filter));
    match format {
        Format::Text => Box::new(builder.finish().with(filter)),
        // Fields at the top level (not under "fields") and the span list
        // off: what log collectors index without a parsing rule.
        Format::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish()
                .with(filter),
        ),
    }
}

/// The most verbose level `filter` lets through anywhere.
fn max_level(filter: &Targets) -> LevelFilter {
    tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(filter)
        .unwrap_or(LevelFilter::TRACE)
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    use super::{log_filter, max_level, subscriber, Format};

    /// The level hint of the installed subscriber is what `init()` makes
    /// the `log` crate's maximum level: the filter's, in both formats.
    #[test]
    fn the_subscribers_level_hint_is_the_filters() {
        for format in [Format::Text, Format::Json] {
            let default = subscriber(log_filter(None, DEFAULT), format);
            assert_eq!(
                default.max_level_hint(),
                Some(LevelFilter::INFO),
                "{format:?}"
            );
            let debug = subscriber(log_filter(Some("warn,libp2p_kad=debug"), DEFAULT), format);
            assert_eq!(
                debug.max_level_hint(),
                Some(LevelFilter::DEBUG),
                "{format:?}"
            );
        }
    }

    #[test]
    fn the_subscriber_level_is_the_most_verbose_directive() {
        let default = log_filter(None, DEFAULT);
        assert_eq!(max_level(&default), LevelFilter::INFO);
        let verbose = log_filter(Some("warn,edgeswarm_node::swarm=debug"), DEFAULT);
        assert_eq!(max_level(&verbose), LevelFilter::DEBUG);
        assert_eq!(
            max_level(&log_filter(Some("trace"), DEFAULT)),
            LevelFilter::TRACE
        );
        assert_eq!(
            max_level(&log_filter(Some("error"), DEFAULT)),
            LevelFilter::ERROR
        );
    }

    const DEFAULT: &str = "info,libp2p=warn";

    #[test]
    fn rust_log_directives_filter_by_target_prefix_and_level() {
        let f = log_filter(
            Some("info,libp2p=warn,edgeswarm_node::swarm=debug"),
            DEFAULT,
        );
        assert!(f.would_enable("edgeswarm_node::daemon", &Level::INFO));
        assert!(!f.would_enable("edgeswarm_node::daemon", &Level::DEBUG));
        assert!(f.would_enable("edgeswarm_node::swarm::task", &Level::DEBUG));
        assert!(!f.would_enable("libp2p_kad::behaviour", &Level::INFO));
        assert!(f.would_enable("libp2p_kad::behaviour", &Level::WARN));
        assert!(log_filter(Some("debug"), DEFAULT).would_enable("hyper", &Level::DEBUG));
    }

    #[test]
    fn unset_empty_or_bad_rust_log_falls_back_to_the_default() {
        for spec in [None, Some(""), Some("  "), Some("info,=[bad")] {
            let f = log_filter(spec, DEFAULT);
            assert!(f.would_enable("edgeswarm_node", &Level::INFO), "{spec:?}");
            assert!(!f.would_enable("edgeswarm_node", &Level::DEBUG), "{spec:?}");
            assert!(!f.would_enable("libp2p_swarm", &Level::INFO), "{spec:?}");
        }
    }
}
