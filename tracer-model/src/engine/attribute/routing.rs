//! Route lookups as actors: the route and policy rule a lookup takes for the packet, the
//! local address that kept it, and, when the path's own route is missing, why (its device
//! down, gone, or without an address). The host side's lookup for the sandbox's host IP is
//! here too.
use std::net::Ipv4Addr;

use crate::{
    engine::{
        actor::{Actor, ActorId, How, Role},
        diverge::Divergence,
        expect::Side,
        fib,
        inventory::{self, NsInventory},
    },
    hop::{Hop, HopKind},
    journey::Leg,
};

use super::Ctx;

/// The route lookup that sent the packet to the wrong device or delivered it locally: the
/// route (and the policy rule, when an added one selected its table) the lookup takes for the
/// packet as seen there; and when the path's own route is missing, why.
pub(super) fn routing(ctx: &Ctx<'_>, inv: &NsInventory, leg: Leg, h: &Hop) -> Vec<Actor> {
    let flow = fib::Flow {
        dst: h.dst(),
        src: Some(h.src()),
        iif: match (&h.kind, ctx.route.side(h.netns), leg) {
            (HopKind::Netfilter { in_dev, .. }, _, _) => in_dev.clone(),
            (_, Side::Host, Leg::Request) => None,
            _ => h.device.clone(),
        },
        mark: h.deep.as_ref().map_or(0, |d| d.mark),
        uid: (ctx.route.side(h.netns) == Side::Host).then_some(0),
        proto: 6,
        sport: h.pkt.sport,
        dport: h.pkt.dport,
    };
    let mut out = Vec::new();
    // A local address the destination is delivered to.
    if let Some(a) = inv.addrs.iter().find(|a| a.addr == flow.dst) {
        out.push(Actor {
            role: Role::Cause,
            how: How::State,
            netns: Some(inv.label.clone()),
            device: Some(a.device.clone()),
            place: "route lookup".into(),
            does: format!("makes {} a local address (delivered here)", a.addr),
            id: ActorId::Address {
                device: a.device.clone(),
                address: format!("{}/{}", a.addr, a.prefix),
                missing: false,
            },
        });
        return out;
    }
    let found = fib::lookup(inv, &flow);
    if let Some(rule) = found.rule.filter(|_| found.by_added_rule()) {
        out.push(Actor {
            role: Role::Cause,
            how: How::Evaluated,
            netns: Some(inv.label.clone()),
            device: None,
            place: "route lookup (policy rules)".into(),
            does: format!("selects {} for this packet", rule_target(rule)),
            id: ActorId::PolicyRule {
                priority: rule.priority,
                rule: rule.text.clone(),
            },
        });
    }
    if let Some(r) = found.route {
        let expected_dev = expected_out(ctx, leg, h);
        let own = r
            .device
            .as_deref()
            .is_some_and(|d| expected_dev.iter().any(|e| e == d));
        if !own || r.kind != "unicast" {
            let role = if out.is_empty() { Role::Cause } else { Role::Effect };
            out.push(route_actor(inv, r, role));
        }
    }
    // The route the path needs is not there: say why (its device is down, has no address, or
    // the route is simply gone).
    out.extend(missing_route(ctx, inv, leg, h, &found));
    settle_routes(out)
}

fn rule_target(r: &inventory::PolicyRule) -> String {
    match r.table {
        Some(t) => format!("table {}", crate::facts::table_name(t)),
        None => r.action.clone(),
    }
}

fn settle_routes(mut out: Vec<Actor>) -> Vec<Actor> {
    // A missing route explains a fallback route: the fallback is the effect, the absence the
    // cause.
    let has_missing = out.iter().any(|a| {
        matches!(
            a.id,
            ActorId::MissingRoute { .. } | ActorId::Address { missing: true, .. } | ActorId::Link { .. }
        )
    });
    if has_missing {
        for a in &mut out {
            if matches!(a.id, ActorId::Route { .. }) {
                a.role = Role::Effect;
            }
        }
    }
    out
}

pub(super) fn route_actor(inv: &NsInventory, r: &inventory::Route, role: Role) -> Actor {
    Actor {
        role,
        how: How::Evaluated,
        netns: Some(inv.label.clone()),
        device: r.device.clone(),
        place: "route lookup".into(),
        does: match r.kind.as_str() {
            "unicast" => format!(
                "routes it out {}",
                r.device.as_deref().unwrap_or("another device")
            ),
            "local" => "delivers it locally".into(),
            k => format!("{k}s it"),
        },
        id: ActorId::Route {
            table: r.table,
            dst: format!("{}/{}", r.dst, r.prefix),
            route_type: r.kind.clone(),
            via: r.gateway,
            device: r.device.clone(),
        },
    }
}

/// The devices the path expects a lookup at this hop to choose.
fn expected_out(ctx: &Ctx<'_>, leg: Leg, h: &Hop) -> Vec<String> {
    let p = ctx.path;
    match (ctx.route.side(h.netns), leg) {
        (Side::Host, Leg::Request) => vec![p.host_veth.clone()],
        (Side::Sandbox, Leg::Request) => {
            let mut v = vec![p.tap.clone()];
            v.extend(p.bridge.clone());
            v
        }
        (Side::Sandbox, Leg::Reply) => vec![p.ns_veth.clone()],
        _ => Vec::new(),
    }
}

/// Why the path's route toward the next hop is not in the table: asked only when the route
/// the lookup took is a fallback (a unicast route out another device); a blackhole, a
/// prohibit, a local route, or one more specific than the path's own is the cause itself.
fn missing_route(ctx: &Ctx<'_>, inv: &NsInventory, leg: Leg, h: &Hop, found: &fib::Lookup<'_>) -> Vec<Actor> {
    let expected = expected_out(ctx, leg, h);
    let on_expected = |r: &inventory::Route| {
        r.device
            .as_deref()
            .is_some_and(|d| expected.iter().any(|e| e == d))
    };
    if let Some(r) = found.route {
        if r.kind != "unicast" || on_expected(r) || found.by_added_rule() {
            return Vec::new();
        }
        // A route of the path's own device for this destination exists, less specific: the
        // one taken overrides it.
        let dst = h.dst();
        let own = inv
            .routes
            .iter()
            .any(|x| on_expected(x) && crate::net::prefix_contains(x.dst, x.prefix, dst));
        if own {
            return Vec::new();
        }
    }
    let Some(dev) = expected.iter().find_map(|e| inv.link_named(e)) else {
        return expected
            .first()
            .map(|e| {
                vec![state_actor(
                    inv,
                    Some(e.clone()),
                    ActorId::Link {
                        device: e.clone(),
                        state: "missing".into(),
                    },
                    format!("{e} does not exist in {}", inv.label),
                )]
            })
            .unwrap_or_default();
    };
    if !dev.up {
        return vec![state_actor(
            inv,
            Some(dev.name.clone()),
            ActorId::Link {
                device: dev.name.clone(),
                state: "down".into(),
            },
            format!("{} is down: its routes are gone", dev.name),
        )];
    }
    if !inv.addrs.iter().any(|a| a.ifindex == dev.ifindex) {
        let want = match (ctx.route.side(h.netns), leg) {
            (Side::Sandbox, Leg::Request) => format!("{}/30", tap_address(ctx)),
            _ => "its address".into(),
        };
        return vec![state_actor(
            inv,
            Some(dev.name.clone()),
            ActorId::Address {
                device: dev.name.clone(),
                address: want.clone(),
                missing: true,
            },
            format!("{} has no address: no route to the next hop through it", dev.name),
        )];
    }
    let dst = h.dst();
    vec![state_actor(
        inv,
        Some(dev.name.clone()),
        ActorId::MissingRoute {
            dst: dst.to_string(),
            device: Some(dev.name.clone()),
        },
        format!("no route to {dst} through {}", dev.name),
    )]
}

/// The tap's address: the guest's gateway (E2B: 169.254.0.22), one above the guest's.
fn tap_address(ctx: &Ctx<'_>) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ctx.path.guest_ip).wrapping_add(1))
}

pub(super) fn state_actor(inv: &NsInventory, device: Option<String>, id: ActorId, does: String) -> Actor {
    Actor {
        role: Role::Cause,
        how: How::State,
        netns: Some(inv.label.clone()),
        device,
        place: "route lookup".into(),
        does,
        id,
    }
}

/// The host side's route that sent the attempt into another namespace.
pub(super) fn misdirected_route(ctx: &Ctx<'_>, _d: &Divergence) -> Vec<Actor> {
    host_route(ctx)
}

/// The policy rule and route the host side's lookup takes for the sandbox's host IP.
pub fn host_route(ctx: &Ctx<'_>) -> Vec<Actor> {
    let Some(host) = ctx.path.host_inode().and_then(|i| ctx.inv(i)) else {
        return Vec::new();
    };
    let flow = fib::Flow {
        dst: ctx.path.host_ip,
        proto: 6,
        dport: ctx.path.port,
        uid: Some(0),
        ..Default::default()
    };
    let found = fib::lookup(host, &flow);
    let mut out = Vec::new();
    // A local route comes from an address: the address is the actor.
    if found.route.is_some_and(|r| r.kind == "local")
        && let Some(a) = host.addrs.iter().find(|a| a.addr == flow.dst)
    {
        out.push(Actor {
            role: Role::Cause,
            how: How::State,
            netns: Some(host.label.clone()),
            device: Some(a.device.clone()),
            place: "route lookup".into(),
            does: format!("makes {} a local address of the host side", a.addr),
            id: ActorId::Address {
                device: a.device.clone(),
                address: format!("{}/{}", a.addr, a.prefix),
                missing: false,
            },
        });
        return out;
    }
    if found.route.is_none() && found.rule.is_none_or(|r| r.table.is_some()) {
        return host_veth_state(ctx, host);
    }
    if let Some(rule) = found.rule.filter(|_| found.by_added_rule()) {
        out.push(Actor {
            role: Role::Cause,
            how: How::Evaluated,
            netns: Some(host.label.clone()),
            device: None,
            place: "route lookup (policy rules)".into(),
            does: format!("selects {}", rule_target(rule)),
            id: ActorId::PolicyRule {
                priority: rule.priority,
                rule: rule.text.clone(),
            },
        });
    }
    if let Some(r) = found.route {
        let role = if out.is_empty() { Role::Cause } else { Role::Effect };
        out.push(route_actor(host, r, role));
    }
    out
}

/// No route to the host IP on the host side: its veth is down, gone, or the route is.
fn host_veth_state(ctx: &Ctx<'_>, host: &NsInventory) -> Vec<Actor> {
    let veth = &ctx.path.host_veth;
    let (state, does) = match host.link_named(veth) {
        None => ("missing", format!("{veth} does not exist in {}", host.label)),
        Some(l) if !l.up => ("down", format!("{veth} is down: its routes are gone")),
        Some(_) => {
            return vec![state_actor(
                host,
                Some(veth.clone()),
                ActorId::MissingRoute {
                    dst: format!("{}/32", ctx.path.host_ip),
                    device: Some(veth.clone()),
                },
                format!("no route to {} through {veth}", ctx.path.host_ip),
            )];
        }
    };
    vec![state_actor(
        host,
        Some(veth.clone()),
        ActorId::Link {
            device: veth.clone(),
            state: state.into(),
        },
        does,
    )]
}
