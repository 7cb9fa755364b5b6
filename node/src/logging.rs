//! The `RUST_LOG` filter of the `edgeswarm` and `edgeswarm-bootstrap`
//! binaries: `target=level` directives (`info,libp2p=warn`, `debug`,
//! `edgeswarm_node::swarm=debug`).
//!
//! A `Targets` filter rather than `EnvFilter`, whose span and field
//! matching (`[span{field=value}]=level`) links a regex engine: 0.94 MB of
//! the stripped binary for a syntax no deployment here uses
//! (docs/OPERATOR.md, "Binary size"). Non-goal: installing the subscriber
//! (each binary picks its format).

use tracing_subscriber::filter::{LevelFilter, Targets};

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

/// The most verbose level `filter` lets through anywhere: the level to
/// give the `fmt` subscriber beneath it.
///
/// Installing a subscriber also sets the `log` crate's maximum level (the
/// records of yamux, multistream-select and other dependencies that log
/// through `log`) to the subscriber's level hint. With the `fmt` builder at
/// `TRACE` under an `info` filter that hint was `TRACE`, so every
/// `log::trace!` on a hot path (yamux logs per frame) went through
/// `LogTracer` and this filter before being dropped; at the filter's own
/// most verbose level they stop at one integer comparison.
pub fn max_level(filter: &Targets) -> LevelFilter {
    tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(filter)
        .unwrap_or(LevelFilter::TRACE)
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    use super::{log_filter, max_level};

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
