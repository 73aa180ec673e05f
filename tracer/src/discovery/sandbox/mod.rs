//! Finding sandboxes from the host, read-only.
//!
//! The orchestrator keeps "sandbox id → slot" in memory only, so everything is found from the
//! outside, cheapest first: the VMM by `--api-sock /tmp/fc-<id>-<rand>.sock` in
//! `/proc/*/cmdline` (or E2B's cgroup `/sys/fs/cgroup/e2b/sbx-<id>-<rand>/`), its namespace by
//! the inode of `/proc/<pid>/ns/net`, its tap by its open `/dev/net/tun` fds, then (only for
//! the sandboxes asked for) the namespace's devices over netlink, its DNAT rule, and the host
//! side: the namespace holding the peer of the namespace's veth.
//!
//! `ids` parses names (pure), `vmm` scans /proc and cgroups, `resolve` reads one sandbox's
//! namespace, `host` finds its host side.
mod host;
mod ids;
mod resolve;
mod vmm;

use std::{fs, net::Ipv4Addr, path::Path, sync::Arc};

use anyhow::{Context as _, Result};

pub use ids::{
    MAX_ID_LEN, api_sock_of, e2b_host_ip, id_from_api_sock, id_from_cgroup_name, id_from_proc_cgroup,
    iff_from_fdinfo, is_valid_id, match_id, slot_from_netns,
};
pub use vmm::{E2B_CGROUP_DIR, Skipped, is_tun};

use crate::{error::EnvError, system::firewall::Rulesets, system::netns::Netns};
use host::{HostCache, Shared};
pub use host::{pin_host_side, pinned_host_side};
use resolve::{resolve_in, resolve_vmm};
use vmm::{
    Vmm, cgroup_id_of, cgroup_sandboxes, known_ids, merge_cgroups, scan_vmms, tap_holder_in, vmm_from_cgroup,
};

/// Workers for [`discover_all`]: most of the time goes to iptables-save children and netlink
/// round trips, so a few more than the cores keeps them busy.
const MAX_WORKERS: usize = 8;

/// One sandbox as seen from the host. Every `Option` is None when it could not be found;
/// nothing is guessed.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// E2B: `i` + 20 lowercase alphanumerics, from `--api-sock /tmp/fc-<id>-<rand>.sock` or
    /// the cgroup `sbx-<id>-<rand>`.
    pub id: Option<String>,
    /// The VMM process. None only from [`from_netns`] when no process holds a tap there.
    pub pid: Option<u32>,
    pub api_sock: Option<String>,
    /// The VMM's namespace (path `/var/run/netns/NAME`, or `/proc/PID/ns/net` when unnamed).
    pub netns: Netns,
    pub tap: Option<String>,
    /// Some process (the VMM) holds the tap open: without a reader, frames to the guest die.
    pub tap_held: bool,
    /// The bridge the tap is a port of (not in E2B; other Firecracker setups).
    pub bridge: Option<String>,
    /// The DNAT rule's destination (E2B: 169.254.0.21).
    pub guest_ip: Option<Ipv4Addr>,
    /// The DNAT rule's match address (E2B: 10.11.0.0 + slot).
    pub host_ip: Option<Ipv4Addr>,
    /// N of an E2B namespace name `ns-N`.
    pub slot: Option<u32>,
    /// The veth whose peer lives in another namespace (E2B: eth0).
    pub ns_veth: Option<String>,
    pub ns_veth_ip: Option<Ipv4Addr>,
    /// The namespace of that peer: the root namespace in production, `e2b-host` in the lab.
    pub host_ns: Option<Netns>,
    /// The peer (E2B: veth-N).
    pub host_veth: Option<String>,
    pub host_veth_ip: Option<Ipv4Addr>,
    /// The peer's ifindex in `host_ns`, and the ns veth's in `netns`: what a probe checks
    /// again before it sends (the pair must still be each other's peer).
    pub host_veth_ifindex: Option<u32>,
    pub ns_veth_ifindex: Option<u32>,
    /// The path's devices by index and MAC (what the verdict engine compares hops with).
    pub devices: tracer_model::path::PathDevices,
    /// Why the host side is not known, in plain words (None when it is): the tracer never
    /// guesses it, so nothing is sent or attached there.
    pub host_side_problem: Option<String>,
    /// E2B's datapath, as the namespace's NAT rules say.
    pub datapath: Option<crate::system::firewall::nat::Datapath>,
    /// Inconsistencies found on the way, one sentence each.
    pub warnings: Vec<String>,
    /// The namespace's rulesets as discovery read them (for its DNAT): the trace's baseline
    /// for rule counters, so they are not read twice.
    pub rules: Option<Arc<Rulesets>>,
}

impl Sandbox {
    fn new(vmm: Option<&Vmm>, netns: Netns) -> Self {
        Self {
            id: vmm.and_then(|v| v.id.clone()),
            pid: vmm.map(|v| v.pid),
            api_sock: vmm.and_then(|v| v.api_sock.clone()),
            slot: netns.name.as_deref().and_then(slot_from_netns),
            netns,
            tap: None,
            tap_held: false,
            bridge: None,
            guest_ip: None,
            host_ip: None,
            ns_veth: None,
            ns_veth_ip: None,
            host_ns: None,
            host_veth: None,
            host_veth_ip: None,
            host_veth_ifindex: None,
            ns_veth_ifindex: None,
            host_side_problem: None,
            devices: Default::default(),
            datapath: None,
            warnings: Vec::new(),
            rules: None,
        }
    }

    /// The id, or a stand-in for messages.
    /// A sandbox known only by its namespace (tests).
    #[cfg(test)]
    pub fn bare(netns: Netns) -> Self {
        Self::new(None, netns)
    }

    pub fn label(&self) -> String {
        match (&self.id, self.pid) {
            (Some(id), _) => id.clone(),
            (None, Some(pid)) => format!("pid {pid}"),
            (None, None) => self.netns.label(),
        }
    }
}

/// `--host-netns ARG`: the namespace it names, pinned as every sandbox's host side from now
/// on; a usage error (exit 2, one sentence) when it names no network namespace.
pub fn pin_host_arg(arg: &str) -> Result<Netns> {
    let ns = crate::system::netns::from_arg(arg).map_err(|e| EnvError::Usage(format!("--host-netns {e}")))?;
    pin_host_side(ns.clone());
    Ok(ns)
}

/// Every VMM on this host: processes with `--api-sock` (Firecracker, the lab's lab-vmm), plus
/// E2B's sandbox cgroups. Sorted by slot, then id.
pub fn discover_all() -> Result<Vec<Sandbox>> {
    Ok(discover()?.sandboxes)
}

/// A VMM process as a watcher's frequent scan sees it: cheap to find, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    /// The process's start time (`/proc/PID/stat`, clock ticks since boot): with the pid, it
    /// names one VMM incarnation (pids are reused).
    pub start_ticks: u64,
    pub id: Option<String>,
    vmm: Vmm,
}

/// The VMM candidates running now (`--api-sock` processes and E2B's sandbox cgroups), not
/// vetted: [`vet_and_resolve`] vets and resolves the new ones. Reads only /proc and cgroups.
pub fn scan_running() -> Vec<Running> {
    let mut vmms = vmm::candidates();
    merge_cgroups(&mut vmms, &cgroup_sandboxes());
    vmms.into_iter()
        .filter_map(|v| {
            Some(Running {
                pid: v.pid,
                start_ticks: crate::system::proc::stat(v.pid)?.start_ticks,
                id: v.id.clone(),
                vmm: v,
            })
        })
        .collect()
}

/// Vets and resolves VMMs (namespace, tap, addresses, host side) on a few threads: each with
/// its sandbox, or why it is not one (not a VMM, gone, unreadable).
pub fn vet_and_resolve(running: &[Running]) -> Vec<(Running, Result<Sandbox, String>)> {
    let vmms: Vec<Vmm> = running.iter().map(|r| r.vmm.clone()).collect();
    let shared = Shared::new(Some(&vmms));
    crate::system::pool::map(running, MAX_WORKERS, HostCache::default, |cache, r| {
        let result =
            vmm::vet(r.pid).and_then(|()| resolve_vmm(&r.vmm, &shared, cache).map_err(|e| format!("{e:#}")));
        Some((r.clone(), result))
    })
}

/// What a discovery found, and the candidates it did not take for VMMs.
pub struct Discovery {
    pub sandboxes: Vec<Sandbox>,
    pub skipped: Vec<Skipped>,
}

/// Like [`discover_all`], with the processes that were not taken for VMMs and why.
pub fn discover() -> Result<Discovery> {
    let (mut vmms, skipped) = vmm::scan_vetted();
    merge_cgroups(&mut vmms, &cgroup_sandboxes());
    let shared = Shared::new(Some(&vmms));
    let mut found = resolve_parallel(&vmms, &shared);
    found.sort_by(|a, b| (a.slot, &a.id, a.pid).cmp(&(b.slot, &b.id, b.pid)));
    Ok(Discovery {
        sandboxes: found,
        skipped,
    })
}

/// The sandbox with this id, or with the one id that starts with it (as git and docker take
/// a unique prefix). Only that sandbox's namespace is examined.
pub fn find(arg: &str) -> Result<Sandbox> {
    match lookup(arg, &[])? {
        Lookup::Running(sb) => Ok(*sb),
        Lookup::NotRunning(id) => Err(EnvError::UnknownSandbox {
            id,
            known: Vec::new(),
        }
        .into()),
    }
}

/// What [`lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    Running(Box<Sandbox>),
    /// The id named one of the `remembered` ids, whose VMM is not running.
    NotRunning(String),
}

/// Like [`find`], with ids remembered from earlier discoveries taking part in the prefix match
/// (a sandbox whose VMM died is still worth tracing by its namespace).
pub fn lookup(arg: &str, remembered: &[String]) -> Result<Lookup> {
    if !is_valid_id(arg) {
        return Err(EnvError::MalformedSandboxId(arg.to_string()).into());
    }
    // E2B's cgroup names the sandbox directly; the /proc scan covers every other VMM.
    if let Some(vmm) = vmm_from_cgroup(arg) {
        let shared = Shared::new(None);
        let sb = resolve_vmm(&vmm, &shared, &mut HostCache::default())
            .with_context(|| format!("sandbox {arg}"))?;
        return Ok(Lookup::Running(Box::new(sb)));
    }
    let vmms = scan_vmms();
    let running = known_ids(&vmms);
    let mut known = running.clone();
    known.extend(remembered.iter().cloned());
    known.sort();
    known.dedup();
    let id = match_id(arg, &known).map_err(|e| match e {
        // Only running sandboxes are worth listing as alternatives.
        EnvError::UnknownSandbox { id, .. } => EnvError::UnknownSandbox {
            id,
            known: running.clone(),
        },
        other => other,
    })?;
    let vmm = match vmms.iter().find(|v| v.id.as_deref() == Some(id.as_str())) {
        Some(v) => v.clone(),
        // Only a cgroup names it (no `--api-sock` with the id on any command line).
        None => match vmm_from_cgroup(&id) {
            Some(v) => v,
            None => return Ok(Lookup::NotRunning(id)),
        },
    };
    let shared = Shared::new(Some(&vmms));
    let sb =
        resolve_vmm(&vmm, &shared, &mut HostCache::default()).with_context(|| format!("sandbox {id}"))?;
    Ok(Lookup::Running(Box::new(sb)))
}

/// For VMMs without E2B naming (`--netns`): the VMM is whatever process in that namespace
/// holds a tap, if any; the id is unknown.
pub fn from_netns(name: &str) -> Result<Sandbox> {
    let netns = Netns::named(name).map_err(|e| EnvError::Usage(format!("{e:#}")))?;
    let vmm = tap_holder_in(netns.inode);
    let shared = Shared::new(None);
    let mut sb = resolve_in(vmm.as_ref(), netns, &shared, &mut HostCache::default())?;
    sb.id = None;
    Ok(sb)
}

/// The taps process `pid` holds open (its `/dev/net/tun` fds).
pub fn taps_held_by(pid: u32) -> Vec<String> {
    vmm::held_taps(pid)
}

/// The VMM running in namespace `inode` now, if any: (its id, its pid).
pub fn running_in(inode: u32) -> Option<(Option<String>, u32)> {
    let vmms = scan_vmms();
    let holder = vmms
        .iter()
        .find(|v| vmm::netns_inode_of_pid(v.pid) == Some(inode))
        .cloned()
        .or_else(|| tap_holder_in(inode))?;
    Some((holder.id, holder.pid))
}

/// For VMMs without E2B naming (`--pid`).
pub fn from_pid(pid: u32) -> Result<Sandbox> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| EnvError::Usage(format!("there is no process {pid}")))?;
    let mut vmm = Vmm::from_cmdline(pid, &cmdline).unwrap_or(Vmm {
        pid,
        api_sock: None,
        id: None,
    });
    if vmm.id.is_none() {
        vmm.id = cgroup_id_of(pid);
    }
    let shared = Shared::new(None);
    let mut sb =
        resolve_vmm(&vmm, &shared, &mut HostCache::default()).with_context(|| format!("VMM pid {pid}"))?;
    // Asked for by pid: traced anyway, but said plainly when it does not look like a VMM.
    if let Err(why) = vmm::vet(pid) {
        sb.warnings
            .insert(0, format!("pid {pid} does not look like a VMM: {why}"));
    }
    Ok(sb)
}

/// Resolves every VMM on a few threads. A VMM that vanished meanwhile is left out; other
/// failures are logged and left out (one broken namespace must not hide the others).
fn resolve_parallel(vmms: &[Vmm], shared: &Shared) -> Vec<Sandbox> {
    crate::system::pool::map(
        vmms,
        MAX_WORKERS,
        HostCache::default,
        |cache, vmm| match resolve_vmm(vmm, shared, cache) {
            Ok(sb) => Some(sb),
            Err(_) if !Path::new(&format!("/proc/{}", vmm.pid)).exists() => None,
            Err(e) => {
                tracing::warn!("VMM pid {}: {e:#}", vmm.pid);
                None
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_unknown_ids_are_env_errors() {
        let err = find("Not-An-Id").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<EnvError>(),
                Some(EnvError::MalformedSandboxId(_))
            ),
            "{err:#}"
        );
        let err = find("zzzzzzzzzzzzzzzzzzzz").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<EnvError>(),
                Some(EnvError::UnknownSandbox { .. })
            ),
            "{err:#}"
        );
    }
}
