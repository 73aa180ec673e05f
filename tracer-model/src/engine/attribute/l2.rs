//! Layer 2 as an actor: the neighbour entry that gave a frame the wrong destination MAC, or,
//! for a reply from the guest, the guest's own ARP cache.
use crate::{
    engine::{
        actor::{Actor, ActorId, How, Role},
        expect::Side,
        inventory::NsInventory,
    },
    hop::{Hop, HopKind},
    journey::Leg,
    tcp::nud_name,
};

use super::Ctx;

/// The neighbour entry that gave a frame the wrong L2 destination; toward the host side from
/// the guest, the guest's own ARP cache (not readable).
pub(super) fn l2(ctx: &Ctx<'_>, inv: &NsInventory, leg: Leg, h: &Hop) -> Vec<Actor> {
    let side = ctx.route.side(h.netns);
    let receiving = matches!(h.kind, HopKind::Tcx { ingress: true } | HopKind::Receive);
    if leg == Leg::Reply && side == Side::Sandbox && receiving {
        let mac = h
            .deep
            .as_ref()
            .and_then(|d| d.headers())
            .and_then(|x| x.l2)
            .map(|l| l.dst);
        return vec![Actor {
            role: Role::Cause,
            how: How::Event,
            netns: Some(inv.label.clone()),
            device: h.device.clone(),
            place: "the guest's ARP cache".into(),
            does: format!(
                "sends the reply to {}, not to {}'s MAC",
                mac.as_deref().unwrap_or("another MAC"),
                h.device.as_deref().unwrap_or("the tap")
            ),
            id: ActorId::Guest {
                what: "its neighbour entry for its gateway has a stale MAC".into(),
            },
        }];
    }
    // The sender's neighbour entry for the next hop: who sent this frame.
    let (sender_ns, dev, next) = match (side, leg, receiving) {
        (Side::Sandbox, Leg::Request, true) => (
            ctx.path.host_inode(),
            ctx.path.host_veth.clone(),
            ctx.path.ns_veth_ip,
        ),
        (Side::Sandbox, Leg::Request, false) => (
            Some(ctx.path.sandbox_ns.inode),
            ctx.path.guest_side_dev().to_string(),
            Some(ctx.path.guest_ip),
        ),
        (Side::Host, Leg::Reply, true) => (
            Some(ctx.path.sandbox_ns.inode),
            ctx.path.ns_veth.clone(),
            ctx.path.host_veth_ip,
        ),
        (Side::Sandbox, Leg::Reply, false) => (
            Some(ctx.path.sandbox_ns.inode),
            ctx.path.ns_veth.clone(),
            ctx.path.host_veth_ip,
        ),
        (Side::Host, Leg::Request, false) => (
            ctx.path.host_inode(),
            ctx.path.host_veth.clone(),
            ctx.path.ns_veth_ip,
        ),
        _ => (None, String::new(), None),
    };
    let (Some(ns), Some(next)) = (sender_ns.and_then(|n| ctx.inv(n)), next) else {
        return Vec::new();
    };
    ns.neighbours
        .iter()
        .filter(|n| n.addr == next && n.device == dev)
        .map(|n| Actor {
            role: Role::Cause,
            how: How::State,
            netns: Some(ns.label.clone()),
            device: Some(n.device.clone()),
            place: "neighbour resolution".into(),
            does: format!(
                "sends frames for {} to {}",
                n.addr,
                n.mac.as_deref().unwrap_or("no MAC")
            ),
            id: ActorId::Neighbour {
                device: n.device.clone(),
                address: n.addr,
                mac: n.mac.clone(),
                state: nud_name(n.state).into(),
            },
        })
        .collect()
}
