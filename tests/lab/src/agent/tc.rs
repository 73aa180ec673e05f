//! Classic tc: the program handed to `tc filter add ... bpf da object-pinned PATH` on a clsact
//! qdisc, as an operator's script or an older agent does it. tc runs in the caller's network
//! namespace (lab-agent has entered the target's).
use std::{os::fd::OwnedFd, path::Path};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::sys;
use crate::sh::run_in;

/// Filters get preferences from here up: far from tc's own choices (49152 is its first
/// automatic one, counting down) and from hand-written ones (1, 10, 100...).
const FIRST_PREF: u32 = 40000;

/// A filter this agent added, and whether the clsact qdisc under it was its own too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcFilter {
    pub dev: String,
    /// "ingress" or "egress".
    pub direction: String,
    pub pref: u32,
    pub created_qdisc: bool,
}

fn tc(netns: Option<&str>, args: &[&str]) -> Result<String> {
    run_in(netns, "tc", args)
}

/// Adds `prog` as a direct-action cls_bpf filter on `dev`, with a clsact qdisc if none is
/// there yet. Changes the calling process's mount namespace (see [`with_pinned`]).
pub fn add(dev: &str, direction: &str, prog: &OwnedFd) -> Result<TcFilter> {
    let created_qdisc = ensure_clsact(dev, direction)?;
    let mut filter = TcFilter {
        dev: dev.to_string(),
        direction: direction.to_string(),
        pref: 0,
        created_qdisc,
    };
    let added = free_pref(dev, direction).and_then(|pref| {
        filter.pref = pref;
        with_pinned(prog, |path| {
            let (p, path) = (pref.to_string(), path.to_string_lossy());
            let args = ["filter", "add", "dev", dev, direction, "pref", &p, "handle", "1"];
            let bpf = ["bpf", "da", "object-pinned", &path];
            tc(None, &[&args[..], &bpf[..]].concat()).context("cls_bpf filter (is cls_bpf in this kernel?)")
        })
    });
    if let Err(e) = added {
        if created_qdisc {
            let _ = tc(None, &["qdisc", "del", "dev", dev, "clsact"]);
        }
        return Err(e);
    }
    Ok(filter)
}

/// A clsact qdisc on `dev`: true when we added it. An ingress qdisc serves an ingress filter
/// (the `ingress` parent names its block too); egress needs clsact.
fn ensure_clsact(dev: &str, direction: &str) -> Result<bool> {
    let shown = tc(None, &["qdisc", "show", "dev", dev])?;
    let has = |kind: &str| shown.lines().any(|l| l.starts_with(&format!("qdisc {kind} ")));
    if has("clsact") {
        return Ok(false);
    }
    if has("ingress") {
        if direction == "ingress" {
            return Ok(false);
        }
        bail!("{dev} has an ingress qdisc: an egress filter needs clsact instead");
    }
    match tc(None, &["qdisc", "add", "dev", dev, "clsact"]) {
        Ok(_) => Ok(true),
        // Another agent on this device added it meanwhile: it is theirs to delete.
        Err(_) if tc(None, &["qdisc", "show", "dev", dev])?.contains("qdisc clsact ") => Ok(false),
        Err(e) => Err(e.context("clsact qdisc (is sch_ingress in this kernel?)")),
    }
}

/// The first preference from [`FIRST_PREF`] that no filter of this direction has.
fn free_pref(dev: &str, direction: &str) -> Result<u32> {
    let shown = tc(None, &["filter", "show", "dev", dev, direction])?;
    let used = prefs(&shown);
    Ok((FIRST_PREF..).find(|p| !used.contains(p)).unwrap_or(FIRST_PREF))
}

/// The numbers after "pref" in `tc filter show`.
fn prefs(shown: &str) -> Vec<u32> {
    let words: Vec<&str> = shown.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "pref")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

/// Runs `f` with `prog` pinned on a bpffs of our own, then unpins and unmounts it.
///
/// The bpffs is a fresh instance mounted over /sys/fs/bpf in a private mount namespace of
/// this process: the machine's bpffs (mounted or not) is never touched, and a process killed
/// midway leaves no pin and no mount behind, since both die with its namespace. unshare
/// refuses a multithreaded process: this is for lab-agent's single thread.
fn with_pinned<T>(prog: &OwnedFd, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    private_bpffs()?;
    let pin = Path::new(BPFFS).join(format!("agent_tc_{}", std::process::id()));
    sys::obj_pin(prog, &pin)?;
    let out = f(&pin);
    let _ = std::fs::remove_file(&pin);
    let dir = std::ffi::CString::new(BPFFS)?;
    // SAFETY: a valid C string; detaching our own mount.
    unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
    out
}

const BPFFS: &str = "/sys/fs/bpf";

fn private_bpffs() -> Result<()> {
    let err = || std::io::Error::last_os_error();
    // SAFETY: plain syscalls with valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err()).context("unshare(CLONE_NEWNS)");
        }
        // Private first: a mount in a copy of shared mounts would propagate back to the host.
        let root = c"/";
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            return Err(err()).context("make / private");
        }
        let (src, dir, fstype) = (c"bpffs", c"/sys/fs/bpf", c"bpf");
        let opts = c"mode=0700";
        if libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        ) != 0
        {
            return Err(err()).context("mount a bpffs on /sys/fs/bpf");
        }
    }
    Ok(())
}

/// Device gone (its namespace deleted first): nothing left to delete.
fn gone(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("Cannot find device") || s.contains("Cannot open network namespace")
}

impl TcFilter {
    /// Deletes the filter, and the qdisc if it was ours and nothing else hangs on it.
    pub fn remove(&self, netns: Option<&str>) -> Result<()> {
        let (dev, pref) = (self.dev.as_str(), self.pref.to_string());
        let r = tc(
            netns,
            &["filter", "del", "dev", dev, &self.direction, "pref", &pref],
        );
        match r {
            Err(e) if gone(&e) => return Ok(()),
            r => r?,
        };
        if !self.created_qdisc {
            return Ok(());
        }
        for dir in ["ingress", "egress"] {
            if !tc(netns, &["filter", "show", "dev", dev, dir])?.trim().is_empty() {
                return Ok(());
            }
        }
        tc(netns, &["qdisc", "del", "dev", dev, "clsact"]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefs_are_read_from_tc_filter_show() {
        let shown = "filter protocol all pref 40000 bpf chain 0 \n\
                     filter protocol all pref 40000 bpf chain 0 handle 0x1 agent_tci_drop direct-action\n\
                     filter protocol ip pref 49152 u32 chain 0\n";
        assert_eq!(prefs(shown), vec![40000, 40000, 49152]);
        assert!(prefs("").is_empty());
    }
}
