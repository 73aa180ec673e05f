//! Throwaway places for agents and their probes: a network namespace of our own
//! ([`ScratchNetns`]) and a cgroup of our own ([`ScratchCgroup`]), each removed on drop, and
//! where cgroup2 is mounted.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// `prefix-PID-N`: unique on this machine while this process lives.
fn scratch_name(prefix: &str) -> String {
    let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A network namespace of our own with its loopback up, deleted on drop.
pub struct ScratchNetns {
    name: String,
}

impl ScratchNetns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = scratch_name(prefix);
        crate::sh::ip(None, &["netns", "add", &name])?;
        let ns = Self { name };
        crate::sh::ip(Some(&ns.name), &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        if let Err(e) = crate::sh::ip(None, &["netns", "del", &self.name]) {
            eprintln!("scratch netns: {e:#}");
        }
    }
}

/// A cgroup of our own under the cgroup2 mount, removed on drop (once its processes have
/// exited: the caller reaps them first).
pub struct ScratchCgroup {
    path: PathBuf,
}

impl ScratchCgroup {
    pub fn new(prefix: &str) -> Result<Self> {
        let path = cgroup2_mount()?.join(scratch_name(prefix));
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        // A reaped child can still count as a member for a moment (EBUSY): wait, bounded.
        let gone = crate::testing::wait_for(Duration::from_secs(2), Duration::from_millis(10), || {
            match fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => None,
                r => Some(r),
            }
        });
        match gone {
            Some(Ok(())) => {}
            Some(Err(e)) => eprintln!("scratch cgroup {}: {e}", self.path.display()),
            None => eprintln!("scratch cgroup {}: still busy", self.path.display()),
        }
    }
}

/// Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    cgroup2_in(&info).context("no cgroup2 mount in /proc/self/mountinfo")
}

/// mountinfo: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
fn cgroup2_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount)))
    })
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok());
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_read_from_mountinfo() {
        let info = "25 1 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
                    41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_in(info), Some(PathBuf::from("/sys/fs/cgroup/uni fied")));
        assert_eq!(cgroup2_in("25 1 0:22 / /x rw - tmpfs tmpfs rw\n"), None);
    }
}
