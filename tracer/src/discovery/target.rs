//! From what the operator typed (--vm, --netns, --pid) to a sandbox and its expected path.
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Result;
use tracer_model::path::{ExpectedPath, NsRef};

use crate::{
    cli::TraceArgs,
    discovery::cache,
    discovery::sandbox::{self, Sandbox},
    error::EnvError,
    system::connect::ProbeSite,
    system::netns::Netns,
};

/// E2B's defaults, used when the namespace's rules do not say (e.g. the DNAT is the fault).
const DEFAULT_GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);

/// The sandbox named on the command line, or None for the plain drop log.
pub fn sandbox_of(args: &TraceArgs) -> Result<Option<Sandbox>> {
    if let Some(id) = &args.vm {
        return find_by_id(id).map(Some);
    }
    if let Some(name) = &args.netns {
        return sandbox::from_netns(name).map(Some);
    }
    if let Some(pid) = args.pid {
        return sandbox::from_pid(pid).map(Some);
    }
    Ok(None)
}

/// A sandbox by id (or unique prefix): its running VMM, else the namespace it was last seen
/// in (the VMM may be exactly what died).
pub fn find_by_id(arg: &str) -> Result<Sandbox> {
    let seen = cache::ids();
    match sandbox::lookup(arg, &seen)? {
        sandbox::Lookup::Running(sb) => {
            cache::remember(&[&sb]);
            Ok(*sb)
        }
        sandbox::Lookup::NotRunning(id) => in_its_namespace(arg, &id),
    }
}

/// A sandbox whose VMM is not running, in the namespace it was last seen in: only when that
/// is still its namespace (E2B reuses `ns-N` for the next sandbox within seconds).
fn in_its_namespace(arg: &str, id: &str) -> Result<Sandbox> {
    let seen = cache::recall(id).ok_or_else(|| EnvError::UnknownSandbox {
        id: arg.to_string(),
        known: Vec::new(),
    })?;
    let ns = Netns::named(&seen.netns).map_err(|e| EnvError::Usage(format!("{e:#}")))?;
    if seen.netns_inode != 0 && ns.inode != seen.netns_inode {
        return Err(EnvError::SandboxGone {
            id: id.to_string(),
            detail: format!(
                "its namespace {} was deleted, and the name now belongs to another namespace",
                seen.netns
            ),
        }
        .into());
    }
    if let Some((other, pid)) = sandbox::running_in(ns.inode)
        && other.as_deref() != Some(id)
    {
        return Err(EnvError::SandboxGone {
            id: id.to_string(),
            detail: format!(
                "its slot {} now belongs to {} (pid {pid})",
                seen.netns,
                other.map_or("another VMM".into(), |o| format!("sandbox {o}"))
            ),
        }
        .into());
    }
    let mut sb = sandbox::from_netns(&seen.netns)?;
    sb.id = Some(id.to_string());
    sb.warnings.insert(
        0,
        format!(
            "no VMM process of sandbox {id} is running (last seen as pid {}); tracing its namespace {}",
            seen.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            seen.netns
        ),
    );
    Ok(sb)
}

/// The expected path of a sandbox. What discovery could not read falls back to E2B's
/// conventions, with a warning (a missing DNAT must not stop the trace that shows it).
pub fn path_of(sb: &Sandbox, port: u16) -> Result<(ExpectedPath, Vec<String>)> {
    let mut warnings = Vec::new();
    let host_ip = match (sb.host_ip, sb.slot) {
        (Some(ip), _) => ip,
        (None, Some(slot)) => {
            let ip = sandbox::e2b_host_ip(slot);
            warnings.push(format!(
                "no DNAT rule in {}: assuming E2B's host IP {ip} for slot {slot}",
                sb.netns.label()
            ));
            ip
        }
        (None, None) => {
            return Err(EnvError::Usage(format!(
                "cannot tell the host IP of {}: no DNAT rule and no E2B slot name; pass --dst",
                sb.label()
            ))
            .into());
        }
    };
    let guest_ip = sb.guest_ip.unwrap_or(DEFAULT_GUEST_IP);
    // The host side is what discovery verified, or unknown: never this process's namespace
    // by default (a probe from there would go wherever its routes lead).
    if let Some(problem) = &sb.host_side_problem {
        warnings.push(format!("the host side is not known: {problem}"));
    }
    let path = ExpectedPath {
        sandbox_id: sb.id.clone(),
        vmm_pid: sb.pid,
        host_ns: sb.host_ns.as_ref().map(ns_ref),
        sandbox_ns: NsRef {
            inode: sb.netns.inode,
            name: sb.netns.name.clone(),
        },
        host_veth: sb.host_veth.clone().unwrap_or_default(),
        ns_veth: sb.ns_veth.clone().unwrap_or_else(|| "eth0".into()),
        tap: sb.tap.clone().unwrap_or_else(|| "tap0".into()),
        bridge: sb.bridge.clone(),
        host_ip,
        guest_ip,
        host_veth_ip: sb.host_veth_ip,
        ns_veth_ip: sb.ns_veth_ip,
        port,
        devices: path_devices(sb),
    };
    Ok((path, warnings))
}

/// The path's devices as discovery read them, and the TTL the host side's SYNs start with.
fn path_devices(sb: &Sandbox) -> tracer_model::path::PathDevices {
    let mut d = sb.devices.clone();
    d.host_ttl = sb
        .host_ns
        .as_ref()
        .and_then(|h| crate::system::netstate::sysctl(h, "net.ipv4.ip_default_ttl").ok())
        .and_then(|v| v.parse().ok());
    d
}

/// A namespace as the model names it (the root namespace as `root`).
pub fn ns_ref(ns: &Netns) -> NsRef {
    NsRef {
        inode: ns.inode,
        name: ns.name.clone().or_else(|| ns.is_root().then(|| ns.label())),
    }
}

/// Where probes of `sb` may be sent from: its verified host side. Err(why, in plain words)
/// when that side is not known; then nothing may be sent.
pub fn probe_site(sb: &Sandbox, target: SocketAddrV4) -> Result<ProbeSite, String> {
    let unknown = || {
        sb.host_side_problem.clone().unwrap_or_else(|| {
            format!(
                "the peer of {}'s veth was not found in any namespace",
                sb.netns.label()
            )
        })
    };
    let (Some(host_ns), Some(host_veth), Some(host_veth_ifindex), Some(ns_veth), Some(ns_veth_ifindex)) = (
        sb.host_ns.clone(),
        sb.host_veth.clone(),
        sb.host_veth_ifindex,
        sb.ns_veth.clone(),
        sb.ns_veth_ifindex,
    ) else {
        return Err(unknown());
    };
    Ok(ProbeSite {
        host_ns,
        sandbox_ns: sb.netns.clone(),
        host_veth,
        host_veth_ifindex,
        ns_veth,
        ns_veth_ifindex,
        target,
    })
}

/// Watches, on a thread of its own, whether the slot of `sb` passes to another sandbox (E2B
/// hands `ns-N` to the next one seconds after the previous ends): then it sends why, once.
/// Checked every `every`: first whether its VMM (pid and start time) still runs, a /proc read;
/// only once it is gone, who runs in its namespace now. The thread sleeps until the process
/// ends otherwise.
pub fn watch_slot(sb: &Sandbox, every: std::time::Duration) -> std::sync::mpsc::Receiver<EnvError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (id, pid, inode, netns) = (sb.id.clone(), sb.pid, sb.netns.inode, sb.netns.label());
    let start = pid.and_then(crate::system::proc::start_ticks);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(every);
            let alive = pid.is_some_and(|p| start.is_some() && crate::system::proc::start_ticks(p) == start);
            if alive {
                continue;
            }
            if let Some((other, other_pid)) = sandbox::running_in(inode)
                && other.is_some()
                && other != id
            {
                let gone = EnvError::SandboxGone {
                    id: id.clone().unwrap_or_else(|| netns.clone()),
                    detail: format!(
                        "its slot {netns} now belongs to {} (pid {other_pid})",
                        other.map_or("another VMM".into(), |o| format!("sandbox {o}"))
                    ),
                };
                let _ = tx.send(gone);
                return;
            }
        }
    });
    rx
}
