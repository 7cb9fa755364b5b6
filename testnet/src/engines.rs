//! Private Docker engines, one per node of a trial, for the fault suite's
//! `--import docker`: each node imports into an engine of its own (its
//! `DOCKER_HOST`), so that "the image is there and runs" and "no helper tag
//! leaked" are facts about that node, not about whichever node of a shared
//! engine loaded the image first.
//!
//! Each engine is a real `dockerd` (Debian's docker.io) on the host, with
//! its own data root under the suite's work dir, its own exec root and
//! socket under `/run/edgeswarm-<name>-d<i>/` (short: a unix socket path
//! must fit 108 bytes), no bridge and no iptables rules (the suite's
//! containers run with `--network none`); it supervises a containerd of
//! its own. Engines are stopped (TERM, then KILL) and their exec roots
//! removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, TestnetError};

/// Where the suite's import helpers are tagged (the node's default).
pub const HELPER_REPO: &str = edgeswarm_node::import::DEFAULT_HELPER_REPO;

/// How long an engine may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One running private engine.
pub struct Engine {
    /// Its `dockerd`.
    child: Child,
    /// Its socket.
    socket: PathBuf,
    /// Its exec root's parent (socket, pid file, runtime state).
    run_dir: PathBuf,
}

/// The command line of a private engine with data root `data` and run
/// directory `run` (socket `run/docker.sock`).
pub fn dockerd_args(data: &Path, run: &Path) -> Vec<String> {
    vec![
        format!("--data-root={}", data.display()),
        format!("--exec-root={}", run.join("exec").display()),
        format!("--pidfile={}", run.join("docker.pid").display()),
        format!("--host=unix://{}", run.join("docker.sock").display()),
        "--bridge=none".into(),
        "--iptables=false".into(),
        "--ip-masq=false".into(),
        "--log-level=warn".into(),
    ]
}

impl Engine {
    /// Starts engine `index` of testnet `name`, its data under `data`,
    /// its log in `log`, and waits until it answers.
    pub fn start(name: &str, index: usize, data: &Path, log: &Path) -> Result<Engine> {
        crate::cmd::require("dockerd", "apt-get install docker.io")?;
        crate::cmd::require("docker", "apt-get install docker.io")?;
        let run_dir = PathBuf::from(format!("/run/edgeswarm-{name}-d{index}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        for dir in [&run_dir, &data.to_path_buf()] {
            std::fs::create_dir_all(dir)
                .map_err(|e| TestnetError::io(format!("creating {}", dir.display()), e))?;
        }
        let log_file = std::fs::File::create(log)
            .map_err(|e| TestnetError::io(format!("creating {}", log.display()), e))?;
        let stderr = log_file
            .try_clone()
            .map_err(|e| TestnetError::io("cloning a log handle", e))?;
        let child = Command::new("dockerd")
            .args(dockerd_args(data, &run_dir))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .map_err(|e| TestnetError::io("starting dockerd", e))?;
        let mut engine = Engine {
            child,
            socket: run_dir.join("docker.sock"),
            run_dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = engine.child.try_wait() {
                return Err(TestnetError::Experiment(format!(
                    "private dockerd {index} exited ({status}); log: {}",
                    log.display()
                )));
            }
            if engine
                .docker(&["version", "--format", "{{.Server.Version}}"])?
                .0
            {
                return Ok(engine);
            }
            if Instant::now() > deadline {
                return Err(TestnetError::Timeout {
                    what: format!("private dockerd {index} (log {})", log.display()),
                    after: START_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `DOCKER_HOST` of this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `docker` against this engine: (success, stdout, stderr).
    pub fn docker(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let host = self.host();
        let mut all = vec!["--host", host.as_str()];
        all.extend_from_slice(args);
        let out = crate::cmd::output("docker", &all)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }

    /// Removes `reference` and every helper tag, so the next trial imports
    /// from nothing.
    pub fn reset(&self, reference: &str) -> Result<()> {
        let mut tags = self.helper_tags()?;
        tags.push(reference.to_owned());
        let mut args = vec!["rmi", "--force"];
        args.extend(tags.iter().map(String::as_str));
        // "No such image" for a reference not loaded is fine.
        self.docker(&args)?;
        Ok(())
    }

    /// Tags in the helper repository.
    pub fn helper_tags(&self) -> Result<Vec<String>> {
        let format = "{{.Repository}}:{{.Tag}}";
        let (ok, out, err) = self.docker(&["images", "--format", format, HELPER_REPO])?;
        if !ok {
            return Err(TestnetError::Experiment(format!(
                "listing helper tags: {err}"
            )));
        }
        Ok(helper_tags(&out))
    }

    /// Checks that `reference` is loaded as the image whose config digest
    /// is `config` and that it runs (`--network none`), printing `expect`.
    pub fn check_image(&self, reference: &str, config: &str, expect: &str) -> Result<(), String> {
        let id = self
            .docker(&["image", "inspect", "--format", "{{.Id}}", reference])
            .map_err(|e| e.to_string())?;
        let run = self
            .docker(&["run", "--rm", "--network", "none", reference])
            .map_err(|e| e.to_string())?;
        judge_image(
            id.0.then_some(id.1.as_str()),
            config,
            (run.0, &run.1, &run.2),
            expect,
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        // dockerd stops its containerd on TERM.
        let _ = crate::cmd::output("kill", &["-s", "TERM", &pid]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Helper tags in `docker images --format {{.Repository}}:{{.Tag}}`
/// output (`<none>` tags are not tags).
pub fn helper_tags(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&format!("{HELPER_REPO}:")) && !l.ends_with(":<none>"))
        .map(str::to_owned)
        .collect()
}

/// The image check of one node: `id` from `docker image inspect` (None:
/// not there) must be the config digest `config`, and the container run
/// `(success, stdout, stderr)` must succeed printing `expect`.
pub fn judge_image(
    id: Option<&str>,
    config: &str,
    run: (bool, &str, &str),
    expect: &str,
) -> Result<(), String> {
    match id {
        None => return Err("image not in Docker".into()),
        Some(id) if id != config => {
            return Err(format!(
                "image id {id}, expected the config digest {config}"
            ))
        }
        Some(_) => {}
    }
    let (ok, out, err) = run;
    if !ok {
        return Err(format!("docker run failed: {err}"));
    }
    if !out.contains(expect) {
        return Err(format!("docker run printed {out:?}, expected {expect:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_keeps_everything_under_its_own_roots() {
        let args = dockerd_args(Path::new("/w/docker/n1"), Path::new("/run/edgeswarm-f-d1"));
        assert!(args.contains(&"--data-root=/w/docker/n1".to_owned()));
        assert!(args.contains(&"--exec-root=/run/edgeswarm-f-d1/exec".to_owned()));
        assert!(args.contains(&"--host=unix:///run/edgeswarm-f-d1/docker.sock".to_owned()));
        assert!(args.contains(&"--pidfile=/run/edgeswarm-f-d1/docker.pid".to_owned()));
        // No bridge or NAT rules of its own on the host.
        assert!(args.contains(&"--bridge=none".to_owned()));
        assert!(args.contains(&"--iptables=false".to_owned()));
    }

    #[test]
    fn helper_tags_are_found_in_a_listing() {
        let listing = format!(
            "testnet/img30:v1\n{HELPER_REPO}:0a1b2c3d4e5f-0123456789abcdef-0\n\
             {HELPER_REPO}:<none>\nother/{HELPER_REPO}:x\n"
        );
        assert_eq!(
            helper_tags(&listing),
            [format!("{HELPER_REPO}:0a1b2c3d4e5f-0123456789abcdef-0")]
        );
        assert!(helper_tags("").is_empty());
    }

    #[test]
    fn an_image_passes_only_with_its_config_digest_and_a_clean_run() {
        let ok = (true, "edgeswarm app v1", "");
        assert_eq!(
            judge_image(Some("sha256:c"), "sha256:c", ok, "app v1"),
            Ok(())
        );
        let missing = judge_image(None, "sha256:c", ok, "app v1").unwrap_err();
        assert!(missing.contains("not in Docker"), "{missing}");
        let other = judge_image(Some("sha256:d"), "sha256:c", ok, "app v1").unwrap_err();
        assert!(other.contains("expected the config digest"), "{other}");
        let failed = judge_image(
            Some("sha256:c"),
            "sha256:c",
            (false, "", "exec format error"),
            "app v1",
        )
        .unwrap_err();
        assert!(failed.contains("exec format error"), "{failed}");
        let wrong = judge_image(
            Some("sha256:c"),
            "sha256:c",
            (true, "edgeswarm app v2", ""),
            "app v1",
        )
        .unwrap_err();
        assert!(wrong.contains("expected"), "{wrong}");
    }
}
