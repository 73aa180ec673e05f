//! Kernel drop reasons. Their numbers are not ABI-stable, so the tracer reads their names from
//! the running kernel's BTF; this module is the one place that compares names, by sorting
//! them into the classes the verdict and the doctor reason about.
use serde::{Deserialize, Serialize};

/// A drop reason as the kernel names it (`NETFILTER_DROP`, `IP_RPFILTER`, ...), without the
/// `SKB_DROP_REASON_` prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DropReason(String);

/// What a drop reason means for an envd connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonClass {
    /// A netfilter hook function returned NF_DROP (a rule or a chain policy).
    Netfilter,
    /// Reverse path filter.
    RpFilter,
    /// No route on output (`IP_NOROUTE`).
    NoRoute,
    /// No route for a received packet (`IP_INNOROUTES`).
    InputNoRoute,
    /// Not for this host and not forwarded (`IP_INADDRERRORS`: forwarding off).
    InputAddrErrors,
    /// The neighbour subsystem gave up (`NEIGH_FAILED`, `NEIGH_QUEUEFULL`, ...).
    Neighbour,
    /// Queued packets flushed, e.g. when a device lost its neighbours.
    QueuePurge,
    /// The tap had no reader (`DEV_READY`) or its ring was full (`FULL_RING`).
    TapNotRead,
    /// The device queue discipline dropped it.
    QdiscDrop,
    /// No socket for the packet (a late reply, or a SYN delivered locally).
    NoSocket,
    /// Larger than the path's MTU.
    PacketTooBig,
    Other,
}

impl DropReason {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The one classification of reason names.
    pub fn class(&self) -> ReasonClass {
        match self.0.as_str() {
            "NETFILTER_DROP" => ReasonClass::Netfilter,
            "IP_RPFILTER" => ReasonClass::RpFilter,
            "IP_NOROUTE" => ReasonClass::NoRoute,
            "IP_INNOROUTES" => ReasonClass::InputNoRoute,
            "IP_INADDRERRORS" => ReasonClass::InputAddrErrors,
            "QUEUE_PURGE" => ReasonClass::QueuePurge,
            "DEV_READY" | "FULL_RING" => ReasonClass::TapNotRead,
            "QDISC_DROP" => ReasonClass::QdiscDrop,
            "NO_SOCKET" => ReasonClass::NoSocket,
            "PKT_TOO_BIG" => ReasonClass::PacketTooBig,
            r if r.starts_with("NEIGH_") => ReasonClass::Neighbour,
            _ => ReasonClass::Other,
        }
    }

    pub fn is(&self, class: ReasonClass) -> bool {
        self.class() == class
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(DropReason::new("NETFILTER_DROP").class(), ReasonClass::Netfilter);
        assert_eq!(DropReason::new("NEIGH_FAILED").class(), ReasonClass::Neighbour);
        assert_eq!(DropReason::new("FULL_RING").class(), ReasonClass::TapNotRead);
        assert_eq!(DropReason::new("reason#99").class(), ReasonClass::Other);
    }
}
