//! Observed against expected, hop by hop: the first hop where a followed packet differs from
//! the path it should take, and how. That difference is the cause; a drop, a reset or silence
//! after it is its effect.
use serde::Serialize;

use super::{
    expect::{CtWant, Expect, Route, Side, Stage},
    observe::{Ct, IPS_DST_NAT, Observed},
};
use crate::{
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
};

/// What differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// In a namespace that is not on the path (another sandbox's).
    Namespace,
    /// At a point the path does not cross (delivered locally, sent back out).
    Point,
    /// On (or routed to) another device.
    Device,
    Destination,
    Source,
    Conntrack,
    Ttl,
    Mark,
    /// The Ethernet destination.
    L2Destination,
}

/// Whether the reply leg's first RST came in from the guest (first seen at the tap or its
/// bridge, in the sandbox's namespace).
fn guest_answered_rst(j: &Journey, route: &Route<'_>) -> bool {
    let p = route.path;
    j.hops
        .iter()
        .find(|(l, h)| *l == Leg::Reply && h.is_packet() && h.pkt.flags & tracer_common::tcp_flag::RST != 0)
        .is_some_and(|(_, h)| {
            h.netns == p.sandbox_ns.inode
                && (h.device.as_deref() == Some(p.tap.as_str()) || h.device.as_deref() == p.bridge.as_deref())
                && matches!(h.kind, HopKind::Tcx { ingress: true } | HopKind::Receive)
        })
}

/// The first difference between a packet and its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub leg: Leg,
    /// Index in the journey's hops of the hop that differed.
    pub hop: usize,
    /// The last hop of the same leg before it that matched (None: it differed from the start).
    pub last_match: Option<usize>,
    pub field: Field,
    pub expected: String,
    pub observed: String,
}

/// Every difference of every packet hop, in hop order (the first of each hop only: a hop that
/// landed in another namespace differs in everything after that).
pub fn walk(j: &Journey, route: &Route<'_>) -> Vec<Divergence> {
    let mut out = Vec::new();
    let mut last_match: [Option<usize>; 2] = [None, None];
    let from_guest = guest_answered_rst(j, route);
    for (i, (leg, h)) in j.hops.iter().enumerate() {
        let slot = match leg {
            Leg::Request => 0,
            Leg::Reply => 1,
            Leg::Control => continue,
        };
        // A RST made on the way (a REJECT, a stack without the socket) is not the packet the
        // path carries: the outcome judges it, the walk does not. The guest's own RST is its
        // answer, and walks the reply path like a SYN-ACK.
        if h.pkt.flags & tracer_common::tcp_flag::RST != 0 && !(from_guest && *leg == Leg::Reply) {
            continue;
        }
        // A drop is the effect, not a place on the path; a free elsewhere than at the tap
        // (a veth's XDP taking the frame) says nothing about where the packet is.
        let freed_elsewhere =
            matches!(h.kind, HopKind::Consumed) && h.device.as_deref() != Some(route.path.tap.as_str());
        if matches!(h.kind, HopKind::Drop { .. }) {
            // A drop on a device the path does not cross (a frame redirected to `lo`) shows
            // where the packet went, and that is the difference.
            if let Some(stray) = stray_device(route, h) {
                out.push(Divergence {
                    leg: *leg,
                    hop: i,
                    last_match: last_match[slot],
                    field: Field::Device,
                    expected: "the path's device".into(),
                    observed: stray,
                });
            }
            continue;
        }
        if freed_elsewhere {
            continue;
        }
        let Some(obs) = Observed::of(h) else { continue };
        let want = route.expect(*leg, h);
        match first_difference(&want, h, &obs) {
            Some((field, expected, observed)) => out.push(Divergence {
                leg: *leg,
                hop: i,
                last_match: last_match[slot],
                field,
                expected,
                observed,
            }),
            None => last_match[slot] = Some(i),
        }
    }
    out
}

/// The device of a drop in a path namespace when it is none of the path's devices there
/// (only when those are all known by ifindex).
fn stray_device(route: &Route<'_>, h: &Hop) -> Option<String> {
    if h.ifindex == 0 {
        return None;
    }
    let known = route.path_devices(route.side(h.netns))?;
    (!known.contains(&h.ifindex)).then(|| {
        format!(
            "on {}",
            h.device
                .clone()
                .unwrap_or_else(|| format!("ifindex {}", h.ifindex))
        )
    })
}

/// What differed, what was expected, what was observed.
type Diff = (Field, String, String);
/// One comparison of a hop with its expectation.
type Check = fn(&Expect, &Hop, &Observed) -> Option<Diff>;

/// The most telling difference of one hop: where it is before what it looks like.
fn first_difference(want: &Expect, h: &Hop, obs: &Observed) -> Option<Diff> {
    let checks: [Check; 8] = [
        namespace,
        point,
        device,
        destination,
        source,
        conntrack,
        ttl,
        mark,
    ];
    checks
        .iter()
        .find_map(|c| c(want, h, obs))
        .or_else(|| l2(want, obs))
}

fn namespace(want: &Expect, h: &Hop, _: &Observed) -> Option<Diff> {
    (want.pos.side == Side::Other).then(|| {
        (
            Field::Namespace,
            "the host side or the sandbox's namespace".into(),
            h.ns_label(),
        )
    })
}

fn point(want: &Expect, h: &Hop, _: &Observed) -> Option<Diff> {
    if want.on_path {
        return None;
    }
    let at = match &h.kind {
        HopKind::Netfilter { hook, .. } => format!("{} hook", hook.name()),
        HopKind::SendReset { .. } => "its own TCP stack (answered with RST)".into(),
        HopKind::Tcx { ingress: true } | HopKind::Receive => "received".into(),
        HopKind::Tcx { ingress: false } | HopKind::Xmit => "sent out".into(),
        _ => "off the path".into(),
    };
    let expected = match (want.pos.side, want.pos.stage) {
        (Side::Sandbox, Stage::Input) => "forwarded to the guest",
        (Side::Host, Stage::Forward) => "delivered to the client",
        _ => "on the path",
    };
    Some((
        Field::Point,
        expected.into(),
        format!("{at} in {}{}", h.ns_label(), dev_suffix(h)),
    ))
}

fn dev_suffix(h: &Hop) -> String {
    h.device.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
}

fn device(want: &Expect, h: &Hop, _: &Observed) -> Option<Diff> {
    let (in_idx, out_idx, in_name, out_name) = match &h.kind {
        HopKind::Netfilter {
            in_ifindex,
            out_ifindex,
            in_dev,
            out_dev,
            ..
        } => (*in_ifindex, *out_ifindex, in_dev.clone(), out_dev.clone()),
        _ => (h.ifindex, 0, h.device.clone(), None),
    };
    let bad = |allowed: &Option<Vec<u32>>, i: u32| {
        allowed
            .as_ref()
            .is_some_and(|a| !a.is_empty() && i != 0 && !a.contains(&i))
    };
    if bad(&want.out_devs, out_idx) {
        return Some((
            Field::Device,
            "out the path's device".into(),
            format!("out {}", out_name.unwrap_or_else(|| format!("ifindex {out_idx}"))),
        ));
    }
    if bad(&want.in_devs, in_idx) {
        let verb = match want.pos.stage {
            Stage::Egress | Stage::Xmit => "out",
            _ => "in",
        };
        return Some((
            Field::Device,
            "the path's device".into(),
            format!(
                "{verb} {}",
                in_name.unwrap_or_else(|| format!("ifindex {in_idx}"))
            ),
        ));
    }
    None
}

fn endpoint((a, p): (std::net::Ipv4Addr, u16)) -> String {
    format!("{a}:{p}")
}

fn destination(want: &Expect, _: &Hop, obs: &Observed) -> Option<Diff> {
    (want.dst != (obs.dst, obs.dport)).then(|| {
        (
            Field::Destination,
            endpoint(want.dst),
            endpoint((obs.dst, obs.dport)),
        )
    })
}

fn source(want: &Expect, _: &Hop, obs: &Observed) -> Option<Diff> {
    (want.src != (obs.src, obs.sport))
        .then(|| (Field::Source, endpoint(want.src), endpoint((obs.src, obs.sport))))
}

fn conntrack(want: &Expect, _: &Hop, obs: &Observed) -> Option<Diff> {
    let (Some(w), Some(o)) = (want.ct, obs.ct) else {
        return None;
    };
    let differs = match (w, o) {
        (CtWant::None, Ct::None) => false,
        // A packet seen untracked before conntrack ran was marked so by a raw rule: that is
        // the difference, wherever it is seen.
        (CtWant::None, Ct::Untracked) => true,
        (CtWant::None, Ct::Tracked { .. }) => false,
        (CtWant::Tracked { .. }, Ct::None | Ct::Untracked) => true,
        (
            CtWant::Tracked { info, dnat },
            Ct::Tracked {
                info: i,
                status,
                zone,
            },
        ) => {
            i != info
                || zone.is_some_and(|z| z != 0)
                || dnat.is_some_and(|d| d != (status & IPS_DST_NAT != 0))
        }
    };
    differs.then(|| (Field::Conntrack, want_ct(w), o.describe()))
}

fn want_ct(w: CtWant) -> String {
    match w {
        CtWant::None => "not yet tracked".into(),
        CtWant::Tracked { info, dnat } => {
            let state = Ct::Tracked {
                info,
                status: 0,
                zone: Some(0),
            }
            .describe();
            match dnat {
                Some(true) => format!("{state}, destination NATed"),
                _ => state,
            }
        }
    }
}

fn ttl(want: &Expect, _: &Hop, obs: &Observed) -> Option<Diff> {
    // A higher TTL breaks nothing; only one lower than the path leaves is a difference.
    let w = want.ttl?;
    (obs.ttl != 0 && obs.ttl < w).then(|| (Field::Ttl, w.to_string(), obs.ttl.to_string()))
}

fn mark(want: &Expect, _: &Hop, obs: &Observed) -> Option<Diff> {
    let (Some(w), Some(o)) = (want.mark, obs.mark) else {
        return None;
    };
    (w != o).then(|| (Field::Mark, format!("{w:#x}"), format!("{o:#x}")))
}

fn l2(want: &Expect, obs: &Observed) -> Option<Diff> {
    let w = want.l2_dst.as_ref()?;
    let (_, dst) = obs.l2.as_ref()?;
    (!dst.eq_ignore_ascii_case(w)).then(|| (Field::L2Destination, w.clone(), dst.clone()))
}
