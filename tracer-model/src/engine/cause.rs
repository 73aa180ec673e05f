//! From a decided effect (the verdict's outcome and its failing hop) to its cause: the first
//! causal difference between the journey and its path, and the actors named for it; where
//! nothing differed, the actors at the effect's place.
use super::{
    actor::{Actor, ActorId, How, Role},
    attribute::{self, Ctx},
    diverge::{self, Divergence, Field},
    expect::{Route, Side},
};
use crate::{
    facts::ReadFacts,
    hop::HopKind,
    journey::{Journey, JourneyId, Leg},
    path::ExpectedPath,
    verdict::{MisdirectedBy, MisdirectedInfo, Outcome, ResetBy, UnreachableKind, Verdict},
};

/// Sets the verdict's divergence and actors (and makes an attempt that reached another
/// sandbox `misdirected`, whatever answered it).
pub fn explain(j: &Journey, path: &ExpectedPath, facts: &ReadFacts, v: &mut Verdict) {
    let mut path = path.clone();
    if path.devices.guest_mac.is_none() {
        path.devices.guest_mac = guest_mac_from_frames(j, &path);
    }
    let client = j
        .client()
        .unwrap_or((path.host_veth_ip.unwrap_or(path.host_ip), 0));
    let route = Route {
        path: &path,
        client,
        guest_ttl: first_reply_ttl(j, &path),
    };
    let ctx = Ctx {
        j,
        path: &path,
        facts,
        route: &route,
    };
    if !matches!(j.id, JourneyId::Conn(_)) {
        v.actors = not_sent(&ctx, v);
        return;
    }
    let divs = diverge::walk(j, &route);
    if let Some(d) = divs.iter().find(|d| d.field == Field::Namespace) {
        misdirected(&ctx, d, v);
    }
    if v.outcome == Outcome::Connected {
        return;
    }
    let effect = effect_actors(&ctx, v);
    let before_effect = |d: &&Divergence| v.failing_hop.is_none_or(|f| d.hop <= f);
    let causal = divs
        .iter()
        .filter(before_effect)
        .find(|d| is_causal(d, &ctx, &effect));
    match causal {
        Some(d) => {
            let mut actors = attribute::for_divergence(&ctx, d);
            for mut a in effect {
                if !actors.iter().any(|x| x.id == a.id) {
                    a.role = Role::Effect;
                    actors.push(a);
                }
            }
            v.divergence = Some(d.clone());
            v.actors = actors;
        }
        None => v.actors = effect,
    }
}

/// Whether a difference caused what followed. A changed place, tuple, conntrack state or L2
/// destination does; a lower TTL only when it cannot survive the forwarding ahead; a mark
/// only when what acted later reads marks.
fn is_causal(d: &Divergence, ctx: &Ctx<'_>, effect: &[Actor]) -> bool {
    match d.field {
        Field::Ttl => d.observed.parse::<u8>().is_ok_and(|t| t <= 1),
        Field::Mark => attribute::uses_mark(&ctx.facts.namespaces, effect),
        _ => true,
    }
}

/// The attempt reached a namespace that is not on its path (another sandbox's, decided by
/// namespace inode: every guest is 169.254.0.21).
fn misdirected(ctx: &Ctx<'_>, d: &Divergence, v: &mut Verdict) {
    let Some((_, h)) = ctx.j.hops.get(d.hop) else {
        return;
    };
    if v.outcome == Outcome::Misdirected {
        return;
    }
    let answered = v.outcome == Outcome::Connected;
    let out_device = ctx.j.hops[..d.hop]
        .iter()
        .rev()
        .find(|(l, x)| *l == Leg::Request && ctx.route.side(x.netns) == Side::Host && x.device.is_some())
        .and_then(|(_, x)| x.device.clone());
    let failing = v.failing_hop;
    *v = Verdict {
        reply_ms: v.reply_ms,
        ..Verdict::new(Outcome::Misdirected)
    };
    v.failing_hop = failing.or(Some(d.hop));
    v.misdirected = Some(MisdirectedInfo {
        by: MisdirectedBy::Events,
        netns: Some(h.ns_label()),
        device: h.device.clone(),
        out_device,
        sandbox_id: None,
        answered,
    });
}

/// Actors at the effect's place, by what the effect is.
fn effect_actors(ctx: &Ctx<'_>, v: &Verdict) -> Vec<Actor> {
    let at = v.failing_hop;
    match v.outcome {
        Outcome::Dropped | Outcome::Unreachable if v.drop.is_some() => {
            let d = v.drop.as_ref().expect("checked");
            let found = at
                .map(|i| attribute::for_drop(ctx, i, &d.reason))
                .unwrap_or_default();
            if found.is_empty() && v.outcome == Outcome::Unreachable {
                return neighbour(ctx, v);
            }
            found
        }
        Outcome::Unreachable => match v.unreachable.as_ref().map(|u| u.kind) {
            Some(UnreachableKind::Neighbour) => neighbour(ctx, v),
            _ => at
                .map(|i| attribute::where_it_vanished(ctx, i))
                .unwrap_or_default(),
        },
        Outcome::Queued => match v.queued.as_ref().map(|q| q.queue) {
            Some(crate::verdict::QueueKind::Tap) => vmm(ctx),
            _ => {
                let mut out = at
                    .map(|i| attribute::for_drop(ctx, i, &crate::reason::DropReason::new("QDISC_DROP")))
                    .unwrap_or_default();
                if out.is_empty() {
                    out = at
                        .map(|i| attribute::where_it_vanished(ctx, i))
                        .unwrap_or_default();
                }
                out
            }
        },
        Outcome::NoReply => silent_guest(ctx, at),
        Outcome::Late => late(ctx, v),
        Outcome::Reset => match v.reset.as_ref().map(|r| r.by) {
            Some(ResetBy::Guest) => vec![guest(ctx, "nothing listens on the port (it answered RST)")],
            _ => Vec::new(),
        },
        Outcome::Unknown if ctx.facts.request_unanswered => small_mtus(ctx),
        Outcome::Unknown => at
            .map(|i| attribute::where_it_vanished(ctx, i))
            .unwrap_or_default(),
        Outcome::Dropped | Outcome::Connected | Outcome::Misdirected => Vec::new(),
    }
}

/// The VMM read the SYN and nothing came back: the guest, or something on the tap that takes
/// the guest's frames before any probe sees them (an XDP program): when such a thing is
/// there, the events cannot tell which.
fn silent_guest(ctx: &Ctx<'_>, at: Option<usize>) -> Vec<Actor> {
    let mut out = vec![guest(ctx, "read the SYN and sent nothing back")];
    let on_tap = at
        .map(|i| attribute::where_it_vanished(ctx, i))
        .unwrap_or_default();
    if !on_tap.is_empty() {
        out.extend(on_tap);
        for a in &mut out {
            a.role = Role::Candidate;
        }
    }
    out
}

/// The handshake passed and the request after it did not: a path device whose MTU is lower
/// than a full-size segment is a candidate (the tracer does not follow data packets).
fn small_mtus(ctx: &Ctx<'_>) -> Vec<Actor> {
    let p = ctx.path;
    let devices = [
        (p.host_inode(), p.host_veth.as_str()),
        (Some(p.sandbox_ns.inode), p.ns_veth.as_str()),
        (Some(p.sandbox_ns.inode), p.tap.as_str()),
    ];
    devices
        .iter()
        .filter_map(|(ns, dev)| {
            let inv = ctx.facts.namespaces.iter().find(|n| Some(n.netns) == *ns)?;
            let l = inv.link_named(dev).filter(|l| l.mtu > 0 && l.mtu < 1280)?;
            Some(Actor {
                role: Role::Candidate,
                how: How::State,
                netns: Some(inv.label.clone()),
                device: Some(l.name.clone()),
                place: "link".into(),
                does: format!("takes packets of at most {} bytes", l.mtu),
                id: ActorId::Link {
                    device: l.name.clone(),
                    state: format!("mtu {}", l.mtu),
                },
            })
        })
        .collect()
}

fn guest(ctx: &Ctx<'_>, what: &str) -> Actor {
    Actor {
        role: Role::Cause,
        how: How::Event,
        netns: Some(ctx.path.sandbox_ns.label()),
        device: Some(ctx.path.tap.clone()),
        place: "inside the VM".into(),
        does: what.into(),
        id: ActorId::Guest { what: what.into() },
    }
}

fn vmm(ctx: &Ctx<'_>) -> Vec<Actor> {
    reader_actor(ctx).into_iter().collect()
}

fn reader_actor(ctx: &Ctx<'_>) -> Option<Actor> {
    let (pid, state) = match &ctx.facts.reader {
        Some(r) => (Some(r.pid), format!("state {}", r.state)),
        None => (ctx.path.vmm_pid, "not holding the tap".into()),
    };
    Some(Actor {
        role: Role::Cause,
        how: How::State,
        netns: Some(ctx.path.sandbox_ns.label()),
        device: Some(ctx.path.tap.clone()),
        place: "the tap's reader".into(),
        does: "does not read the tap".into(),
        id: ActorId::Vmm { pid, state },
    })
}

/// ARP for the next hop went unanswered: the device and its peer, the sysctls that keep the
/// peer from answering, the VMM behind a tap.
/// A late reply: the guest when the time was spent inside the VM; when it was spent on the
/// way, what keeps a neighbour from answering where the SYN waited (the only wait the
/// inventory can explain); when where it went was not seen, no one.
fn late(ctx: &Ctx<'_>, v: &Verdict) -> Vec<Actor> {
    match v.late.as_ref().and_then(|l| l.split.as_ref()) {
        Some(s) if s.guest_ms >= s.to_guest_ms => vec![guest(ctx, "answers later than the client waits")],
        Some(s) => match &s.waited {
            Some((_, netns, device)) => neighbour_at(ctx, Some(netns), device.as_deref(), None),
            None => Vec::new(),
        },
        None => Vec::new(),
    }
}

fn neighbour(ctx: &Ctx<'_>, v: &Verdict) -> Vec<Actor> {
    let Some(u) = v.unreachable.as_ref() else {
        return Vec::new();
    };
    neighbour_at(ctx, u.netns.as_deref(), u.device.as_deref(), Some(u.address))
}

/// What keeps the neighbour of `device` in `netns` from answering ARP (for `address`, the one
/// asked for when an entry failed; None when it did answer, only late).
fn neighbour_at(
    ctx: &Ctx<'_>,
    netns: Option<&str>,
    device: Option<&str>,
    address: Option<std::net::Ipv4Addr>,
) -> Vec<Actor> {
    let p = ctx.path;
    let on_tap = device == Some(p.tap.as_str()) || device == p.bridge.as_deref();
    if on_tap {
        return reader_actor(ctx).into_iter().collect();
    }
    // The other end of the veth must answer: the sandbox side when the host asks, the host
    // side when the sandbox asks (for its reply).
    let host_asks = p
        .host_ns
        .as_ref()
        .is_some_and(|h| netns == Some(h.label().as_str()));
    let (responder, dev, asker, asker_dev) = if host_asks {
        (
            Some(p.sandbox_ns.inode),
            p.ns_veth.as_str(),
            p.host_inode(),
            p.host_veth.as_str(),
        )
    } else {
        (
            p.host_inode(),
            p.host_veth.as_str(),
            Some(p.sandbox_ns.inode),
            p.ns_veth.as_str(),
        )
    };
    let find = |i: Option<u32>| i.and_then(|i| ctx.facts.namespaces.iter().find(|n| n.netns == i));
    let (Some(inv), asker_inv) = (find(responder), find(asker)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (ns, name) in [(Some(inv), dev), (asker_inv, asker_dev)] {
        let Some(ns) = ns else { continue };
        if let Some(l) = ns.link_named(name).filter(|l| !l.up) {
            out.push(Actor {
                role: Role::Cause,
                how: How::State,
                netns: Some(ns.label.clone()),
                device: Some(l.name.clone()),
                place: "link".into(),
                does: format!("{} is down", l.name),
                id: ActorId::Link {
                    device: l.name.clone(),
                    state: "down".into(),
                },
            });
        }
    }
    if !out.is_empty() {
        return out;
    }
    if let Some(address) = address
        && !inv.addrs.iter().any(|a| a.addr == address)
    {
        out.push(Actor {
            role: Role::Cause,
            how: How::State,
            netns: Some(inv.label.clone()),
            device: Some(dev.to_string()),
            place: "link".into(),
            does: format!("{dev} has no address {address}: nothing answers ARP for it"),
            id: ActorId::Address {
                device: dev.to_string(),
                address: address.to_string(),
                missing: true,
            },
        });
        return out;
    }
    for name in ["arp_ignore", "arp_filter"] {
        if let Some((value, key)) = inv.conf_max(dev, name).filter(|(v, _)| refuses(name, *v)) {
            out.push(Actor {
                role: Role::Cause,
                how: How::State,
                netns: Some(inv.label.clone()),
                device: Some(dev.to_string()),
                place: "ARP".into(),
                does: match address {
                    Some(a) => format!("keeps {dev} from answering ARP for {a}"),
                    None => format!("keeps {dev} from answering ARP for its address"),
                },
                id: ActorId::Sysctl {
                    name: key,
                    value: value.to_string(),
                },
            });
        }
    }
    out
}

/// A value of arp_ignore/arp_filter that can keep a namespace from answering ARP for its own
/// address on the veth (8: never; 1 with arp_filter and a route elsewhere).
fn refuses(name: &str, v: u32) -> bool {
    match name {
        "arp_ignore" => v >= 4,
        _ => v >= 1,
    }
}

/// A probe that was not sent, or a connect() that failed at once: the rule or route the
/// lookup takes, or the cgroup programs that refused the connect.
fn not_sent(ctx: &Ctx<'_>, v: &Verdict) -> Vec<Actor> {
    let Some(u) = v.unreachable.as_ref() else {
        return match v.outcome {
            Outcome::Misdirected => attribute::host_route(ctx),
            _ => Vec::new(),
        };
    };
    match u.kind {
        UnreachableKind::HostSideUnknown => host_side_gone(ctx),
        UnreachableKind::Prohibited if u.errno.as_deref() == Some("EPERM") => {
            let routed = attribute::host_route(ctx);
            let blocking = routed.iter().any(|a| {
                matches!(&a.id, ActorId::PolicyRule { .. })
                    || matches!(&a.id, ActorId::Route { route_type, .. } if route_type != "unicast")
            });
            if blocking {
                routed
            } else {
                attribute::connect_refused(ctx)
            }
        }
        _ => attribute::host_route(ctx),
    }
}

/// The sandbox's veth is gone (deleted, or moved to another namespace).
fn host_side_gone(ctx: &Ctx<'_>) -> Vec<Actor> {
    vec![Actor {
        role: Role::Cause,
        how: How::State,
        netns: Some(ctx.path.sandbox_ns.label()),
        device: Some(ctx.path.ns_veth.clone()),
        place: "link".into(),
        does: "the veth pair to the host side is gone".into(),
        id: ActorId::Link {
            device: ctx.path.ns_veth.clone(),
            state: "missing".into(),
        },
    }]
}

/// The guest's MAC, from the source of its own frames on the tap (the reply leg's first hop).
fn guest_mac_from_frames(j: &Journey, path: &ExpectedPath) -> Option<String> {
    j.hops.iter().find_map(|(l, h)| {
        (*l == Leg::Reply
            && h.netns == path.sandbox_ns.inode
            && matches!(h.kind, HopKind::Tcx { ingress: true } | HopKind::Receive)
            && h.device.as_deref() == Some(path.tap.as_str()))
        .then(|| h.deep.as_ref()?.headers()?.l2.map(|l| l.src))
        .flatten()
    })
}

fn first_reply_ttl(j: &Journey, path: &ExpectedPath) -> Option<u8> {
    j.hops
        .iter()
        .find(|(l, h)| *l == Leg::Reply && h.is_packet() && h.netns == path.sandbox_ns.inode)
        .map(|(_, h)| h.pkt.ttl)
        .filter(|t| *t > 0)
}
