//! Guests: one `lab-vmm` per sandbox, started inside the sandbox namespace with a Firecracker
//! style command line (`--api-sock /tmp/fc-<id>-<rand>.sock`), holding tap0 open.
use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    state::SandboxState,
    testing::wait_for,
    topology::{ENVD_PORT, GUEST_IP, GUEST_MAC, TAP_IP, TAP_NAME, TAP_PREFIX},
};

/// What runs behind the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// A userspace TCP/IP stack (smoltcp) on the tap: ready in milliseconds, ~2 MB.
    #[default]
    Userspace,
    /// A real Linux guest under QEMU (TCG): ready in seconds, ~230 MB.
    Qemu,
}

impl GuestKind {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Userspace => "userspace",
            Self::Qemu => "qemu",
        }
    }
    fn ready_timeout(self) -> Duration {
        match self {
            Self::Userspace => Duration::from_secs(10),
            Self::Qemu => Duration::from_secs(120),
        }
    }
}

/// Where `cargo xtask setup` caches the QEMU guest (kernel + initramfs).
pub fn guest_image_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/tracer/guest")
}

/// The lab-vmm binary: $LAB_VMM_BIN, else the workspace's target dir (built by xtask).
pub fn vmm_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LAB_VMM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("lab-vmm"))
        .filter(|p| p.exists())
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .ok_or_else(|| anyhow!("lab-vmm is not built; run `cargo xtask setup` (or cargo build -p lab-vmm)"))
}

/// Starts the guest of `sb` in namespace `netns` and waits until it answers on 49983.
/// Returns the child (its pid is the VMM's pid, as discovery will see it).
pub fn start(sb: &SandboxState, netns: &str, kind: GuestKind) -> Result<Child> {
    let log_path = sb.log_path();
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(vmm_binary()?)
        .arg("--api-sock")
        .arg(sb.api_sock())
        .args(["--tap", TAP_NAME, "--guest", kind.as_arg()])
        .args([
            "--guest-ip",
            &GUEST_IP.to_string(),
            "--prefix",
            &TAP_PREFIX.to_string(),
        ])
        .args(["--gateway", &TAP_IP.to_string(), "--guest-mac", GUEST_MAC])
        .args(["--port", &ENVD_PORT.to_string()]);
    if kind == GuestKind::Qemu {
        let dir = guest_image_dir();
        let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
        if !kernel.exists() || !initrd.exists() {
            bail!(
                "the QEMU guest image is missing in {}; run `cargo xtask setup`",
                dir.display()
            );
        }
        cmd.arg("--kernel").arg(kernel).arg("--initrd").arg(initrd);
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Its own session: a Ctrl-C in the terminal that ran `lab up` must not kill the guests.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start lab-vmm")?;
    wait_ready(&mut child, &log_path, kind.ready_timeout())?;
    Ok(child)
}

/// Waits for the READY line in the guest's log, or its death, or the timeout.
fn wait_ready(child: &mut Child, log: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let ready = wait_for(timeout, Duration::from_millis(5), || {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(Err(anyhow!(
                "guest exited ({status}) before it was ready: {}",
                tail(log)
            )));
        }
        let text = fs::read_to_string(log).unwrap_or_default();
        text.lines().any(|l| l.trim() == "READY").then_some(Ok(()))
    });
    match ready {
        Some(r) => r,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("guest not ready after {:?}: {}", start.elapsed(), tail(log))
        }
    }
}

/// The last lines of a guest log, for error messages.
pub fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// Sends one command on the guest's api socket and returns the reply line.
pub fn control(api_sock: &Path, command: &str) -> Result<String> {
    let mut s = UnixStream::connect(api_sock).with_context(|| format!("connect {}", api_sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{command}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let line = line.trim().to_string();
    if !line.starts_with("ok") {
        bail!("guest refused {command:?}: {line}");
    }
    Ok(line)
}

/// Stops a guest by pid: SIGTERM, then SIGKILL after a grace period. Works for guests started
/// by another process (reparented to init, so `/proc/<pid>` disappears when they exit).
pub fn stop_pid(pid: u32) {
    let alive = || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    // SAFETY: plain signals to a pid we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    // A stopped VMM (a paused-VM fault) handles SIGTERM only once continued.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    if wait_for(Duration::from_secs(5), Duration::from_millis(5), || {
        (!alive()).then_some(())
    })
    .is_none()
    {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_for(Duration::from_secs(5), Duration::from_millis(5), || {
            (!alive()).then_some(())
        });
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// True when `pid` is a running lab-vmm.
pub fn is_lab_vmm(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("lab-vmm"))
        .unwrap_or(false)
        && !is_zombie(pid)
}

/// Every running lab-vmm on the machine (for cleaning up after crashed runs).
pub fn all_lab_vmms() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.first().is_some_and(|a| a.ends_with(b"lab-vmm"))
                })
                .unwrap_or(false)
        })
        .collect()
}
