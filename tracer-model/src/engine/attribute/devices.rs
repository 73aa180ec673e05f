//! What sits on a device as actors: BPF programs and tc filters (their code is not read, so
//! they are candidates), named when a packet was redirected between devices, vanished
//! without a drop event, or had its connect() refused by a cgroup program.
use crate::{
    engine::{
        actor::{self, Actor, ActorId, How, Role},
        diverge::Divergence,
        expect::Side,
        inventory::{Attach, NsInventory, Program, TcFilter},
    },
    firewall::model::{Action, Source},
    hop::{Hop, HopKind},
    journey::Leg,
};

use super::{Ctx, routing::routing, settle};

/// A packet that turned up on another device without a route lookup in between: what sits
/// on the device it was last seen on (filters with redirect actions, programs) did it.
pub(super) fn redirected(ctx: &Ctx<'_>, d: &Divergence, leg: Leg, h: &Hop) -> Vec<Actor> {
    let prev = d.last_match.and_then(|i| ctx.hop(i)).map(|(_, p)| p);
    let mut out = Vec::new();
    for hop in prev.into_iter().chain([h]) {
        let Some(inv) = ctx.inv(hop.netns) else { continue };
        for a in device_programs(ctx, inv, leg, hop) {
            if !out.iter().any(|x: &Actor| x.id == a.id) {
                out.push(a);
            }
        }
    }
    // A filter whose action redirects is the one.
    let redirecting: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, a)| a.does.contains("redirect"))
        .map(|(i, _)| i)
        .collect();
    if let [i] = redirecting.as_slice() {
        let mut a = out.swap_remove(*i);
        a.role = Role::Cause;
        return vec![a];
    }
    // Nothing between the devices: the route lookup before them chose it.
    if out.is_empty()
        && let Some(inv) = ctx.inv(h.netns)
    {
        return routing(ctx, inv, leg, h);
    }
    settle(out)
}

/// BPF programs and tc filters on a hop's device (something between devices changed the
/// packet): candidates, since their code is not read.
pub(super) fn device_programs(_ctx: &Ctx<'_>, inv: &NsInventory, _leg: Leg, h: &Hop) -> Vec<Actor> {
    let Some(dev) = h.device.as_deref() else {
        return Vec::new();
    };
    let mut out: Vec<Actor> = inv
        .programs
        .iter()
        .filter(|p| !p.ours && p.device.as_deref() == Some(dev))
        .map(|p| program_actor(inv, p, Role::Candidate))
        .collect();
    out.extend(
        inv.filters
            .iter()
            .filter(|f| f.device == dev)
            .map(|f| filter_actor(inv, f, Role::Candidate)),
    );
    out
}

pub(super) fn program_actor(inv: &NsInventory, p: &Program, role: Role) -> Actor {
    Actor {
        role,
        how: How::State,
        netns: Some(inv.label.clone()),
        device: p.device.clone(),
        place: actor::attach_name(p.attach).into(),
        does: "runs on every packet here".into(),
        id: program_id(p),
    }
}

pub fn program_id(p: &Program) -> ActorId {
    ActorId::BpfProgram {
        id: p.id,
        name: p.name.clone(),
        tag: p.tag.clone(),
        attach: p.attach,
        device: p.device.clone(),
        cgroup: p.cgroup.clone(),
        holder_pid: p.holder.as_ref().map(|h| h.0),
        holder: p.holder.as_ref().map(|h| h.1.clone()),
    }
}

pub(super) fn filter_actor(inv: &NsInventory, f: &TcFilter, role: Role) -> Actor {
    Actor {
        role,
        how: How::State,
        netns: Some(inv.label.clone()),
        device: Some(f.device.clone()),
        place: format!("tc {}", f.direction),
        does: if f.actions.is_empty() {
            "classifies packets here".into()
        } else {
            f.actions.join(", ")
        },
        id: ActorId::TcFilter {
            device: f.device.clone(),
            direction: f.direction.clone(),
            filter: f.kind.clone(),
            priority: f.priority,
            handle: f.handle,
        },
    }
}

/// Programs and filters on the devices where a packet vanished without a drop event (XDP
/// drops, tc redirects): what sat between the last place it was seen and the next.
pub fn where_it_vanished(ctx: &Ctx<'_>, last: usize) -> Vec<Actor> {
    let Some((leg, h)) = ctx.hop(last) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // The device it was on, and (after a transmit) the peer device it should reach next.
    let mut places: Vec<(u32, String)> = h.device.iter().map(|d| (h.netns, d.clone())).collect();
    if matches!(h.kind, HopKind::Xmit | HopKind::Tcx { ingress: false }) {
        let p = ctx.path;
        let next = match (ctx.route.side(h.netns), leg) {
            (Side::Host, Leg::Request) => Some((p.sandbox_ns.inode, p.ns_veth.clone())),
            (Side::Sandbox, Leg::Reply) => p.host_inode().map(|i| (i, p.host_veth.clone())),
            _ => None,
        };
        places.extend(next);
    }
    for (ns, dev) in places {
        let Some(inv) = ctx.inv(ns) else { continue };
        out.extend(
            inv.programs
                .iter()
                .filter(|p| !p.ours && p.device.as_deref() == Some(dev.as_str()))
                .map(|p| program_actor(inv, p, Role::Candidate)),
        );
        out.extend(
            inv.filters
                .iter()
                .filter(|f| f.device == dev)
                .map(|f| filter_actor(inv, f, Role::Candidate)),
        );
        // nft netdev chains on the device.
        for t in inv.tables.iter().filter(|t| t.family == "netdev") {
            for c in t
                .chains
                .iter()
                .filter(|c| c.device.as_deref() == Some(dev.as_str()))
            {
                for r in c
                    .rules
                    .iter()
                    .filter(|r| matches!(r.action, Action::Drop | Action::Reject))
                {
                    out.push(Actor {
                        role: Role::Candidate,
                        how: How::State,
                        netns: Some(inv.label.clone()),
                        device: Some(dev.clone()),
                        place: "netdev hook".into(),
                        does: "drops packets".into(),
                        id: ActorId::FirewallRule {
                            source: Source::Nft.label().into(),
                            family: t.family.clone(),
                            table: t.name.clone(),
                            chain: c.name.clone(),
                            handle: r.handle,
                            rule: r.text.clone(),
                        },
                    });
                }
            }
        }
    }
    settle(out)
}

/// The client's connect() refused with EPERM/EACCES and no route or rule refusing it: the
/// cgroup programs effective on the client's cgroup.
pub fn connect_refused(ctx: &Ctx<'_>) -> Vec<Actor> {
    let Some(client) = &ctx.facts.client else {
        return Vec::new();
    };
    settle(
        client
            .programs
            .iter()
            .filter(|p| !p.ours && matches!(p.attach, Attach::CgroupConnect4 | Attach::CgroupSock))
            .map(|p| Actor {
                role: Role::Candidate,
                how: How::State,
                netns: None,
                device: None,
                place: format!("cgroup {}", p.cgroup.as_deref().unwrap_or(&client.cgroup)),
                does: "may refuse the connect() (its verdict is the EPERM)".into(),
                id: program_id(p),
            })
            .collect(),
    )
}
