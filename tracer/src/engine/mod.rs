//! The verdict engine's side with I/O: the judge (`judge`), which decides every finished
//! journey on its own thread for `trace`, `watch` and the doctor's tie-in, and the reads it
//! decides from — everything that can act on a packet in the namespaces a journey crossed,
//! read at decision time, read-only: firewall rules of every family and their counter
//! differences since the trace started, routes of every table and the policy rules,
//! addresses, neighbours, links, the sysctls that decide, queue disciplines and tc filters,
//! BPF programs on the path's devices and on the client's cgroup. The pure engine
//! (`tracer_model::engine`) compares the journey with its path and picks the actors from
//! these.
pub mod judge;
pub mod netlink;
pub mod programs;
mod reads;
pub mod thread;

use std::collections::BTreeSet;

use tracer_model::{engine::inventory::NsInventory, journey::Journey, path::ExpectedPath};

use crate::{
    system::firewall::{Rulesets, naming},
    system::netns::Netns,
    system::netstate::Rtnl,
};

/// The sysctls that decide forwarding, reverse-path filtering and ARP, per device.
const CONF_KEYS: &[&str] = &[
    "forwarding",
    "rp_filter",
    "arp_ignore",
    "arp_filter",
    "accept_local",
    "route_localnet",
];

/// Reads one namespace's inventory. `before`: its rulesets when the trace started (for the
/// counters); `now`: read now (or read here when None); `devices`: the devices whose
/// programs and sysctls are read (the path's and the journey's: a node's host side has a veth
/// per sandbox, and reading every one's would cost each verdict hundreds of reads).
pub fn read_namespace(
    ns: &Netns,
    before: Option<&Rulesets>,
    now: Option<&Rulesets>,
    devices: &BTreeSet<String>,
) -> NsInventory {
    let mut inv = NsInventory {
        netns: ns.inode,
        label: ns.label(),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let read_now;
    let now = match now {
        Some(r) => r,
        None => {
            read_now = Rulesets::read(ns);
            &read_now
        }
    };
    inv.tables = now.tables();
    if let Some(before) = before {
        inv.counted = naming::counted(before, now);
    }
    let t1 = std::time::Instant::now();
    let Ok(read) = Rtnl::open(ns).and_then(|mut r| netlink::read(&mut r)) else {
        return inv;
    };
    let t2 = std::time::Instant::now();
    let devices: Vec<(u32, String)> = read
        .links
        .iter()
        .filter(|l| devices.contains(&l.name))
        .map(|l| (l.ifindex, l.name.clone()))
        .collect();
    let xdp: Vec<(u32, u32)> = read.xdp.iter().map(|(i, p)| (*i, *p)).collect();
    let tc_bpf: Vec<(u32, String, u32, bool)> = read
        .filters
        .iter()
        .filter_map(|f| Some((f.ifindex, f.device.clone(), f.program?, f.direction == "ingress")))
        .collect();
    inv.programs = programs::on_devices(ns, &devices, &xdp, &tc_bpf);
    let t3 = std::time::Instant::now();
    inv.sysctls = sysctls(ns, &devices);
    tracing::debug!(
        rules_ms = (t1 - t0).as_millis() as u64,
        netlink_ms = (t2 - t1).as_millis() as u64,
        programs_ms = (t3 - t2).as_millis() as u64,
        sysctls_ms = t3.elapsed().as_millis() as u64,
        "namespace read"
    );
    inv.links = read.links;
    inv.addrs = read.addrs;
    inv.routes = read.routes;
    inv.rules = read.rules;
    inv.neighbours = read.neighbours;
    inv.qdiscs = read.qdiscs;
    inv.filters = read.filters;
    inv
}

/// The deciding sysctls of a namespace, read from inside it (/proc/sys/net follows the
/// reading thread's namespace). Keys that do not exist are left out.
fn sysctls(ns: &Netns, devices: &[(u32, String)]) -> Vec<(String, String)> {
    let mut keys = vec![
        "net.ipv4.ip_forward".to_string(),
        "net.ipv4.ip_default_ttl".to_string(),
    ];
    let names = ["all", "default"]
        .into_iter()
        .map(String::from)
        .chain(devices.iter().map(|(_, n)| n.clone()));
    for dev in names {
        for k in CONF_KEYS {
            keys.push(format!("net.ipv4.conf.{dev}.{k}"));
        }
    }
    let Ok(_inside) = ns.enter() else {
        return Vec::new();
    };
    keys.into_iter()
        .filter_map(|k| {
            let path = crate::system::netstate::sysctl_path(&k).ok()?;
            let v = std::fs::read_to_string(path).ok()?;
            Some((k, v.trim().to_string()))
        })
        .collect()
}

/// The namespaces a journey's hops were seen in that are named (other sandboxes' namespaces
/// a misdirected attempt reached), beyond the path's own.
pub fn other_namespaces(j: &Journey, path: &ExpectedPath) -> Vec<Netns> {
    let own: BTreeSet<u32> = path
        .host_inode()
        .into_iter()
        .chain([path.sandbox_ns.inode])
        .collect();
    let seen: BTreeSet<u32> = j
        .hops
        .iter()
        .map(|(_, h)| h.netns)
        .filter(|n| *n != 0 && !own.contains(n))
        .collect();
    crate::system::netns::all_named()
        .into_iter()
        .filter(|n| seen.contains(&n.inode))
        .collect()
}
