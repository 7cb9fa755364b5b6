//! Readiness: whether this node can do its job now, for `/v1/ready`
//! (Kubernetes readiness probes, load balancers, `systemctl` scripts).
//! Liveness (`/v1/health`) only says the process answers.
//!
//! A node is ready when every check passes:
//!
//! - `store`: the chunk store is open (not shutting down);
//! - `swarm`: the swarm task answers and listens on at least one address;
//! - `joined`: no `--bootstrap` peer is configured, or this node has been
//!   connected to a peer at least once. Sticky: a locality that loses its
//!   last peer later is a network problem that restarting or draining this
//!   node does not fix, and a flapping readiness would stall a DaemonSet
//!   rollout for nothing;
//! - one check per [`ReadyGate`] taken by an optional component. The
//!   registry mirror (`--mirror`) takes a gate named `mirror` when it
//!   starts and marks it ready once its listener is bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Daemon;

/// How long the swarm task may take to list its addresses before the
/// `swarm` check fails: it answers in microseconds unless it is stuck.
const SWARM_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer of [`Daemon::readiness`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Every check passed.
    pub ready: bool,
    /// Each check, in a stable order.
    pub checks: Vec<ReadyCheck>,
}

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyCheck {
    /// `store`, `swarm`, `joined`, or a gate's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen, for an operator reading a failed probe.
    pub detail: String,
}

/// A readiness condition owned by an optional component (the mirror):
/// not ready until the component says so. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadyGate {
    name: Arc<str>,
    ok: Arc<AtomicBool>,
}

impl ReadyGate {
    /// Marks the component ready (or not ready again).
    pub fn set_ready(&self, ready: bool) {
        self.ok.store(ready, Ordering::SeqCst);
    }
}

/// The daemon's readiness state.
#[derive(Debug, Default)]
pub(crate) struct ReadyState {
    /// Connected to a peer at least once (see the module docs).
    joined: AtomicBool,
    /// Gates of optional components, in the order they were taken.
    gates: Mutex<Vec<ReadyGate>>,
}

impl Daemon {
    /// A readiness gate named `name`, not ready until
    /// [`ReadyGate::set_ready`]: `/v1/ready` fails while any gate is not
    /// ready. Take it before the component starts listening.
    pub fn readiness_gate(&self, name: &str) -> ReadyGate {
        let gate = ReadyGate {
            name: name.into(),
            ok: Arc::new(AtomicBool::new(false)),
        };
        self.inner
            .ready
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(gate.clone());
        gate
    }

    /// Runs every readiness check (see the module docs).
    pub async fn readiness(&self) -> Readiness {
        let inner = &self.inner;
        let mut checks = Vec::new();
        let store_open = inner.store.is_open() && !inner.shutdown.is_cancelled();
        checks.push(ReadyCheck {
            name: "store".into(),
            ok: store_open,
            detail: if store_open {
                format!("open at {}", inner.store.dir().display())
            } else {
                "closed: the node is shutting down".into()
            },
        });
        let (listening, detail) =
            match tokio::time::timeout(SWARM_ANSWER_TIMEOUT, inner.swarm.listen_addrs()).await {
                Ok(Ok(addrs)) if !addrs.is_empty() => (true, format!("listening on {addrs:?}")),
                Ok(Ok(_)) => (false, "no listen address".to_owned()),
                Ok(Err(e)) => (false, format!("swarm task: {e}")),
                Err(_) => (
                    false,
                    format!("swarm task did not answer within {SWARM_ANSWER_TIMEOUT:?}"),
                ),
            };
        checks.push(ReadyCheck {
            name: "swarm".into(),
            ok: listening,
            detail,
        });
        let bootstrap = inner.config.swarm.bootstrap.len();
        let joined = if bootstrap == 0 {
            ReadyCheck {
                name: "joined".into(),
                ok: true,
                detail: "no bootstrap peer configured".into(),
            }
        } else {
            let peers = inner.swarm.connected_peers().await.map(|p| p.len());
            if matches!(peers, Ok(n) if n > 0) {
                inner.ready.joined.store(true, Ordering::SeqCst);
            }
            let ok = inner.ready.joined.load(Ordering::SeqCst);
            ReadyCheck {
                name: "joined".into(),
                ok,
                detail: match (ok, peers) {
                    (_, Ok(n)) if n > 0 => format!("connected to {n} peer(s)"),
                    (true, _) => "joined earlier; no peer connected now".into(),
                    (false, _) => format!(
                        "not connected to any peer yet ({bootstrap} bootstrap address(es) configured)"
                    ),
                },
            }
        };
        checks.push(joined);
        let gates = inner
            .ready
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for gate in gates {
            let ok = gate.ok.load(Ordering::SeqCst);
            checks.push(ReadyCheck {
                name: gate.name.to_string(),
                ok,
                detail: if ok { "ready" } else { "starting" }.into(),
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}
