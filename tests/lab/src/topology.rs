//! Names and addresses of E2B network v1, per slot. Pure arithmetic, no side effects.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The orchestrator-side namespace (the root namespace in production).
pub const HOST_NS: &str = "e2b-host";
/// A token on the kernel command line of the kernel-matrix VM (xtask/src/kernel_matrix.rs
/// sets it): the lab's [`HostNs::Root`] mode runs only where it is.
pub const KERNEL_MATRIX_TOKEN: &str = "tracer.kernel_matrix=1";
/// How the tracer names the root namespace (tracer/src/netns.rs `ROOT_LABEL`).
pub const ROOT_LABEL: &str = "root";

/// Where the orchestrator side (the stand-in client, the veths' host ends, the routes to the
/// host IPs and the host firewall) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HostNs {
    /// A namespace `e2b-host` with no uplink and no default route: safe on any machine.
    #[default]
    Named,
    /// The root (init) namespace of the machine, as on an E2B node. It changes that namespace,
    /// so the lab allows it only inside the kernel-matrix VM, which has no network device.
    Root,
}

impl HostNs {
    /// The name for `ip netns exec` / `ip -n`; None: the root namespace, which the lab itself
    /// runs in.
    pub fn netns(self) -> Option<&'static str> {
        match self {
            Self::Named => Some(HOST_NS),
            Self::Root => None,
        }
    }

    /// The namespace file the orchestrator stand-in enters.
    pub fn path(self) -> std::path::PathBuf {
        match self {
            Self::Named => std::path::Path::new("/var/run/netns").join(HOST_NS),
            Self::Root => "/proc/1/ns/net".into(),
        }
    }

    /// How the tracer names it in its output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Named => HOST_NS,
            Self::Root => ROOT_LABEL,
        }
    }
}
/// Guest address inside every VM, and the tap's address (its gateway).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
pub const TAP_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
pub const TAP_PREFIX: u8 = 30;
pub const GUEST_MAC: &str = "02:fc:00:00:00:05";
pub const TAP_MAC: &str = "02:fc:00:00:00:06";
pub const TAP_NAME: &str = "tap0";
pub const BRIDGE_NAME: &str = "br0";
pub const ENVD_PORT: u16 = 49983;
/// Interface name the host-side rules point at (E2B's uplink). It does not exist in the lab:
/// `e2b-host` has no uplink by design.
pub const UPLINK: &str = "uplink0";
/// ifalias the lab sets on every eth0 it creates, so `lab down` finds leftovers of a crashed
/// run without ever touching namespaces it did not make.
pub const LAB_ALIAS: &str = "e2b-lab";
/// E2B's default CIDRs.
const HOST_NET: u32 = u32::from_be_bytes([10, 11, 0, 0]);
const VRT_NET: u32 = u32::from_be_bytes([10, 12, 0, 0]);

/// How the tap is wired in the sandbox namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// E2B: tap0 carries 169.254.0.22/30 itself.
    #[default]
    E2b,
    /// Many other Firecracker hosts: tap0 is a port of bridge br0, which carries the address.
    Bridge,
}

/// E2B's datapath (DESIGN §7): v1 writes the slot NAT with iptables, v2 with nft chains in
/// `inet slot-firewall`, and the host rules into `inet v2-host-firewall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    V1,
    V2,
    /// A node mid-rollout: odd slots v1, even slots v2.
    Mixed,
}

/// The datapath of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    V1,
    V2,
}

impl Network {
    pub fn datapath(self, slot: Slot) -> Datapath {
        match self {
            Self::V1 => Datapath::V1,
            Self::V2 => Datapath::V2,
            Self::Mixed if slot.0 % 2 == 1 => Datapath::V1,
            Self::Mixed => Datapath::V2,
        }
    }

    pub fn has_v2(self) -> bool {
        self != Self::V1
    }
}

/// E2B's egress ports (the orchestrator's config): the orchestrator's in-sandbox address and
/// what its services and the TCP firewall proxy listen on. The REDIRECTs that send guest
/// traffic there match packets coming in from a veth that start a connection; envd's replies
/// to the orchestrator never do.
pub const ORCHESTRATOR_IN_SANDBOX_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// (destination port, redirect port) for the orchestrator's services (to its address only).
pub const SERVICE_REDIRECTS: [(u16, u16); 3] = [(80, 5010), (111, 5012), (2049, 5011)];
/// (destination port, redirect port) of the TCP firewall proxy; every other TCP port → 5018.
pub const PROXY_REDIRECTS: [(u16, u16); 2] = [(80, 5016), (443, 5017)];
pub const PROXY_OTHER_PORT: u16 = 5018;

/// Which iptables the namespace rules are written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IptablesBackend {
    #[default]
    Nft,
    Legacy,
}

impl IptablesBackend {
    pub fn iptables(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft",
            Self::Legacy => "iptables-legacy",
        }
    }
    pub fn restore(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft-restore",
            Self::Legacy => "iptables-legacy-restore",
        }
    }
}

/// One sandbox slot (N from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot(pub u32);

impl Slot {
    pub fn netns(self) -> String {
        format!("ns-{}", self.0)
    }
    pub fn veth(self) -> String {
        format!("veth-{}", self.0)
    }
    /// Host side of the veth pair: 10.12.0.0 + 2N (/31).
    pub fn veth_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(VRT_NET + 2 * self.0)
    }
    /// Namespace side (eth0): 10.12.0.0 + 2N + 1 (/31).
    pub fn peer_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(VRT_NET + 2 * self.0 + 1)
    }
    /// The slot's host IP, on no device: 10.11.0.0 + N.
    pub fn host_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(HOST_NET + self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_slot_formulas() {
        assert_eq!(Slot(1).veth_ip(), Ipv4Addr::new(10, 12, 0, 2));
        assert_eq!(Slot(1).peer_ip(), Ipv4Addr::new(10, 12, 0, 3));
        assert_eq!(Slot(200).veth_ip(), Ipv4Addr::new(10, 12, 1, 144));
        assert_eq!(Slot(300).host_ip(), Ipv4Addr::new(10, 11, 1, 44));
        assert_eq!(Slot(7).netns(), "ns-7");
        assert_eq!(Slot(7).veth(), "veth-7");
    }
}
