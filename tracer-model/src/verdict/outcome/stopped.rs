//! Where a packet was last seen (its namespace and the device it was leaving), and the facts
//! read about that device and its veth peer: what the silent outcomes point at.
use crate::{
    facts::{FactUsed, ReadFacts},
    hop::HopKind,
    journey::{Journey, Leg},
    path::ExpectedPath,
};

/// Where the request was last seen: the namespace, and the device it was on its way out of.
pub(super) struct Stop {
    pub index: usize,
    pub netns: u32,
    pub netns_label: String,
    pub device: Option<String>,
    /// It reached the device's driver (a transmit event).
    pub transmitted: bool,
}

pub(super) fn stopped_at(j: &Journey) -> Option<Stop> {
    stopped_on(j, Leg::Request)
}

/// Where a leg was last seen.
pub(super) fn stopped_on(j: &Journey, leg: Leg) -> Option<Stop> {
    let index = j
        .hops
        .iter()
        .rposition(|(l, h)| *l == leg && h.is_packet() && !matches!(h.kind, HopKind::Drop { .. }))?;
    let h = &j.hops[index].1;
    let device = match &h.kind {
        HopKind::Netfilter { out_dev: Some(o), .. } => Some(o.clone()),
        _ => h.device.clone(),
    };
    Some(Stop {
        index,
        netns: h.netns,
        netns_label: h.ns_label(),
        device,
        transmitted: matches!(h.kind, HopKind::Xmit | HopKind::Consumed),
    })
}

/// The facts about the device where the packet stopped, and about its veth peer on the path.
pub(super) fn facts_at(s: &Stop, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Vec<FactUsed> {
    let Some(dev) = s.device.as_deref() else {
        return Vec::new();
    };
    let mut out: Vec<FactUsed> = facts
        .link(s.netns, dev)
        .filter(|l| !l.up || !l.carrier)
        .map(|l| FactUsed::Link(l.clone()))
        .into_iter()
        .collect();
    if let Some((ns, peer)) = path.and_then(|p| veth_peer(p, s.netns, dev))
        && let Some(l) = facts.link(ns, &peer).filter(|l| !l.up)
    {
        out.push(FactUsed::Link(l.clone()));
    }
    out
}

/// The other end of a path veth: (namespace inode, device).
fn veth_peer(p: &ExpectedPath, netns: u32, dev: &str) -> Option<(u32, String)> {
    if p.is_host(netns) && dev == p.host_veth {
        Some((p.sandbox_ns.inode, p.ns_veth.clone()))
    } else if netns == p.sandbox_ns.inode && dev == p.ns_veth {
        Some((p.host_inode()?, p.host_veth.clone()))
    } else {
        None
    }
}
