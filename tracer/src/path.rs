//! The expected path of a sandbox: what a healthy envd connection crosses. The verdict engine
//! compares journeys with it.
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::hop::Hook;

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
    /// Where the orchestrator runs (root namespace in production, e2b-host in the lab).
    pub host_ns: NsRef,
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
}

impl ExpectedPath {
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

/// iptables tables (and the conntrack hooks) registered at each hook, with their priority.
pub const STANDARD: &[(&str, i32, &[Hook])] = &[
    ("raw", -300, &[Hook::Prerouting, Hook::Output]),
    ("conntrack", -200, &[Hook::Prerouting, Hook::Output]),
    (
        "mangle",
        -150,
        &[
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
        ],
    ),
    ("nat", -100, &[Hook::Prerouting, Hook::Output]),
    ("filter", 0, &[Hook::Input, Hook::Forward, Hook::Output]),
    ("security", 50, &[Hook::Input, Hook::Forward, Hook::Output]),
    ("nat", 100, &[Hook::Input, Hook::Postrouting]),
    ("conntrack-confirm", i32::MAX, &[Hook::Input, Hook::Postrouting]),
];

/// Priority window in which a hook function must sit to run after slot `slot` of `hook` and
/// before that hook's next slot (the last slot's window ends at i32::MAX).
pub fn slot_window(hook: Hook, slot: u8) -> (i32, i32) {
    let p = tracer_common::NF_SLOT_PRIORITIES;
    let slots = tracer_common::NF_HOOK_SLOTS[hook as usize];
    let next = slots.iter().copied().find(|s| *s > slot);
    let lo = p.get(slot as usize).copied().unwrap_or(i32::MAX);
    let hi = next.and_then(|n| p.get(n as usize).copied()).unwrap_or(i32::MAX);
    (lo, hi)
}

/// Standard tables of `hook` whose priority is in the window after `slot`.
pub fn tables_after_slot(hook: Hook, slot: u8) -> Vec<&'static str> {
    tables_in_window(hook, slot_window(hook, slot))
}

/// Standard tables of `hook` with a priority in the window (lo, hi).
pub fn tables_in_window(hook: Hook, (lo, hi): (i32, i32)) -> Vec<&'static str> {
    STANDARD
        .iter()
        .filter(|(_, prio, hooks)| hooks.contains(&hook) && *prio > lo && (*prio < hi || hi == i32::MAX))
        .map(|(name, _, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
