//! The effect's place, when nothing differed before it: the actors at the place of a drop,
//! chosen by the kernel's drop reason and location and the hop before it (a firewall rule,
//! rp_filter, forwarding off or a route, a qdisc, the tap's reader, an MTU, tc or XDP).
use crate::{
    engine::{
        actor::{Actor, ActorId, How, Role},
        fib,
        inventory::{Attach, NsInventory},
    },
    firewall::model::{Action, HookPoint},
    hook::Hook,
    hop::{Hop, HopKind},
    journey::Leg,
    reason::{DropReason, ReasonClass},
};

use super::{
    Ctx,
    devices::{filter_actor, program_actor},
    firewall::{acting, hook_point, rank},
    routing::{route_actor, routing, state_actor},
    settle,
};

/// Actors at the place of a drop, chosen by the kernel's reason and location and the hop
/// before it.
pub fn for_drop(ctx: &Ctx<'_>, i: usize, reason: &DropReason) -> Vec<Actor> {
    let Some((leg, h)) = ctx.hop(i) else {
        return Vec::new();
    };
    let Some(inv) = ctx.inv(h.netns) else {
        return Vec::new();
    };
    let func = h.function.as_deref().unwrap_or("");
    let prev = previous_packet_hop(ctx, i, leg, h.netns);
    match reason.class() {
        ReasonClass::Netfilter => netfilter_drop(ctx, inv, leg, h, prev),
        ReasonClass::RpFilter => rp_filter(ctx, inv, leg, h, prev),
        ReasonClass::InputAddrErrors | ReasonClass::InputNoRoute | ReasonClass::NoRoute => {
            forwarding_or_route(ctx, inv, leg, h, prev)
        }
        _ if func == "ip_error" => forwarding_or_route(ctx, inv, leg, h, prev),
        ReasonClass::QdiscDrop => qdisc(inv, h),
        ReasonClass::TapNotRead => vmm(ctx),
        ReasonClass::PacketTooBig => mtu(inv, h, prev),
        _ if reason.name().starts_with("TC_") || func.starts_with("tcf_") || func.starts_with("tcx") => {
            tc_drop(inv, h, reason.name().ends_with("EGRESS"))
        }
        _ if func.contains("xdp") || reason.name().contains("XDP") => xdp(inv, h),
        _ => Vec::new(),
    }
}

/// The last packet hop of the same leg in the same namespace before hop `i`.
fn previous_packet_hop<'a>(ctx: &Ctx<'a>, i: usize, leg: Leg, netns: u32) -> Option<&'a Hop> {
    ctx.j.hops[..i]
        .iter()
        .rev()
        .find(|(l, h)| {
            *l == leg && h.netns == netns && h.is_packet() && !matches!(h.kind, HopKind::Drop { .. })
        })
        .map(|(_, h)| h)
}

fn netfilter_drop(ctx: &Ctx<'_>, inv: &NsInventory, leg: Leg, h: &Hop, prev: Option<&Hop>) -> Vec<Actor> {
    let drops = |a: &Action| matches!(a, Action::Drop | Action::Reject);
    match prev.map(|p| &p.kind) {
        Some(HopKind::Netfilter {
            hook,
            priority,
            window_end,
            ..
        }) => {
            let hp = hook_point(*hook);
            let pkt = ctx.packet(leg, prev.unwrap_or(h));
            let hi = if *window_end == i32::MAX {
                i32::MAX
            } else {
                *window_end - 1
            };
            let found = rank(inv, hp, acting(inv, hp, (*priority, hi), &pkt, &drops));
            // Past the last slot of POSTROUTING the packet still crosses the device's netdev
            // egress chains before any other probe sees it.
            if found.is_empty() && *hook == Hook::Postrouting && *window_end == i32::MAX {
                let hits = acting(inv, HookPoint::Egress, (i32::MIN, i32::MAX), &pkt, &drops);
                return rank(inv, HookPoint::Egress, hits);
            }
            found
        }
        // Received and not yet at PREROUTING: the netdev (or bridge) ingress chains.
        Some(HopKind::Tcx { ingress: true } | HopKind::Receive) | None => {
            let pkt = ctx.packet(leg, prev.unwrap_or(h));
            let hits = acting(inv, HookPoint::Ingress, (i32::MIN, i32::MAX), &pkt, &drops);
            rank(inv, HookPoint::Ingress, hits)
        }
        // After the last hook, before the driver: netdev egress chains.
        Some(_) => {
            let pkt = ctx.packet(leg, prev.unwrap_or(h));
            let hits = acting(inv, HookPoint::Egress, (i32::MIN, i32::MAX), &pkt, &drops);
            rank(inv, HookPoint::Egress, hits)
        }
    }
}

fn rp_filter(ctx: &Ctx<'_>, inv: &NsInventory, _leg: Leg, h: &Hop, prev: Option<&Hop>) -> Vec<Actor> {
    let dev = prev
        .and_then(|p| match &p.kind {
            HopKind::Netfilter { in_dev, .. } => in_dev.clone(),
            _ => p.device.clone(),
        })
        .or(h.device.clone());
    let Some(dev) = dev else { return Vec::new() };
    let Some((value, key)) = inv.conf_max(&dev, "rp_filter") else {
        return Vec::new();
    };
    let mut out = vec![Actor {
        role: Role::Cause,
        how: How::State,
        netns: Some(inv.label.clone()),
        device: Some(dev.clone()),
        place: "route lookup (reverse path)".into(),
        does: format!(
            "drops packets from {} that would not be routed back out {dev}",
            h.src()
        ),
        id: ActorId::Sysctl {
            name: key,
            value: value.to_string(),
        },
    }];
    // The route back to the source that makes the check fail.
    let back = fib::lookup(
        inv,
        &fib::Flow {
            dst: h.src(),
            proto: 6,
            ..Default::default()
        },
    );
    if let Some(r) = back.route.filter(|r| r.device.as_deref() != Some(dev.as_str())) {
        out.push(route_actor(inv, r, Role::Candidate));
    }
    let _ = ctx;
    out
}

fn forwarding_or_route(
    ctx: &Ctx<'_>,
    inv: &NsInventory,
    leg: Leg,
    h: &Hop,
    prev: Option<&Hop>,
) -> Vec<Actor> {
    let dev = prev
        .and_then(|p| match &p.kind {
            HopKind::Netfilter { in_dev, .. } => in_dev.clone(),
            _ => p.device.clone(),
        })
        .or(h.device.clone());
    // Forwarding off (globally or on the input device) answers with ip_error.
    let off = |key: String| inv.sysctl(&key).is_some_and(|v| v.trim() == "0").then_some(key);
    let key = off("net.ipv4.ip_forward".into()).or_else(|| {
        dev.as_ref()
            .and_then(|d| off(format!("net.ipv4.conf.{d}.forwarding")))
    });
    if let Some(key) = key {
        return vec![Actor {
            role: Role::Cause,
            how: How::State,
            netns: Some(inv.label.clone()),
            device: dev,
            place: "route lookup (forwarding)".into(),
            does: "keeps the namespace from forwarding".into(),
            id: ActorId::Sysctl {
                name: key,
                value: "0".into(),
            },
        }];
    }
    routing(ctx, inv, leg, prev.unwrap_or(h))
}

fn qdisc(inv: &NsInventory, h: &Hop) -> Vec<Actor> {
    let Some(dev) = h.device.as_deref() else {
        return Vec::new();
    };
    inv.qdiscs
        .iter()
        .filter(|q| q.device == dev && q.parent == "root")
        .map(|q| Actor {
            role: Role::Cause,
            how: How::Event,
            netns: Some(inv.label.clone()),
            device: Some(q.device.clone()),
            place: "queue discipline".into(),
            does: match q.limit {
                Some(l) => format!("drops what does not fit (limit {l})"),
                None => "drops packets".into(),
            },
            id: ActorId::Qdisc {
                device: q.device.clone(),
                qdisc: q.kind.clone(),
                parent: q.parent.clone(),
            },
        })
        .collect()
}

fn vmm(ctx: &Ctx<'_>) -> Vec<Actor> {
    let (pid, state) = match &ctx.facts.reader {
        Some(r) => (Some(r.pid), format!("state {}", r.state)),
        None => (ctx.path.vmm_pid, "not holding the tap".into()),
    };
    vec![Actor {
        role: Role::Cause,
        how: How::State,
        netns: Some(ctx.path.sandbox_ns.label()),
        device: Some(ctx.path.tap.clone()),
        place: "the tap's reader".into(),
        does: "does not read the tap".into(),
        id: ActorId::Vmm { pid, state },
    }]
}

fn mtu(inv: &NsInventory, h: &Hop, prev: Option<&Hop>) -> Vec<Actor> {
    let dev = prev
        .and_then(|p| match &p.kind {
            HopKind::Netfilter { out_dev, .. } => out_dev.clone(),
            _ => None,
        })
        .or(h.device.clone());
    let Some(l) = dev.as_deref().and_then(|d| inv.link_named(d)) else {
        return Vec::new();
    };
    vec![state_actor(
        inv,
        Some(l.name.clone()),
        ActorId::Link {
            device: l.name.clone(),
            state: format!("mtu {}", l.mtu),
        },
        format!("takes packets of at most {} bytes", l.mtu),
    )]
}

fn tc_drop(inv: &NsInventory, h: &Hop, egress: bool) -> Vec<Actor> {
    let Some(dev) = h.device.as_deref() else {
        return Vec::new();
    };
    let attach = if egress {
        [Attach::TcxEgress, Attach::TcEgress]
    } else {
        [Attach::TcxIngress, Attach::TcIngress]
    };
    let dir = if egress { "egress" } else { "ingress" };
    let mut out: Vec<Actor> = inv
        .programs
        .iter()
        .filter(|p| !p.ours && p.device.as_deref() == Some(dev) && attach.contains(&p.attach))
        .map(|p| program_actor(inv, p, Role::Candidate))
        .collect();
    out.extend(
        inv.filters
            .iter()
            .filter(|f| f.device == dev && f.direction == dir && f.program.is_none())
            .map(|f| filter_actor(inv, f, Role::Candidate)),
    );
    settle(out)
}

fn xdp(inv: &NsInventory, h: &Hop) -> Vec<Actor> {
    let Some(dev) = h.device.as_deref() else {
        return Vec::new();
    };
    settle(
        inv.programs
            .iter()
            .filter(|p| !p.ours && p.attach == Attach::Xdp && p.device.as_deref() == Some(dev))
            .map(|p| program_actor(inv, p, Role::Candidate))
            .collect(),
    )
}
