//! Running the system tools (ip, iptables, nft, sysctl) the way an operator would, inside a
//! given namespace, with errors that show the command and its stderr.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs `program args...` inside `netns` (None = the current namespace).
pub fn run_in(netns: Option<&str>, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = command_in(netns, program, args);
    output(&mut cmd, None)
}

/// Like [`run_in`], with `stdin` fed to the command (iptables-restore, nft -f -).
pub fn run_in_with_input(netns: Option<&str>, program: &str, args: &[&str], stdin: &str) -> Result<String> {
    let mut cmd = command_in(netns, program, args);
    output(&mut cmd, Some(stdin))
}

/// `ip netns exec NS program args...`, or the program itself.
pub fn command_in(netns: Option<&str>, program: &str, args: &[&str]) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]).args(args);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    }
}

fn output(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {}", show(cmd)))?;
    if let Some(input) = stdin {
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            show(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line as text.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip -n NS args...` (or `ip args...`).
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut full: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    run_in(None, "ip", &full)
}

/// Writes a sysctl inside a namespace.
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    sysctl_in(Some(netns), key, value)
}

/// Writes a sysctl inside `netns` (None = the current namespace).
pub fn sysctl_in(netns: Option<&str>, key: &str, value: &str) -> Result<()> {
    run_in(netns, "sysctl", &["-q", "-w", &format!("{key}={value}")]).map(|_| ())
}

/// Reads a sysctl inside a namespace.
pub fn sysctl_get(netns: &str, key: &str) -> Result<String> {
    sysctl_get_in(Some(netns), key)
}

/// Reads a sysctl inside `netns` (None = the current namespace).
pub fn sysctl_get_in(netns: Option<&str>, key: &str) -> Result<String> {
    Ok(run_in(netns, "sysctl", &["-n", key])?.trim().to_string())
}
