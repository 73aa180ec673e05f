//! Where each hop is on the diagram, and how far each lane got: the places events show, the
//! NAT step and the guest (which have no events of their own), hooks off the expected path,
//! and what lies before the furthest place reached (passed).
use tracer_model::{
    journey::Leg,
    verdict::{Direction, Outcome, ResetBy},
};

use super::{
    Lane, NodeKind, Places, Reach, Spot, ZoneKind,
    skeleton::{Names, mark},
};
use crate::report::record::{HopRecord, JourneyRecord};

pub(super) fn zone_of(p: &Places, n: &Names, netns: &str) -> Option<usize> {
    if netns == n.sandbox {
        return Some(1);
    }
    if netns == n.host {
        return Some(0);
    }
    let i = n.others.iter().position(|(o, _)| o == netns)?;
    p.zone(&format!("other-{}", i + 1))
}

/// The node of a device in a zone; the zone's first device when the device is not one of its
/// nodes (the NAT step and the client are not devices).
pub(super) fn device_node(p: &Places, zone: usize, device: Option<&str>) -> Option<usize> {
    let mut nodes = p.zone_nodes(zone);
    let named = device.and_then(|d| {
        p.zone_nodes(zone)
            .find(|(_, x)| x.label == d && !matches!(x.kind, NodeKind::Nat | NodeKind::Client))
    });
    named
        .or_else(|| nodes.find(|(_, x)| !matches!(x.kind, NodeKind::Nat | NodeKind::Client)))
        .map(|(i, _)| i)
}

/// Where one hop is on the diagram.
pub(super) fn spot_of(p: &Places, n: &Names, h: &HopRecord) -> Option<(Lane, Spot)> {
    let zone = zone_of(p, n, &h.netns)?;
    let lane = hop_lane(h);
    if let Some(hook) = h.point.strip_prefix("nf/")
        && let Some(m) = hook_mark(p, zone, lane, hook)
    {
        return Some((lane, Spot::Mark(m)));
    }
    if zone == 0 && matches!(h.point.as_str(), "socket" | "recv-reset" | "send-reset") {
        return Some((lane, Spot::Node(0)));
    }
    device_node(p, zone, h.device.as_deref()).map(|i| (lane, Spot::Node(i)))
}

/// The lane of a hop. Socket events are control hops: the one that completes the handshake,
/// and a received RST, are the reply arriving.
fn hop_lane(h: &HopRecord) -> Lane {
    let detail = h.detail.as_deref().unwrap_or_default();
    let arrival = h.point == "recv-reset" || (h.point == "socket" && detail.ends_with("→ ESTABLISHED"));
    if arrival { Lane::Reply } else { Lane::of(h.leg) }
}

pub(super) fn hook_mark(p: &Places, zone: usize, lane: Lane, hook: &str) -> Option<usize> {
    p.marks
        .iter()
        .position(|m| m.zone == zone && m.lane == lane && m.hook == hook)
}

pub(super) fn set_reach(p: &mut Places, (lane, spot): (Lane, Spot), reach: Reach) {
    let slot = match spot {
        Spot::Mark(m) => &mut p.marks[m].reach,
        Spot::Node(i) => match lane {
            Lane::Request => &mut p.nodes[i].request,
            Lane::Reply => &mut p.nodes[i].reply,
        },
    };
    *slot = (*slot).max(reach);
}

/// Hooks off the expected path that a hop (or the drop) names get marks of their own.
pub(super) fn add_unexpected_marks(p: &mut Places, n: &Names, r: &JourneyRecord) {
    let hops = r.hops.iter().filter_map(|h| {
        let hook = h.point.strip_prefix("nf/")?;
        Some((zone_of(p, n, &h.netns)?, hop_lane(h), hook.to_string()))
    });
    let dropped = r.drop.as_ref().and_then(|d| {
        let lane = match d.direction {
            Direction::Request => Lane::Request,
            Direction::Reply => Lane::Reply,
        };
        Some((
            zone_of(p, n, d.netns.as_deref()?)?,
            lane,
            d.hook?.name().to_string(),
        ))
    });
    let wanted: Vec<(usize, Lane, String)> = hops.chain(dropped).collect();
    for (zone, lane, hook) in wanted {
        if hook_mark(p, zone, lane, &hook).is_none() {
            unexpected_mark(p, zone, lane, &hook);
        }
    }
}

/// Unexpected hooks seen on the way become marks of their own: in the sandbox's namespace on
/// the edge after the NAT step, on the host side on the client's edge.
fn unexpected_mark(p: &mut Places, zone: usize, lane: Lane, hook: &str) -> Option<usize> {
    let edge = match p.zones[zone].kind {
        ZoneKind::Host => 0,
        ZoneKind::Sandbox => p.nodes.iter().position(|n| n.kind == NodeKind::Nat)?,
        _ => return None,
    };
    Some(mark(p, lane, hook, zone, edge, false))
}

/// The NAT step has no event of its own: the SYN's new destination shows the DNAT, the
/// SYN-ACK's restored source the reverse.
pub(super) fn nat_reach(p: &mut Places, r: &JourneyRecord, n: &Names) {
    let Some(sb) = &r.sandbox else { return };
    let nat = p
        .nodes
        .iter()
        .position(|x| x.kind == NodeKind::Nat)
        .expect("nat node");
    let to_guest = format!("→ {}:", sb.guest_ip);
    let from_host = format!("{}:", sb.host_ip);
    let tuple = |h: &HopRecord| h.tuple.clone().unwrap_or_default();
    let dnat = r
        .hops
        .iter()
        .any(|h| h.leg == Leg::Request && h.netns == n.sandbox && tuple(h).contains(&to_guest));
    let undnat = r.hops.iter().any(|h| {
        h.leg == Leg::Reply && (h.netns == n.sandbox || h.netns == n.host) && tuple(h).starts_with(&from_host)
    });
    if dnat {
        p.nodes[nat].request = Reach::Seen;
    }
    if undnat {
        p.nodes[nat].reply = Reach::Seen;
    }
}

/// No event comes from inside the guest: it is reached when the VMM read the SYN or a reply
/// came out of the tap, and it answered when a reply came out of the tap.
pub(super) fn guest_reach(p: &mut Places, r: &JourneyRecord, spots: &[Option<(Lane, Spot)>]) {
    let guest = p
        .nodes
        .iter()
        .position(|n| n.kind == NodeKind::Guest)
        .expect("guest node");
    let tap = p.nodes.iter().position(|n| n.key == "tap").expect("tap node");
    let from_tap = spots.contains(&Some((Lane::Reply, Spot::Node(tap))));
    let read = r
        .hops
        .iter()
        .zip(spots)
        .any(|(h, s)| h.point == "consumed" && *s == Some((Lane::Request, Spot::Node(tap))));
    let by_guest = r.reset.as_ref().is_some_and(|x| x.by == ResetBy::Guest);
    let answered = from_tap || by_guest || matches!(r.outcome, Outcome::Connected | Outcome::Late);
    if answered || read || r.outcome == Outcome::NoReply {
        p.nodes[guest].request = Reach::Passed;
    }
    if answered {
        p.nodes[guest].reply = Reach::Passed;
    }
}

/// Along each lane, what lies before the furthest place reached was passed. The request
/// lane's order is left to right, the reply lane's right to left; places off the path take
/// no part.
pub(super) fn infer_passed(p: &mut Places) {
    for lane in [Lane::Request, Lane::Reply] {
        let mut order = lane_order(p, lane);
        if lane == Lane::Reply {
            order.reverse();
        }
        let reach = |p: &Places, s: Spot| match s {
            Spot::Mark(m) => p.marks[m].reach,
            Spot::Node(i) => match lane {
                Lane::Request => p.nodes[i].request,
                Lane::Reply => p.nodes[i].reply,
            },
        };
        let Some(last) = order.iter().rposition(|s| reach(p, *s) > Reach::Unreached) else {
            continue;
        };
        for &s in &order[..last] {
            set_reach(p, (lane, s), Reach::Passed);
        }
    }
}

/// The main path's places on one lane, left to right: nodes, and between them the expected
/// marks in the order this lane meets them.
fn lane_order(p: &Places, lane: Lane) -> Vec<Spot> {
    let main = |i: usize| {
        matches!(
            p.zones[p.nodes[i].zone].kind,
            ZoneKind::Host | ZoneKind::Sandbox | ZoneKind::Guest
        )
    };
    let mut out = Vec::new();
    for i in (0..p.nodes.len()).filter(|&i| main(i)) {
        out.push(Spot::Node(i));
        let mut marks: Vec<usize> = p
            .edge_marks(i, lane)
            .into_iter()
            .filter(|&m| p.marks[m].expected)
            .collect();
        if lane == Lane::Reply {
            marks.reverse();
        }
        out.extend(marks.into_iter().map(Spot::Mark));
    }
    out
}
