//! Running `ip`, `tc` and friends, with failures turned into typed errors.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::error::{Result, TestnetError};

/// Renders a command line for error messages and logs.
pub(crate) fn render<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Runs a command to completion, capturing output; returns stdout on success.
pub(crate) fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let out = output(program, args)?;
    check(program, args, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and returns its raw output, success or not.
pub(crate) fn output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    tracing::trace!(command = %render(program, args), "run");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestnetError::io(format!("starting `{}`", render(program, args)), e))
}

/// Turns a non-zero exit into [`TestnetError::Command`].
pub(crate) fn check<S: AsRef<OsStr>>(program: &str, args: &[S], out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(TestnetError::Command {
        command: render(program, args),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Finds a program on PATH (and in the sbin directories, which a non-login
/// root shell may lack).
pub(crate) fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(|p| Path::new(p).to_path_buf()))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Is the effective user root? Read from /proc so that no libc call (and no
/// `unsafe`) is needed.
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Refuses clearly unless we are root and `ip` and `tc` are installed.
pub(crate) fn preflight() -> Result<()> {
    if !is_root() {
        return Err(TestnetError::NotRoot);
    }
    require("ip", "apt-get install iproute2")?;
    require("tc", "apt-get install iproute2")?;
    Ok(())
}

/// Refuses clearly when `tool` is missing.
pub(crate) fn require(tool: &'static str, install: &'static str) -> Result<()> {
    match which(tool) {
        Some(_) => Ok(()),
        None => Err(TestnetError::MissingTool { tool, install }),
    }
}
