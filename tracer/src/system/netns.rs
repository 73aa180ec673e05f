//! Network namespaces: names of inodes, and acting inside one.
//!
//! tcx/netfilter attachment, netlink sockets and TUNSETIFF act in the *calling thread's*
//! namespace: [`Entered`] switches the current thread and switches back on drop. Never hold it
//! across an `.await` (the task could move to another thread).
use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, OnceLock},
};

use anyhow::{Context as _, Result};

pub const NETNS_DIR: &str = "/var/run/netns";

/// A network namespace we can enter: its inode, its name, the file it was found by, and
/// (from its first use on) an open fd that holds on to it.
///
/// The fd is what every later use goes through (entering it, running a tool in it, asking
/// netlink about it): if the name is meanwhile given to another namespace (a slot deleted and
/// recreated), the tracer keeps talking to the namespace it found, and opening a path whose
/// inode changed is an error, never a silent switch. Clones share the fd.
#[derive(Debug, Clone)]
pub struct Netns {
    pub inode: u32,
    /// Name under /var/run/netns, if it has one.
    pub name: Option<String>,
    /// `/var/run/netns/NAME` or `/proc/PID/ns/net`.
    pub path: PathBuf,
    fd: Arc<OnceLock<Result<OwnedFd, String>>>,
}

impl PartialEq for Netns {
    fn eq(&self, other: &Self) -> bool {
        (self.inode, &self.name, &self.path) == (other.inode, &other.name, &other.path)
    }
}

impl Eq for Netns {}

impl Netns {
    /// A namespace known by inode and path; the fd is opened (and the inode checked) at first
    /// use.
    pub fn new(inode: u32, name: Option<String>, path: PathBuf) -> Self {
        Self {
            inode,
            name,
            path,
            fd: Arc::default(),
        }
    }

    /// Opens `path` now: the namespace is held from here on.
    pub fn from_path(path: &Path, name: Option<String>) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let inode = fs_inode(&file).with_context(|| format!("stat {}", path.display()))?;
        let ns = Self::new(inode, name, path.to_path_buf());
        let _ = ns.fd.set(Ok(file.into()));
        Ok(ns)
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

    /// A display name: the netns name, `root` for the node's init namespace when it has
    /// no name, else `netns:<inode>`.
    pub fn label(&self) -> String {
        label_of(self.inode, self.name.as_deref())
    }

    /// True for the node's root (init) namespace: commands there need no `ip netns exec`.
    pub fn is_root(&self) -> bool {
        root_inode() == Some(self.inode)
    }

    /// The fd that holds the namespace, opened at first use.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        let held = self.fd.get_or_init(|| open_checked(&self.path, self.inode));
        match held {
            Ok(fd) => Ok(fd.as_fd()),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    }

    /// Switches this thread into the namespace until the guard drops.
    pub fn enter(&self) -> Result<Entered> {
        Entered::new(self.fd()?, &self.label())
    }

    /// A command that runs inside this namespace (the namespace held, not its path: see the
    /// type's comment).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let held = self.fd.clone();
        let _ = self.fd();
        // SAFETY: pre_exec runs in the forked child before exec; only async-signal-safe calls
        // (setns) are made. The fd stays open while the closure (holding its Arc) lives.
        unsafe {
            cmd.pre_exec(move || match held.get() {
                Some(Ok(fd)) => {
                    if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                }
                _ => Err(io::Error::other("the network namespace could not be opened")),
            });
        }
        cmd
    }
}

/// Opens a namespace file and checks it is still the namespace with `inode`.
fn open_checked(path: &Path, inode: u32) -> Result<OwnedFd, String> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let now = fs_inode(&file).map_err(|e| format!("stat {}: {e}", path.display()))?;
    if now != inode {
        return Err(format!(
            "{} is now another network namespace (inode {now}, was {inode}): the one the tracer found is gone",
            path.display()
        ));
    }
    Ok(file.into())
}

fn fs_inode(file: &File) -> io::Result<u32> {
    Ok(file.metadata()?.ino() as u32)
}

/// Inode of a namespace file.
pub fn inode_of(path: &Path) -> Result<u32> {
    let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(meta.ino() as u32)
}

/// The name a namespace is shown by: its name under /var/run/netns, `root` for the init
/// namespace (pid 1's), else `netns:<inode>`.
pub fn label_of(inode: u32, name: Option<&str>) -> String {
    match name {
        Some(n) => n.to_string(),
        None if root_inode() == Some(inode) => ROOT_LABEL.to_string(),
        None => format!("netns:{inode}"),
    }
}

/// How the node's root namespace is named in output and accepted on the command line.
pub const ROOT_LABEL: &str = "root";

/// The inode of the node's root network namespace (pid 1's), read once.
pub fn root_inode() -> Option<u32> {
    static ROOT: OnceLock<Option<u32>> = OnceLock::new();
    *ROOT.get_or_init(|| inode_of(Path::new("/proc/1/ns/net")).ok())
}

/// The node's root namespace, held open (None when /proc/1 cannot be read).
pub fn root() -> Option<Netns> {
    Netns::from_path(Path::new("/proc/1/ns/net"), None).ok()
}

/// The forms `--host-netns` takes, for messages.
pub const NETNS_ARG_FORMS: &str = "root, /proc/PID/ns/net or a name under /var/run/netns";

/// A namespace as given on the command line (`--host-netns`): `root` (the node's init
/// namespace, pid 1's), an absolute path to a network namespace file (`/proc/PID/ns/net`,
/// `/var/run/netns/NAME`), or a name under /var/run/netns. Held open from here on. Err is one
/// sentence saying what is wrong with `arg`.
pub fn from_arg(arg: &str) -> Result<Netns, String> {
    let bad = |why: String| format!("{arg:?} {why}; give {NETNS_ARG_FORMS}");
    if arg.is_empty() {
        return Err(bad("is empty".into()));
    }
    if arg == ROOT_LABEL {
        let path = Path::new("/proc/1/ns/net");
        let mut ns = open_netns_file(path).map_err(|e| bad(format!("cannot be opened ({e})")))?;
        ns.name = names().get(&ns.inode).cloned();
        return Ok(ns);
    }
    if arg.starts_with('/') {
        let path = Path::new(arg);
        let mut ns = open_netns_file(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => match proc_pid(arg) {
                Some(pid) if !Path::new(&format!("/proc/{pid}")).exists() => {
                    bad(format!("names no namespace: there is no process {pid}"))
                }
                _ => bad("does not exist".into()),
            },
            io::ErrorKind::InvalidInput => bad("is not a network namespace file".into()),
            _ => bad(format!("cannot be opened ({e})")),
        })?;
        ns.name = names().get(&ns.inode).cloned();
        return Ok(ns);
    }
    if arg.contains('/') || arg == "." || arg == ".." || arg.starts_with('-') {
        return Err(bad("is not a namespace name".into()));
    }
    let path = Path::new(NETNS_DIR).join(arg);
    let ns = open_netns_file(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad(format!(
            "is not a network namespace: there is no {}",
            path.display()
        )),
        io::ErrorKind::InvalidInput => bad(format!(
            "is not a network namespace: {} is not a namespace file",
            path.display()
        )),
        _ => bad(format!("cannot be opened ({e})")),
    })?;
    Ok(Netns {
        name: Some(arg.to_string()),
        ..ns
    })
}

/// PID of a `/proc/PID/ns/net` path.
fn proc_pid(path: &str) -> Option<u32> {
    path.strip_prefix("/proc/")?.strip_suffix("/ns/net")?.parse().ok()
}

/// Opens a file and checks that it is a network namespace (`NS_GET_NSTYPE`): InvalidInput
/// when it is anything else.
fn open_netns_file(path: &Path) -> io::Result<Netns> {
    /// `_IO(0xb7, 0x3)` from linux/nsfs.h.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let file = File::open(path)?;
    // SAFETY: an ioctl without argument on an fd we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a network namespace",
        ));
    }
    let inode = fs_inode(&file)?;
    let ns = Netns::new(inode, None, path.to_path_buf());
    let _ = ns.fd.set(Ok(file.into()));
    Ok(ns)
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
        .map(|(inode, name)| Netns::new(inode, Some(name.clone()), Path::new(NETNS_DIR).join(name)))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// While alive, the current thread is in another network namespace.
pub struct Entered {
    home: File,
}

impl Entered {
    fn new(target: BorrowedFd<'_>, label: &str) -> Result<Self> {
        let home = File::open("/proc/thread-self/ns/net").context("open own netns")?;
        // SAFETY: plain syscall on valid fds.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("setns into {label}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_netns_arguments() {
        // Wrong forms: one sentence naming the value and the forms that work.
        for (arg, why) in [
            ("", "is empty"),
            ("a/b", "is not a namespace name"),
            ("..", "is not a namespace name"),
            (
                "no-such-ns-for-a-test",
                "there is no /var/run/netns/no-such-ns-for-a-test",
            ),
            ("/etc/hostname", "is not a network namespace file"),
            ("/proc/self/ns/uts", "is not a network namespace file"),
            ("/nonexistent/netns", "does not exist"),
            ("/proc/4294967294/ns/net", "there is no process 4294967294"),
        ] {
            let err = from_arg(arg).unwrap_err();
            assert!(err.contains(why), "{arg:?}: {err}");
            assert!(err.starts_with(&format!("{arg:?} ")), "{err}");
            assert!(err.ends_with(NETNS_ARG_FORMS), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // A path: this process's namespace.
        let own = from_arg("/proc/self/ns/net").unwrap();
        assert_eq!(own.inode, inode_of(Path::new("/proc/self/ns/net")).unwrap());
        assert!(own.fd().is_ok());
        // `root` is pid 1's namespace (readable as root only, and not in every container).
        if root_inode().is_some() {
            let root = from_arg("root").unwrap();
            assert_eq!(Some(root.inode), root_inode());
            assert!(root.is_root());
            assert_eq!(from_arg("/proc/1/ns/net").unwrap().inode, root.inode);
        }
    }
}
