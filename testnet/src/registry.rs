//! A real registry (Debian's `docker-registry`, CNCF distribution 2.8) in
//! the cloud namespace of a testnet.
//!
//! It listens on the cloud address ([`crate::topology::CLOUD_ADDR`]) so that
//! every byte a node pulls from it crosses that node's locality cloud link,
//! where the counters see it. Storage is a directory of the caller's or a
//! temporary one removed on drop.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{Result, TestnetError};
use crate::process::{NetnsProcess, SpawnSpec};
use crate::topology::Topology;

/// Default registry port.
pub const DEFAULT_PORT: u16 = 5000;

/// How to run the registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// TCP port on the cloud address.
    pub port: u16,
    /// Storage root (`storage.filesystem.rootdirectory`); a temporary
    /// directory, removed on drop, when `None`.
    pub root_dir: Option<PathBuf>,
    /// Where the config file and the log go; a temporary directory when
    /// `None`.
    pub work_dir: Option<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            root_dir: None,
            work_dir: None,
        }
    }
}

/// A running registry; stopped (and its temporary storage removed) on drop.
#[derive(Debug)]
pub struct Registry {
    // Field order matters: the process must die before its temp dir goes.
    process: NetnsProcess,
    addr: SocketAddrV4,
    root_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Registry {
    /// Writes a config and starts `docker-registry serve` in the cloud
    /// namespace. Does not wait: call [`Registry::wait_ready`].
    pub fn start(topo: &Topology, opts: RegistryOptions) -> Result<Registry> {
        cmd::require("docker-registry", "apt-get install docker-registry")?;
        let tmp = if opts.root_dir.is_none() || opts.work_dir.is_none() {
            Some(
                tempfile::Builder::new()
                    .prefix("es-registry-")
                    .tempdir()
                    .map_err(|e| TestnetError::io("creating temp dir", e))?,
            )
        } else {
            None
        };
        let base = tmp.as_ref().map(|t| t.path().to_path_buf());
        let root_dir = opts
            .root_dir
            .unwrap_or_else(|| base.clone().expect("tmp exists").join("storage"));
        let work_dir = opts.work_dir.unwrap_or_else(|| base.expect("tmp exists"));
        for d in [&root_dir, &work_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| TestnetError::io(format!("creating {}", d.display()), e))?;
        }
        let addr = SocketAddrV4::new(topo.cloud().addr, opts.port);
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            root_dir.display()
        );
        let cfg_path = work_dir.join("registry.yml");
        std::fs::write(&cfg_path, config)
            .map_err(|e| TestnetError::io(format!("writing {}", cfg_path.display()), e))?;
        let spec = SpawnSpec::new("docker-registry", work_dir.join("registry.log"))
            .arg("serve")
            .arg(&cfg_path)
            .data_dir(&work_dir);
        let process = topo.spawn(&topo.cloud().ns, spec)?;
        tracing::info!(%addr, root = %root_dir.display(), "registry started");
        Ok(Registry {
            process,
            addr,
            root_dir,
            _tmp: tmp,
        })
    }

    /// Polls `GET /v2/` with curl from namespace `from_ns` (normally a node's,
    /// proving the route through the cloud link) until it answers 200.
    pub fn wait_ready(&mut self, topo: &Topology, from_ns: &str, timeout: Duration) -> Result<()> {
        cmd::require("curl", "apt-get install curl")?;
        let url = format!("{}/v2/", self.url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Err(TestnetError::Command {
                    command: "docker-registry serve".into(),
                    status: status.to_string(),
                    stderr: self.process.log_tail(2000),
                });
            }
            let out = topo.exec_output(
                from_ns,
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                    &url,
                ],
            )?;
            if String::from_utf8_lossy(&out.stdout).trim() == "200" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestnetError::Timeout {
                    what: format!("{url} answering 200 from {from_ns}"),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Base URL, e.g. `http://10.77.250.1:5000`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port` for image references (`10.77.250.1:5000/app:1`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Storage root.
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// The registry process (log path, pid, stop).
    pub fn process(&mut self) -> &mut NetnsProcess {
        &mut self.process
    }
}
