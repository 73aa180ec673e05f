//! Tearing the lab down: [`Lab::down`], Drop, and `lab down` ([`down_all`]) with crashed runs' leftovers.
use std::{collections::HashMap, fs};

use anyhow::{Result, bail};

use super::Lab;
use crate::{
    guest,
    sh::ip,
    state::{self, LabLock},
    topology::{HOST_NS, LAB_ALIAS},
};

impl Lab {
    /// Tears the lab down (also what Drop does for an owned lab).
    pub fn down(self) -> Result<()> {
        self.down_and_hold().map(drop)
    }

    /// Tears the lab down and keeps it locked, so a test can check that nothing is left
    /// before another lab is built.
    pub fn down_and_hold(mut self) -> Result<Option<LabLock>> {
        self.owned = false;
        self.teardown()?;
        Ok(self._lock.take())
    }

    fn teardown(&mut self) -> Result<()> {
        for i in 0..self.state.sandboxes.len() {
            let _ = self.stop_guest(i);
        }
        let mut errors = Vec::new();
        if self.host().is_none() {
            errors.extend(self.revert_root_faults());
        }
        for sb in &self.state.sandboxes {
            if let Err(e) = delete_netns(&sb.slot.netns()) {
                errors.push(e.to_string());
            }
            let _ = fs::remove_file(sb.log_path());
        }
        match self.host() {
            Some(ns) => {
                if let Err(e) = delete_netns(ns) {
                    errors.push(e.to_string());
                }
            }
            None => errors.extend(self.clean_root_host()),
        }
        state::remove()?;
        if !errors.is_empty() {
            bail!("teardown left errors: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = self.teardown()
        {
            eprintln!("lab: teardown failed: {e:#}");
        }
    }
}

/// `lab down`: removes the lab of the state file and any leftovers of crashed runs (lab-vmm
/// processes, namespaces whose eth0 carries the lab's alias, e2b-host). Safe to run twice.
pub fn down_all() -> Result<()> {
    let lock = LabLock::acquire()?;
    down_all_locked(&lock)
}

/// [`down_all`] for a caller that already holds the lab lock.
pub fn down_all_locked(_lock: &LabLock) -> Result<()> {
    if let Some(state) = state::load()? {
        let lab = Lab {
            state,
            children: HashMap::new(),
            owned: false,
            _lock: None,
        };
        lab.down()?;
    }
    // Guests of the lab are the lab-vmm processes inside the lab's namespaces (not, e.g.,
    // lab-vmm's own tests in theirs).
    let namespaces = lab_namespaces();
    let inodes: Vec<u64> = namespaces
        .iter()
        .filter_map(|ns| netns_inode(&format!("/var/run/netns/{ns}")))
        .collect();
    for pid in guest::all_lab_vmms() {
        if netns_inode(&format!("/proc/{pid}/ns/net")).is_some_and(|i| inodes.contains(&i)) {
            guest::stop_pid(pid);
        }
    }
    for ns in namespaces {
        delete_netns(&ns)?;
    }
    state::remove()
}

pub(super) fn netns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Namespaces the lab made: e2b-host, and ns-N whose eth0 has the lab's alias.
fn lab_namespaces() -> Vec<String> {
    let Ok(out) = ip(None, &["netns", "list"]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            *ns == HOST_NS
                || (ns.starts_with("ns-")
                    && ip(Some(ns), &["link", "show", "eth0"])
                        .is_ok_and(|o| o.contains(&format!("alias {LAB_ALIAS}"))))
        })
        .map(str::to_string)
        .collect()
}

fn delete_netns(ns: &str) -> Result<()> {
    let exists = ip(None, &["netns", "list"])?
        .lines()
        .any(|l| l.split_whitespace().next() == Some(ns));
    if exists {
        ip(None, &["netns", "del", ns])?;
    }
    Ok(())
}
