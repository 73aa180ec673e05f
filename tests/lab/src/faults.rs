//! The faults the lab can inject: what each simulates in production and what the orchestrator
//! would see. `lab/break_heal.rs` applies and reverts them.
use serde::{Deserialize, Serialize};

/// What the orchestrator stand-in sees while a fault is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Symptom {
    /// `context deadline exceeded`: attempts time out.
    Timeout,
    /// Connection refused (a RST came back).
    Refused,
    /// The kernel reports no route (in the lab, where e2b-host has no default route).
    Unreachable,
    /// connect() fails at once with a local error (EACCES, EINVAL).
    Rejected,
    /// envd still answers (the fault breaks something else).
    Works,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    ForwardDrop,
    NoDnat,
    TapDown,
    TapMissing,
    NoReader,
    GuestNoListener,
    IpForwardOff,
    RpFilter,
    HostRouteMissing,
    PreroutingDropNft,
    PreroutingDropNftCounter,
    ReplyDrop,
    WrongSlotRoute,
    ForwardPolicyDrop,
    UserChainDrop,
    HostInputDrop,
    SandboxVethDown,
    HostVethDown,
    BlackholeRoute,
    ProhibitRule,
    VmmStopped,
    TapQueueFull,
    RawReplyDrop,
    MangleReplyDrop,
    NftOddPriority,
    ReplyRouteUnreachable,
    QdiscDrop,
    SlowGuest,
    V2VethNotInSet,
    V2CidrNotInSet,
    V2HostDrop,
    V2ReplyDrop,
    V2MangleReplyDrop,
}

impl Fault {
    pub const ALL: &[Fault] = &[
        Fault::ForwardDrop,
        Fault::NoDnat,
        Fault::TapDown,
        Fault::TapMissing,
        Fault::NoReader,
        Fault::GuestNoListener,
        Fault::IpForwardOff,
        Fault::RpFilter,
        Fault::HostRouteMissing,
        Fault::PreroutingDropNft,
        Fault::PreroutingDropNftCounter,
        Fault::ReplyDrop,
        Fault::WrongSlotRoute,
        Fault::ForwardPolicyDrop,
        Fault::UserChainDrop,
        Fault::HostInputDrop,
        Fault::SandboxVethDown,
        Fault::HostVethDown,
        Fault::BlackholeRoute,
        Fault::ProhibitRule,
        Fault::VmmStopped,
        Fault::TapQueueFull,
        Fault::RawReplyDrop,
        Fault::MangleReplyDrop,
        Fault::NftOddPriority,
        Fault::ReplyRouteUnreachable,
        Fault::QdiscDrop,
        Fault::SlowGuest,
        Fault::V2VethNotInSet,
        Fault::V2CidrNotInSet,
        Fault::V2HostDrop,
        Fault::V2ReplyDrop,
        Fault::V2MangleReplyDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ForwardDrop => "forward-drop",
            Self::NoDnat => "no-dnat",
            Self::TapDown => "tap-down",
            Self::TapMissing => "tap-missing",
            Self::NoReader => "no-reader",
            Self::GuestNoListener => "guest-no-listener",
            Self::IpForwardOff => "ip-forward-off",
            Self::RpFilter => "rp-filter",
            Self::HostRouteMissing => "host-route-missing",
            Self::PreroutingDropNft => "prerouting-drop-nft",
            Self::PreroutingDropNftCounter => "prerouting-drop-nft-counter",
            Self::ReplyDrop => "reply-drop",
            Self::WrongSlotRoute => "wrong-slot-route",
            Self::ForwardPolicyDrop => "forward-policy-drop",
            Self::UserChainDrop => "user-chain-drop",
            Self::HostInputDrop => "host-input-drop",
            Self::SandboxVethDown => "sandbox-veth-down",
            Self::HostVethDown => "host-veth-down",
            Self::BlackholeRoute => "blackhole-route",
            Self::ProhibitRule => "prohibit-rule",
            Self::VmmStopped => "vmm-stopped",
            Self::TapQueueFull => "tap-queue-full",
            Self::RawReplyDrop => "raw-reply-drop",
            Self::MangleReplyDrop => "mangle-reply-drop",
            Self::NftOddPriority => "nft-odd-priority",
            Self::ReplyRouteUnreachable => "reply-route-unreachable",
            Self::QdiscDrop => "qdisc-drop",
            Self::SlowGuest => "slow-guest",
            Self::V2VethNotInSet => "v2-veth-not-in-set",
            Self::V2CidrNotInSet => "v2-cidr-not-in-set",
            Self::V2HostDrop => "v2-host-drop",
            Self::V2ReplyDrop => "v2-reply-drop",
            Self::V2MangleReplyDrop => "v2-mangle-reply-drop",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// One line: what it simulates in production, and what the orchestrator sees.
    pub fn explain(self) -> &'static str {
        match self {
            Self::ForwardDrop => {
                "an iptables DROP in the sandbox ns FORWARD chain for the envd SYN (a stray firewall rule); orchestrator: timeout"
            }
            Self::NoDnat => {
                "the DNAT host IP -> 169.254.0.21 is missing in the sandbox ns (slot setup failed halfway); orchestrator: timeout"
            }
            Self::TapDown => {
                "tap0 is down in the sandbox ns (VM not started or link flapped); orchestrator: timeout"
            }
            Self::TapMissing => {
                "tap0 does not exist in the sandbox ns (VMM never created it); orchestrator: timeout"
            }
            Self::NoReader => {
                "the VMM is gone but tap0 is kept: nobody reads the tap (Firecracker crashed or not yet attached); orchestrator: timeout"
            }
            Self::GuestNoListener => {
                "the VM is up but nothing listens on 49983 (envd not started); orchestrator: connection refused"
            }
            Self::IpForwardOff => {
                "net.ipv4.ip_forward=0 in the sandbox ns (inherited from a host with forwarding off); orchestrator: timeout"
            }
            Self::RpFilter => {
                "strict rp_filter in the sandbox ns with a route that makes the return path asymmetric; orchestrator: timeout"
            }
            Self::HostRouteMissing => {
                "the host's route to the slot's host IP is missing (lab: no default route, so unreachable; production: timeout)"
            }
            Self::PreroutingDropNft => {
                "a native nftables chain (no counter) drops the SYN in the sandbox ns PREROUTING; orchestrator: timeout"
            }
            Self::PreroutingDropNftCounter => {
                "a native nftables rule with a counter drops the SYN in the sandbox ns PREROUTING; orchestrator: timeout"
            }
            Self::ReplyDrop => {
                "the guest's SYN-ACK is dropped in the sandbox ns FORWARD on its way back; orchestrator: timeout"
            }
            Self::WrongSlotRoute => {
                "the host route for this sandbox points at another sandbox's veth (slot mix-up); orchestrator: timeout"
            }
            Self::ForwardPolicyDrop => {
                "the sandbox ns FORWARD chain policy is DROP with no accept for envd; orchestrator: timeout"
            }
            Self::UserChainDrop => {
                "a DROP inside a user-defined chain jumped to from FORWARD in the sandbox ns; orchestrator: timeout"
            }
            Self::HostInputDrop => {
                "the host's INPUT chain drops the SYN-ACK from the sandbox (host firewall); orchestrator: timeout"
            }
            Self::SandboxVethDown => {
                "eth0 (the veth end inside the sandbox ns) is down, so the host's veth has no carrier; orchestrator: timeout"
            }
            Self::HostVethDown => {
                "the host's veth of the slot is down: its routes are gone (lab: unreachable; production: timeout or wrong path)"
            }
            Self::BlackholeRoute => {
                "the host routes the slot's host IP into a blackhole (a leftover of slot teardown); orchestrator: connect fails (EINVAL)"
            }
            Self::ProhibitRule => {
                "a policy-routing rule (ip rule ... prohibit) on the host forbids the slot's host IP; orchestrator: connect fails (EACCES)"
            }
            Self::VmmStopped => {
                "the VMM is stopped (SIGSTOP, a debugger, a frozen cgroup): it holds the tap but reads nothing; orchestrator: timeout"
            }
            Self::TapQueueFull => {
                "the VMM is stopped and tap0's queue is 1 packet long: the queue fills and the kernel drops the rest; orchestrator: timeout"
            }
            Self::RawReplyDrop => {
                "an iptables DROP in the sandbox ns raw PREROUTING for envd's replies; orchestrator: timeout"
            }
            Self::MangleReplyDrop => {
                "an iptables DROP in the sandbox ns mangle FORWARD for envd's replies; orchestrator: timeout"
            }
            Self::NftOddPriority => {
                "an nftables forward chain at priority 7 (between the standard ones) drops the SYN in the sandbox ns; orchestrator: timeout"
            }
            Self::ReplyRouteUnreachable => {
                "the sandbox ns has an unreachable route for the orchestrator's address: the SYN-ACK cannot be routed back; orchestrator: timeout"
            }
            Self::QdiscDrop => {
                "a queue discipline on the host's veth that drops everything (pfifo limit 0); orchestrator: timeout"
            }
            Self::SlowGuest => {
                "envd answers 80 ms after the SYN (a busy or CPU-starved guest): every 50 ms attempt gives up first; orchestrator: timeout"
            }
            Self::V2VethNotInSet => {
                "v2: the slot's veth is missing from set v2_veths of inet v2-host-firewall: the guest's egress is dropped; envd still works"
            }
            Self::V2CidrNotInSet => {
                "v2: the slot's host IP is missing from set v2_host_cidrs: the guest's egress is not masqueraded; envd still works"
            }
            Self::V2HostDrop => {
                "v2: a chain added to inet v2-host-firewall drops the SYN-ACK from the slot's veth at INPUT (counted); orchestrator: timeout"
            }
            Self::V2ReplyDrop => {
                "v2: a rule of the slot firewall (no counter, as E2B's) drops envd's replies in PREROUTE_FILTER; orchestrator: timeout"
            }
            Self::V2MangleReplyDrop => {
                "v2: a rule (no counter) in the slot firewall's postroute_mangle, E2B's egress DSCP chain, drops envd's replies leaving by eth0; orchestrator: timeout"
            }
        }
    }

    /// What the orchestrator stand-in sees in the lab.
    pub fn symptom(self) -> Symptom {
        match self {
            Self::GuestNoListener => Symptom::Refused,
            Self::HostRouteMissing | Self::HostVethDown => Symptom::Unreachable,
            Self::BlackholeRoute | Self::ProhibitRule => Symptom::Rejected,
            Self::V2VethNotInSet | Self::V2CidrNotInSet => Symptom::Works,
            _ => Symptom::Timeout,
        }
    }

    /// Faults that exist on one datapath only (None: both).
    pub fn datapath(self) -> Option<crate::Datapath> {
        match self {
            Self::V2VethNotInSet
            | Self::V2CidrNotInSet
            | Self::V2HostDrop
            | Self::V2ReplyDrop
            | Self::V2MangleReplyDrop => Some(crate::Datapath::V2),
            _ => None,
        }
    }

    /// Whether the fault applies to a slot of this datapath.
    pub fn applies(self, dp: crate::Datapath) -> bool {
        self.datapath().is_none_or(|d| d == dp)
    }

    /// Whether envd's connections fail (the v2 set faults break the guest's egress only).
    pub fn breaks_envd(self) -> bool {
        !matches!(self, Self::V2VethNotInSet | Self::V2CidrNotInSet)
    }

    /// Faults that need a second sandbox.
    pub fn needs_second_sandbox(self) -> bool {
        self == Self::WrongSlotRoute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Some(*f));
            assert!(seen.insert(f.name()));
            let json = serde_json::to_string(f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.name()));
        }
    }
}
