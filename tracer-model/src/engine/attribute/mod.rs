//! Naming the actor: given where a packet first differed from its path (or, where nothing
//! differed, where it died), the actors read at that place whose kind matches what happened.
//! A rewrite is done by a NAT rule, an untracked packet by a raw rule, a wrong device by a
//! route or a policy rule, a wrong L2 destination by a neighbour entry, a drop by whatever the
//! kernel's reason and location point at. Several that cannot be told apart are all named, as
//! candidates; none is invented.
//!
//! The attribution is split by what is attributed: `firewall` turns rules into actors for
//! the others, `rewrite` names the rules that changed a field (NAT, conntrack, TTL, mark),
//! `routing` the route lookups, `l2` the neighbour entries, `devices` the programs and
//! filters on devices, and `drops` the actors at the place of a drop. This module holds what
//! they share (the context, settling one actor as the cause) and the dispatch on the kind of
//! difference.
mod devices;
mod drops;
mod firewall;
mod l2;
mod rewrite;
mod routing;

pub use devices::{connect_refused, program_id, where_it_vanished};
pub use drops::for_drop;
pub use firewall::uses_mark;
pub use routing::host_route;

use super::{
    actor::{Actor, Role},
    diverge::{Divergence, Field},
    expect::Route,
    inventory::NsInventory,
};
use crate::{
    facts::ReadFacts,
    firewall::{
        eval::{self, Ct as FwCt, Port},
        model::{Action, Effect},
    },
    hook::{PRIO_NAT_DST, PRIO_NAT_SRC},
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::ExpectedPath,
};

/// What the attribution works from.
pub struct Ctx<'a> {
    pub j: &'a Journey,
    pub path: &'a ExpectedPath,
    pub facts: &'a ReadFacts,
    pub route: &'a Route<'a>,
}

impl<'a> Ctx<'a> {
    fn inv(&self, netns: u32) -> Option<&'a NsInventory> {
        self.facts.namespaces.iter().find(|n| n.netns == netns)
    }

    fn hop(&self, i: usize) -> Option<(Leg, &'a Hop)> {
        self.j.hops.get(i).map(|(l, h)| (*l, h))
    }

    /// The packet as the firewall evaluator sees it at hop `h`.
    fn packet(&self, leg: Leg, h: &Hop) -> eval::Packet {
        let (in_dev, out_dev) = match &h.kind {
            HopKind::Netfilter { in_dev, out_dev, .. } => (in_dev.clone(), out_dev.clone()),
            HopKind::Tcx { ingress: false } | HopKind::Xmit => (None, h.device.clone()),
            _ => (h.device.clone(), None),
        };
        eval::Packet {
            what: "the packet".into(),
            in_dev,
            out_dev,
            src: Some(h.src()),
            dst: Some(h.dst()),
            dst_nat: None,
            src_nat: None,
            sport: Port::Known(h.pkt.sport),
            dport: Port::Known(h.pkt.dport),
            flags: h.pkt.flags,
            ct: if leg == Leg::Reply {
                FwCt::Established
            } else {
                FwCt::New
            },
            mark: h.deep.as_ref().map(|d| d.mark),
        }
    }
}

/// The actors behind the first causal difference, or None when it has none to offer (then
/// the effect's place is the cause).
pub fn for_divergence(ctx: &Ctx<'_>, d: &Divergence) -> Vec<Actor> {
    let Some((leg, h)) = ctx.hop(d.hop) else {
        return Vec::new();
    };
    let Some(inv) = ctx.inv(h.netns) else {
        return match d.field {
            Field::Namespace => routing::misdirected_route(ctx, d),
            _ => Vec::new(),
        };
    };
    match d.field {
        Field::Destination | Field::Source => rewrite::rewrite(ctx, inv, d, leg, h),
        Field::Conntrack => rewrite::conntrack(ctx, inv, d, leg, h),
        Field::Ttl => rewrite::set_by(ctx, inv, d, leg, h, |a| matches!(a, Action::Set(Effect::Ttl(_)))),
        Field::Mark => rewrite::set_by(ctx, inv, d, leg, h, |a| matches!(a, Action::Set(Effect::Mark(_)))),
        // At a hook the route lookup chose the device; between devices something redirected
        // the packet (a tc action, a BPF program).
        Field::Device | Field::Point
            if matches!(h.kind, HopKind::Netfilter { .. } | HopKind::SendReset { .. }) =>
        {
            routing::routing(ctx, inv, leg, h)
        }
        Field::Device | Field::Point => devices::redirected(ctx, d, leg, h),
        Field::Namespace => routing::misdirected_route(ctx, d),
        Field::L2Destination => l2::l2(ctx, inv, leg, h),
    }
}

/// One actor is the cause; several are candidates.
fn settle(mut v: Vec<Actor>) -> Vec<Actor> {
    if v.len() == 1 {
        v[0].role = Role::Cause;
    }
    v
}

/// For the engine: the priorities of DNAT and SNAT (what "after the rewrite" means).
pub const NAT_PRIOS: (i32, i32) = (PRIO_NAT_DST, PRIO_NAT_SRC);
