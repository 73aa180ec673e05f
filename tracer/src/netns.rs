//! Network namespaces: names of inodes, and acting inside one.
//!
//! tcx/netfilter attachment, netlink sockets and TUNSETIFF act in the *calling thread's*
//! namespace: [`Entered`] switches the current thread and switches back on drop. Never hold it
//! across an `.await` (the task could move to another thread).
use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

pub const NETNS_DIR: &str = "/var/run/netns";

/// A network namespace we can enter: its inode and a file that pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    /// Name under /var/run/netns, if it has one.
    pub name: Option<String>,
    /// `/var/run/netns/NAME` or `/proc/PID/ns/net`.
    pub path: PathBuf,
}

impl Netns {
    pub fn from_path(path: &Path, name: Option<String>) -> Result<Self> {
        Ok(Self {
            inode: inode_of(path)?,
            name,
            path: path.to_path_buf(),
        })
    }

    /// The namespace of this process (the "root" namespace when run from the host).
    pub fn current() -> Result<Self> {
        let mut ns = Self::from_path(Path::new("/proc/self/ns/net"), None)?;
        ns.name = names().get(&ns.inode).cloned();
        Ok(ns)
    }

    /// By name under /var/run/netns.
    pub fn named(name: &str) -> Result<Self> {
        let path = Path::new(NETNS_DIR).join(name);
        Self::from_path(&path, Some(name.to_string()))
            .with_context(|| format!("network namespace {name} does not exist ({})", path.display()))
    }

    /// A display name: the netns name, else `netns:<inode>`.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("netns:{}", self.inode))
    }

    /// Switches this thread into the namespace until the guard drops.
    pub fn enter(&self) -> Result<Entered> {
        Entered::new(&self.path)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let path = self.path.clone();
        // SAFETY: pre_exec runs in the forked child before exec; only async-signal-safe calls
        // (open, setns) are made.
        unsafe {
            cmd.pre_exec(move || {
                let f = File::open(&path)?;
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

/// Inode of a namespace file.
pub fn inode_of(path: &Path) -> Result<u32> {
    let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(meta.ino() as u32)
}

/// Inode → name for every namespace under /var/run/netns.
pub fn names() -> HashMap<u32, String> {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((inode_of(&e.path()).ok()?, name))
        })
        .collect()
}

/// All named namespaces.
pub fn all_named() -> Vec<Netns> {
    let mut v: Vec<Netns> = names()
        .into_iter()
        .map(|(inode, name)| Netns {
            inode,
            path: Path::new(NETNS_DIR).join(&name),
            name: Some(name),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// While alive, the current thread is in another network namespace.
pub struct Entered {
    home: File,
}

impl Entered {
    fn new(target: &Path) -> Result<Self> {
        let home = File::open("/proc/thread-self/ns/net").context("open own netns")?;
        let target_file = File::open(target).with_context(|| format!("open netns {}", target.display()))?;
        // SAFETY: plain syscall on valid fds.
        if unsafe { libc::setns(target_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("setns into {}", target.display()));
        }
        Ok(Self { home })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: plain syscall on a valid fd. Failing to return would leave this thread in the
        // wrong namespace for the rest of the process: that must not go unnoticed.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot return to the original network namespace: {}",
                io::Error::last_os_error()
            );
        }
    }
}
