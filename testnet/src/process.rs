//! Long-running processes inside a testnet namespace, with their own log
//! file and data directory, killed when their handle drops.
//!
//! A process is started as `ip netns exec NS PROGRAM ARGS...` in a new
//! process group; `ip netns exec` execs the program, so the pid we hold is
//! the program's and the group holds its children. Termination sends TERM to
//! the group, waits a grace period, then KILLs it.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{Result, TestnetError};

/// What to run: program, arguments, environment, log file and data dir.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program path or name on PATH. A relative path with a `/` is resolved
    /// against the caller's current directory (the process runs in its data
    /// dir, where the relative path would not resolve).
    pub program: OsString,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (the caller's environment is inherited).
    pub envs: Vec<(OsString, OsString)>,
    /// File receiving stdout and stderr (created or appended to; parent dirs
    /// are created).
    pub log: PathBuf,
    /// Working directory, created if missing, also exported as
    /// `EDGESWARM_TESTNET_DATA_DIR`; `None` keeps the caller's.
    pub data_dir: Option<PathBuf>,
    /// `cgroup.procs` files the process joins before it execs (a device
    /// budget, [`crate::cgroup::Cgroup::procs_files`]); empty: the caller's
    /// cgroups.
    pub cgroup_procs: Vec<PathBuf>,
}

impl SpawnSpec {
    /// Runs `program` with output to `log`.
    pub fn new(program: impl Into<OsString>, log: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            log: log.into(),
            data_dir: None,
            cgroup_procs: Vec::new(),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Sets the working/data directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Runs the process in the cgroup whose `cgroup.procs` files are
    /// `procs` (joined before exec: everything it allocates is charged).
    pub fn cgroup(mut self, procs: Vec<PathBuf>) -> Self {
        self.cgroup_procs = procs;
        self
    }
}

/// A command that writes its own pid to each of `procs` (`cgroup.procs`
/// files), then execs `program` with `args` under the same pid: the
/// program starts inside the cgroup. The join happens in a shell, before
/// `ip netns exec` (which mounts a fresh `/sys` and so hides
/// `/sys/fs/cgroup`), and not in a `pre_exec` hook, where writing a file
/// would allocate in a forked copy of a multi-threaded parent.
pub fn in_cgroup_command(procs: &[PathBuf], program: &OsStr, args: &[OsString]) -> Command {
    // Exit 97 if a join fails: running outside the budget would measure
    // the wrong thing.
    const JOIN: &str =
        r#"while [ "$1" != "--" ]; do echo $$ > "$1" || exit 97; shift; done; shift; exec "$@""#;
    let mut c = Command::new("sh");
    c.args(["-c", JOIN, "sh"])
        .args(procs)
        .arg("--")
        .arg(program)
        .args(args);
    c
}

/// A process running in a testnet namespace. Dropping the handle terminates
/// the process group (TERM, 500 ms grace, KILL) and reaps it.
#[derive(Debug)]
pub struct NetnsProcess {
    child: Child,
    ns: String,
    log: PathBuf,
    data_dir: Option<PathBuf>,
    /// Exit status once reaped, so that drop does not signal a recycled pid.
    exited: Option<ExitStatus>,
    /// Set by [`NetnsProcess::detach`]: drop leaves the process running.
    detached: bool,
}

impl NetnsProcess {
    #[tracing::instrument(skip_all, fields(%ns, program = ?spec.program))]
    pub(crate) fn spawn(ns: &str, spec: SpawnSpec) -> Result<Self> {
        let mut program = spec.program.clone();
        let p = Path::new(&spec.program);
        if p.is_relative() && p.components().count() > 1 {
            program = std::fs::canonicalize(p)
                .map_err(|e| TestnetError::io(format!("resolving program {}", p.display()), e))?
                .into_os_string();
        }
        if let Some(parent) = spec.log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                TestnetError::io(format!("creating log dir {}", parent.display()), e)
            })?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| TestnetError::io(format!("opening log {}", spec.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| TestnetError::io("duplicating log handle", e))?;
        let mut ip_args: Vec<OsString> = vec!["netns".into(), "exec".into(), ns.into(), program];
        ip_args.extend(spec.args.iter().cloned());
        let mut c = if spec.cgroup_procs.is_empty() {
            let mut c = Command::new("ip");
            c.args(&ip_args);
            c
        } else {
            in_cgroup_command(&spec.cgroup_procs, OsStr::new("ip"), &ip_args)
        };
        c.envs(spec.envs.iter().map(|(k, v)| (k, v)));
        c.env("EDGESWARM_TESTNET_NS", ns);
        if let Some(dir) = &spec.data_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| TestnetError::io(format!("creating data dir {}", dir.display()), e))?;
            c.current_dir(dir).env("EDGESWARM_TESTNET_DATA_DIR", dir);
        }
        c.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = c
            .spawn()
            .map_err(|e| TestnetError::io(format!("spawning {:?} in {ns}", spec.program), e))?;
        tracing::debug!(pid = child.id(), log = %spec.log.display(), "spawned");
        Ok(Self {
            child,
            ns: ns.to_string(),
            log: spec.log,
            data_dir: spec.data_dir,
            exited: None,
            detached: false,
        })
    }

    /// Process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Its log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its data directory, if one was given.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// The last `max` bytes of the log, for error messages.
    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// The exit status if the process has exited; does not block.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(|e| TestnetError::io("waiting for child", e))?;
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running. Blocks the calling thread (use `spawn_blocking` from async).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Leaves the process running after this handle drops (for the CLI,
    /// whose `up` outlives itself); `down` still kills it with its
    /// namespace. Returns its pid.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.pid()
    }

    /// TERM to the process group, wait up to `grace`, then KILL; reaps it.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        let group = format!("-{}", self.pid());
        let _ = cmd::output("kill", &["-s", "TERM", "--", &group]);
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok(s);
        }
        let _ = cmd::output("kill", &["-s", "KILL", "--", &group]);
        let _ = self.child.kill();
        let s = self
            .child
            .wait()
            .map_err(|e| TestnetError::io("reaping child", e))?;
        self.exited = Some(s);
        Ok(s)
    }
}

impl Drop for NetnsProcess {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(e) = self.terminate(Duration::from_millis(500)) {
            tracing::warn!(pid = self.pid(), error = %e, "terminating process on drop");
        }
    }
}
