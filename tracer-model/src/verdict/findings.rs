//! Path-aware observations beside the outcome: slot mix-ups, a missing DNAT, routing loops.
use super::{Finding, FindingKind};
use crate::{
    hook::Hook,
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::{ExpectedPath, NsRef},
};

/// Path-aware observations: slot mix-ups, missing DNAT, routing loops.
pub(super) fn findings(j: &Journey, path: Option<&ExpectedPath>) -> Vec<Finding> {
    let Some(p) = path else { return Vec::new() };
    let req: Vec<&Hop> = j.leg(Leg::Request).collect();
    [
        wrong_route(&req, p),
        other_namespace(&req, p),
        no_dnat(&req, p),
        routed_back(&req, p),
        routing_loop(&req),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Left the host through another sandbox's veth.
fn wrong_route(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req.iter().find(|h| {
        p.is_host(h.netns)
            && matches!(h.kind, HopKind::Xmit | HopKind::Tcx { ingress: false })
            && h.device.as_deref().is_some_and(|d| d != p.host_veth)
    })?;
    let mut f = Finding::new(FindingKind::WrongRoute);
    f.netns = p.host_ns.as_ref().map(NsRef::label);
    f.device = h.device.clone();
    f.address = Some(p.host_ip);
    Some(f)
}

/// Entered a namespace that is not on the path.
fn other_namespace(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req
        .iter()
        .find(|h| h.netns != 0 && !p.is_host(h.netns) && h.netns != p.sandbox_ns.inode)?;
    let mut f = Finding::new(FindingKind::OtherNamespace);
    f.netns = Some(h.ns_label());
    f.device = h.device.clone();
    Some(f)
}

/// Passed the nat table of the sandbox namespace without being DNATed.
fn no_dnat(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req.iter().find(|h| {
        h.netns == p.sandbox_ns.inode
            && matches!(h.kind, HopKind::Netfilter { hook: Hook::Prerouting, slot, .. } if slot >= 4)
    })?;
    if h.dst() != p.host_ip {
        return None;
    }
    let mut f = Finding::new(FindingKind::NoDnat);
    f.netns = Some(p.sandbox_ns.label());
    f.device = h.device.clone();
    f.hook = Some(Hook::Prerouting);
    f.table = Some("nat".into());
    f.address = Some(p.host_ip);
    Some(f)
}

/// Routed back out of the sandbox namespace instead of to the guest.
fn routed_back(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req.iter().find(|h| {
        h.netns == p.sandbox_ns.inode
            && matches!(&h.kind, HopKind::Netfilter { hook: Hook::Forward, out_dev: Some(o), .. } if *o == p.ns_veth)
    })?;
    let mut f = Finding::new(FindingKind::RoutedBack);
    f.netns = Some(p.sandbox_ns.label());
    f.device = Some(p.ns_veth.clone());
    f.hook = Some(Hook::Forward);
    f.address = Some(h.dst());
    Some(f)
}

fn routing_loop(req: &[&Hop]) -> Option<Finding> {
    let ttl = req.iter().map(|h| h.pkt.ttl).filter(|t| *t > 0).min()?;
    (ttl <= 2).then(|| {
        let mut f = Finding::new(FindingKind::RoutingLoop);
        f.ttl = Some(ttl);
        f
    })
}
