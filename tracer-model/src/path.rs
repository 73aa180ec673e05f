//! The expected path of a sandbox: what a healthy envd connection crosses. The verdict engine
//! compares journeys with it.
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::hook::Hook;

/// A namespace as reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NsRef {
    pub inode: u32,
    pub name: Option<String>,
}

impl NsRef {
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("netns:{}", self.inode))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExpectedPath {
    pub sandbox_id: Option<String>,
    pub vmm_pid: Option<u32>,
    /// Where the orchestrator runs (root namespace in production, e2b-host in the lab): the
    /// namespace holding the peer of the sandbox's veth, as discovery verified it. None when
    /// it could not be verified; it is never guessed.
    pub host_ns: Option<NsRef>,
    pub sandbox_ns: NsRef,
    pub host_veth: String,
    pub ns_veth: String,
    pub tap: String,
    pub bridge: Option<String>,
    pub host_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
    pub host_veth_ip: Option<Ipv4Addr>,
    pub ns_veth_ip: Option<Ipv4Addr>,
    pub port: u16,
    /// The path's devices by index and MAC, the guest's MAC and the client's TTL: what the
    /// engine compares each hop with.
    pub devices: PathDevices,
}

/// A device of the path as discovery read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dev {
    pub ifindex: u32,
    pub mac: Option<String>,
}

/// What the path's hops are compared with beyond names: devices by index (names can be
/// reused), their MACs (the L2 destination each hop should carry), the guest's MAC and the
/// TTL the client's SYN starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PathDevices {
    pub host_veth: Option<Dev>,
    /// A bridge the host veth is a port of (not in E2B).
    pub host_bridge: Option<Dev>,
    pub ns_veth: Option<Dev>,
    pub tap: Option<Dev>,
    pub bridge: Option<Dev>,
    /// The guest's MAC: from its own frames on the tap, else a learned neighbour entry; None
    /// when unknown (then no L2 destination is expected toward the guest).
    pub guest_mac: Option<String>,
    /// `net.ipv4.ip_default_ttl` of the host side.
    pub host_ttl: Option<u8>,
}

impl ExpectedPath {
    /// The host side's namespace inode, when it is known.
    pub fn host_inode(&self) -> Option<u32> {
        self.host_ns.as_ref().map(|n| n.inode)
    }

    /// True when `netns` is the verified host side.
    pub fn is_host(&self, netns: u32) -> bool {
        self.host_inode() == Some(netns)
    }

    /// The addresses the kernel filter follows.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let mut v = vec![self.host_ip, self.guest_ip];
        v.extend(self.host_veth_ip);
        v.extend(self.ns_veth_ip);
        v
    }

    /// The device facing the guest in the sandbox namespace (the bridge if the tap is a port).
    pub fn guest_side_dev(&self) -> &str {
        self.bridge.as_deref().unwrap_or(&self.tap)
    }
}

/// Priority window in which a hook function must sit to run after slot `slot` of `hook` and
/// before that hook's next candidate slot (the last slot's window ends at i32::MAX). The
/// tracer narrows it to the slots it actually attached.
pub fn slot_window(hook: Hook, slot: u8) -> (i32, i32) {
    let p = tracer_common::NF_SLOT_PRIORITIES;
    let slots = tracer_common::NF_HOOK_SLOTS[hook as usize];
    let next = slots.iter().copied().find(|s| *s > slot);
    let lo = p.get(slot as usize).copied().unwrap_or(i32::MAX);
    let hi = next.and_then(|n| p.get(n as usize).copied()).unwrap_or(i32::MAX);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::tables_in_window;

    fn tables_after_slot(hook: Hook, slot: u8) -> Vec<&'static str> {
        tables_in_window(hook, slot_window(hook, slot))
    }

    #[test]
    fn windows_name_the_standard_tables() {
        assert_eq!(tables_after_slot(Hook::Forward, 4), vec!["filter"]);
        assert_eq!(tables_after_slot(Hook::Prerouting, 3), vec!["nat"]);
        assert_eq!(tables_after_slot(Hook::Prerouting, 0), vec!["raw"]);
        assert_eq!(tables_after_slot(Hook::Prerouting, 2), vec!["mangle"]);
        assert_eq!(tables_after_slot(Hook::Postrouting, 6), vec!["nat"]);
        assert_eq!(
            tables_after_slot(Hook::Forward, 0),
            vec!["mangle"],
            "FORWARD has no slot between entry and mangle"
        );
        assert_eq!(slot_window(Hook::Forward, 5), (1, 51));
    }
}
