//! The host side of a sandbox: the namespace holding the peer of the sandbox namespace's
//! veth (the root namespace in production, `e2b-host` in the lab), found over netlink.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::Path,
    sync::OnceLock,
};

use anyhow::{Context as _, Result};

use super::{
    Sandbox,
    ids::slot_from_netns,
    vmm::{Vmm, netns_inode_of_pid, ns_path_of, scan_vmms},
};
use crate::{
    system::netns::{self, Netns},
    system::netstate::{Addr, Link, Rtnl},
};

/// What every resolution needs, computed once.
pub(super) struct Shared {
    /// inode → name under /var/run/netns.
    names: HashMap<u32, String>,
    /// Host-side candidates worth asking first: the tracer's own namespace (production: the
    /// root namespace), then named namespaces that do not look like E2B slots.
    likely: Vec<Netns>,
    /// Named `ns-N` namespaces that hold no VMM (a slot whose VMM died), asked last; built
    /// only when no likely candidate matched.
    unlikely: OnceLock<Vec<Netns>>,
    /// VMM pids, when already known (else scanned for when `unlikely` is built).
    vmm_pids: Option<Vec<u32>>,
}

/// The host side given with `--host-netns`: set once, before any discovery.
static PINNED: OnceLock<Netns> = OnceLock::new();

/// `--host-netns`: from now on, a sandbox's host side is looked for in `ns` only; a veth
/// whose peer is elsewhere leaves the host side unknown (it is never guessed).
pub fn pin_host_side(ns: Netns) {
    let _ = PINNED.set(ns);
}

/// The namespace given with `--host-netns`, if any.
pub fn pinned_host_side() -> Option<&'static Netns> {
    PINNED.get()
}

impl Shared {
    pub(super) fn new(vmms: Option<&[Vmm]>) -> Self {
        let names = netns::names();
        if let Some(pinned) = pinned_host_side() {
            return Self {
                names,
                likely: vec![pinned.clone()],
                unlikely: OnceLock::from(Vec::new()),
                vmm_pids: None,
            };
        }
        let own = own_netns(&names);
        // The node's root namespace holds the host side in production, also when the tracer
        // itself runs in another namespace (a container, a test's namespace).
        let root = netns::root().filter(|r| own.as_ref().is_none_or(|o| o.inode != r.inode));
        let first: Vec<Netns> = root.into_iter().chain(own).collect();
        let named =
            named_netns(&names).filter(|n| !first.iter().any(|f| f.inode == n.inode) && !looks_like_slot(n));
        let mut named: Vec<Netns> = named.collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        let likely = first.into_iter().chain(named).collect();
        let vmm_pids = vmms.map(|v| v.iter().map(|v| v.pid).collect());
        Self {
            names,
            likely,
            unlikely: OnceLock::new(),
            vmm_pids,
        }
    }

    fn unlikely(&self) -> &[Netns] {
        self.unlikely.get_or_init(|| {
            let pids = self
                .vmm_pids
                .clone()
                .unwrap_or_else(|| scan_vmms().iter().map(|v| v.pid).collect());
            let sandboxes: HashSet<u32> = pids.into_iter().filter_map(netns_inode_of_pid).collect();
            let mut v: Vec<Netns> = named_netns(&self.names)
                .filter(|n| looks_like_slot(n) && !sandboxes.contains(&n.inode))
                .collect();
            v.sort_by_key(|n| n.name.clone());
            v
        })
    }

    /// Every host-side candidate, most likely first.
    fn candidates(&self) -> impl Iterator<Item = &Netns> {
        let mut unlikely = None;
        self.likely.iter().chain(std::iter::from_fn(move || {
            let it = unlikely.get_or_insert_with(|| self.unlikely().iter());
            it.next()
        }))
    }

    /// The namespace the VMM is in, held open from here on (its name only labels it).
    pub(super) fn netns_of_pid(&self, pid: u32) -> Result<Netns> {
        let mut ns =
            Netns::from_path(&ns_path_of(pid), None).with_context(|| format!("namespace of pid {pid}"))?;
        if let Some(name) = self.names.get(&ns.inode) {
            ns.name = Some(name.clone());
            ns.path = Path::new(netns::NETNS_DIR).join(name);
        }
        Ok(ns)
    }
}

/// This process's namespace, named from `names` (Netns::current would list them again).
fn own_netns(names: &HashMap<u32, String>) -> Option<Netns> {
    let mut own = Netns::from_path(Path::new("/proc/self/ns/net"), None).ok()?;
    own.name = names.get(&own.inode).cloned();
    Some(own)
}

fn named_netns(names: &HashMap<u32, String>) -> impl Iterator<Item = Netns> + '_ {
    names
        .iter()
        .map(|(inode, name)| Netns::new(*inode, Some(name.clone()), Path::new(netns::NETNS_DIR).join(name)))
}

fn looks_like_slot(ns: &Netns) -> bool {
    ns.name.as_deref().and_then(slot_from_netns).is_some()
}

/// Host namespaces found so far, with an open socket and their addresses: in [`discover_all`]
/// all sandboxes share one host namespace, so it is asked about first and read once.
#[derive(Default)]
pub(super) struct HostCache {
    hosts: Vec<HostNs>,
}

struct HostNs {
    ns: Netns,
    rtnl: Rtnl,
    addrs: Option<Vec<Addr>>,
}

impl HostNs {
    fn open(ns: Netns) -> Result<Self> {
        Ok(Self {
            rtnl: Rtnl::open(&ns)?,
            ns,
            addrs: None,
        })
    }

    /// The peer link and its first IPv4 address.
    fn peer(&mut self, ifindex: u32) -> Result<Option<(Link, Option<Ipv4Addr>)>> {
        let Some(link) = self.rtnl.link(ifindex)? else {
            return Ok(None);
        };
        if self.addrs.is_none() {
            self.addrs = Some(self.rtnl.addrs()?);
        }
        let ip = self
            .addrs
            .iter()
            .flatten()
            .find(|a| a.ifindex == ifindex)
            .map(|a| a.addr);
        Ok(Some((link, ip)))
    }
}

/// Finds the namespace whose nsid (as the sandbox namespace numbers it) is the veth's
/// IFLA_LINK_NETNSID, and the peer link in it by IFLA_LINK.
pub(super) fn set_host_side(
    sb: &mut Sandbox,
    veth: &Link,
    rtnl: &mut Rtnl,
    shared: &Shared,
    cache: &mut HostCache,
) -> Result<()> {
    let (Some(nsid), Some(peer)) = (veth.link_netnsid, veth.peer_ifindex) else {
        sb.host_side_problem = Some(format!(
            "{} in {} names no peer in another namespace",
            veth.name,
            sb.netns.label()
        ));
        return Ok(());
    };
    let Some(host) = host_ns_for(nsid, &sb.netns, rtnl, shared, cache)? else {
        let problem = match pinned_host_side() {
            Some(p) => format!(
                "the peer of {} (ifindex {peer}) is not in {}, the namespace given with --host-netns",
                veth.name,
                p.label()
            ),
            None => format!(
                "the peer of {} (ifindex {peer}) is in a namespace that is neither the root namespace, this process's, nor one named under /var/run/netns",
                veth.name
            ),
        };
        sb.warnings.push(problem.clone());
        sb.host_side_problem = Some(problem);
        return Ok(());
    };
    match host.peer(peer)? {
        // Only a peer that names the ns veth back is the host side.
        Some((link, ip)) if link.peer_ifindex == Some(veth.ifindex) => {
            sb.host_ns = Some(host.ns.clone());
            sb.devices.host_veth = Some(tracer_model::path::Dev {
                ifindex: link.ifindex,
                mac: link.mac.clone(),
            });
            sb.host_veth = Some(link.name);
            sb.host_veth_ip = ip;
            sb.host_veth_ifindex = Some(link.ifindex);
        }
        Some((link, _)) => {
            let problem = format!(
                "{} in {} is not the peer of {} (ifindex {}) any more",
                link.name,
                host.ns.label(),
                veth.name,
                veth.ifindex
            );
            sb.warnings.push(problem.clone());
            sb.host_side_problem = Some(problem);
        }
        None => {
            let problem = format!(
                "{} has no link {peer} (the peer of {})",
                host.ns.label(),
                veth.name
            );
            sb.warnings.push(problem.clone());
            sb.host_side_problem = Some(problem);
        }
    }
    Ok(())
}

/// The host namespace with this nsid: namespaces already found first, then the candidates.
fn host_ns_for<'c>(
    nsid: i32,
    own: &Netns,
    rtnl: &mut Rtnl,
    shared: &Shared,
    cache: &'c mut HostCache,
) -> Result<Option<&'c mut HostNs>> {
    let mut found = None;
    for (i, h) in cache.hosts.iter().enumerate() {
        if rtnl.nsid_of(&h.ns).ok().flatten() == Some(nsid) {
            found = Some(i);
            break;
        }
    }
    if found.is_none() {
        for cand in shared.candidates().filter(|c| c.inode != own.inode) {
            if cache.hosts.iter().any(|h| h.ns.inode == cand.inode) {
                continue;
            }
            // A candidate that vanished meanwhile is simply not the one.
            if rtnl.nsid_of(cand).ok().flatten() == Some(nsid) {
                cache.hosts.push(HostNs::open(cand.clone())?);
                found = Some(cache.hosts.len() - 1);
                break;
            }
        }
    }
    Ok(found.map(|i| &mut cache.hosts[i]))
}
