//! The one error type of the testnet library.
//!
//! Every variant carries enough context to act on without reading the code:
//! refusals say what to install, command failures carry the command line and
//! its stderr.

use std::path::PathBuf;

/// Everything that can go wrong while building, using or removing a testnet.
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// Network namespaces, veths and `tc` need root (CAP_NET_ADMIN and
    /// CAP_SYS_ADMIN for `ip netns`).
    #[error("edgeswarm-testnet needs root (network namespaces, veth pairs and tc need CAP_NET_ADMIN/CAP_SYS_ADMIN); run it as root or with sudo")]
    NotRoot,
    /// A required program is not on PATH.
    #[error("required program `{tool}` not found on PATH; install it with `{install}`")]
    MissingTool {
        /// The program looked for (`ip`, `tc`, `iperf3`, ...).
        tool: &'static str,
        /// The command that installs it on Debian.
        install: &'static str,
    },
    /// The kernel lacks a feature the topology needs (a qdisc, veth, bridge).
    #[error("the kernel lacks {feature}: {detail}; {hint}")]
    KernelLacks {
        /// What is missing, e.g. "the tbf qdisc (sch_tbf)".
        feature: &'static str,
        /// The stderr of the probe that failed.
        detail: String,
        /// How to get it.
        hint: &'static str,
    },
    /// An external command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for copy-paste reproduction.
        command: String,
        /// Exit status as printed by std.
        status: String,
        /// Trimmed stderr of the command.
        stderr: String,
    },
    /// An I/O error with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        /// What was being done ("writing state file /run/...").
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A testnet name that cannot be used as a prefix of namespace names.
    #[error("invalid testnet name {0:?}: use 1-12 characters from [a-z0-9]")]
    InvalidName(String),
    /// A rate string that is not `<number><bit|kbit|mbit|gbit>`.
    #[error("invalid rate {0:?}: use a number followed by bit, kbit, mbit or gbit (e.g. 100mbit)")]
    InvalidRate(String),
    /// A topology request outside what the addressing plan supports.
    #[error("invalid topology: {0}")]
    InvalidSpec(String),
    /// `up` for a name that already has a state file or namespaces.
    #[error("testnet {name:?} already exists ({what}); run `edgeswarm-testnet down --name {name}` first")]
    AlreadyExists {
        /// The testnet name.
        name: String,
        /// What was found (state file path or namespace name).
        what: String,
    },
    /// No state file for this name.
    #[error("no testnet named {name:?} (no state file {path})")]
    NotFound {
        /// The testnet name.
        name: String,
        /// Where the state file was looked for.
        path: PathBuf,
    },
    /// A state file that does not parse or names objects outside its prefix.
    #[error("state file {path}: {reason}")]
    BadState {
        /// The state file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A locality or node index that does not exist in this topology.
    #[error("no such {what} {index} (this testnet has {count})")]
    NoSuchIndex {
        /// "locality" or "node".
        what: &'static str,
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// Something did not happen in time (a registry not answering, a process
    /// not exiting).
    #[error("timed out after {after:?}: {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// A test image could not be built or pushed.
    #[error("test image: {what}: {reason}")]
    Image {
        /// What was being done ("pushing testnet/img50:v1").
        what: String,
        /// The underlying error.
        reason: String,
    },
    /// An experiment run failed (a node errored, a deadline passed).
    #[error("experiment: {0}")]
    Experiment(String),
    /// Output of a tool that we could not parse.
    #[error("cannot parse output of `{command}`: {reason}")]
    Parse {
        /// The command whose output was parsed.
        command: String,
        /// What was wrong.
        reason: String,
    },
}

/// Result alias for the testnet library.
pub type Result<T, E = TestnetError> = std::result::Result<T, E>;

impl TestnetError {
    /// Wraps an I/O error with a context string.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
