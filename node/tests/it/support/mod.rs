//! Support shared by every test of this binary. The concern-specific parts
//! live in submodules (swarm nodes, registries, daemons, image imports);
//! what every kind of test needs is here: one tracing set-up, one image
//! push, one poll-until-true with a timeout, and a join that fails the test
//! when a spawned task panicked.

use std::fmt::Display;
use std::time::Duration;

use edgeswarm_node::registry::testing::{BuiltImage, Pusher, TestRegistry};
use tokio::task::JoinHandle;

pub(crate) mod daemon;
pub(crate) mod import;
pub(crate) mod registry;
pub(crate) mod swarm;

/// Logs to the test's captured output. The subscriber is process-wide and
/// only the first call installs it, so every test gets the same filter:
/// warnings by default (the 20-node swarm tests would log a lot at info),
/// `RUST_LOG=info,libp2p=warn` to see a failing test's story.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Pushes `image` to `registry` as `repo:tag` and returns its reference.
pub(crate) async fn push(
    registry: &TestRegistry,
    repo: &str,
    tag: &str,
    image: &BuiltImage,
) -> String {
    Pusher::new(&registry.host(), None)
        .unwrap()
        .push_image(repo, Some(tag), image)
        .await
        .unwrap();
    format!("{}/{repo}:{tag}", registry.host())
}

/// Polls `probe` until it returns `Ok` and returns that value; panics after
/// `timeout` with `what` and the last `Err` (what was seen instead), so a
/// timed-out wait says what it was waiting for. The pause between polls
/// starts short, so fast conditions are seen quickly (failover stops a
/// pull half way), and grows to a quarter second, so slow polls (a CLI
/// process each) do not load the machine.
pub(crate) async fn eventually<T, E: Display>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not so after {timeout:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Flips one byte of a file on disk, behind the store's back (rot), and
/// syncs it.
pub(crate) fn corrupt(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

/// Awaits a spawned task and returns its output; a panic in the task is
/// raised again here, so a node task that panicked fails the test instead
/// of being dropped with the join error.
pub(crate) async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task did not finish: {e}"),
    }
}
