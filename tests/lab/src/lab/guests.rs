//! The sandboxes' VMMs: starting, stopping, recycling a pooled namespace, signalling one.
use std::fs;

use anyhow::{Result, anyhow, bail};

use super::{Lab, RAND_LEN, random_alnum, random_id};
use crate::{guest, state};

impl Lab {
    pub(super) fn start_guest(&mut self, i: usize) -> Result<()> {
        let sb = self.state.sandboxes[i].clone();
        let child = guest::start(&sb, &sb.slot.netns(), self.state.config.guest)?;
        self.state.sandboxes[i].guest_pid = Some(child.id());
        self.children.insert(sb.slot.0, child);
        state::save(&self.state)
    }

    pub(super) fn stop_guest(&mut self, i: usize) -> Result<()> {
        let slot = self.state.sandboxes[i].slot.0;
        if let Some(pid) = self.state.sandboxes[i].guest_pid.take() {
            guest::stop_pid(pid);
        }
        if let Some(mut child) = self.children.remove(&slot) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.state.sandboxes[i].api_sock());
        state::save(&self.state)
    }

    /// Ends sandbox `i` (its VMM stops) and, after `delay`, starts the next sandbox in the same
    /// pooled namespace with a new id and api socket, as E2B does (it hands `ns-N` to the next
    /// sandbox 3 s after the previous one ends: [`RECYCLE_DELAY`]). Nothing else changes: the
    /// namespace, its rules, faults and conntrack entries stay. `identity` gives the new
    /// (id, rand) instead of random ones. Returns the new id.
    pub fn recycle(
        &mut self,
        i: usize,
        delay: std::time::Duration,
        identity: Option<(String, String)>,
    ) -> Result<String> {
        self.stop_guest(i)?;
        // The delay is what is being simulated, not a wait for a condition.
        std::thread::sleep(delay);
        let (id, rand) = identity.unwrap_or_else(|| (random_id(), random_alnum(RAND_LEN)));
        if self
            .state
            .sandboxes
            .iter()
            .enumerate()
            .any(|(j, s)| j != i && s.id == id)
        {
            bail!("another lab sandbox already has id {id}");
        }
        self.state.sandboxes[i].id = id.clone();
        self.state.sandboxes[i].rand = rand;
        state::save(&self.state)?;
        self.start_guest(i)?;
        Ok(id)
    }

    /// Sends `sig` to sandbox `i`'s VMM (SIGSTOP/SIGCONT: a paused VM).
    /// Sends a signal to sandbox `i`'s VMM (the fault campaign stops and resumes it).
    pub fn signal(&self, i: usize, sig: i32) -> Result<()> {
        self.signal_guest(i, sig)
    }

    pub(super) fn signal_guest(&self, i: usize, sig: i32) -> Result<()> {
        let pid = self.state.sandboxes[i]
            .guest_pid
            .ok_or_else(|| anyhow!("sandbox {i} has no VMM"))?;
        // The VMM and what it runs (QEMU is lab-vmm's child and reads the tap itself).
        for p in std::iter::once(pid).chain(descendants(pid)) {
            // SAFETY: a plain signal to the VMM this lab started, or one of its children.
            if unsafe { libc::kill(p as i32, sig) } != 0 && p == pid {
                bail!("kill {pid}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// How long E2B waits before handing a pooled namespace to the next sandbox.
pub const RECYCLE_DELAY: std::time::Duration = std::time::Duration::from_secs(3);

/// Every descendant of `pid`, from /proc/PID/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten();
        for t in tasks {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}
