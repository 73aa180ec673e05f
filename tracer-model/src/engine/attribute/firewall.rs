//! Rules as actors: the firewall evaluator's hits turned into actors, the base chains and
//! priority windows a packet crossed between two hops, and ranking by counters. The
//! attributions of rewrites, conntrack state and drops all ask the rules through these.
use crate::{
    engine::{
        actor::{Actor, ActorId, How, Role},
        diverge::Divergence,
        expect::Side,
        inventory::NsInventory,
    },
    firewall::{
        eval::{self, Flow, Hit},
        model::{Action, Chain, Cond, Effect, HookPoint, Table},
    },
    hook::Hook,
    hop::{Hop, HopKind},
    journey::Leg,
};

use super::Ctx;

/// A rule evaluator hit as an actor.
pub(super) fn rule_actor(
    inv: &NsInventory,
    hook: Option<HookPoint>,
    prio: i32,
    h: &Hit,
    role: Role,
    how: How,
) -> Actor {
    let chain = h.chains.first().cloned().unwrap_or_default();
    let id = if h.policy {
        ActorId::ChainPolicy {
            source: h.source.label().into(),
            family: h.family.clone(),
            table: h.table.clone(),
            chain,
        }
    } else {
        ActorId::FirewallRule {
            source: h.source.label().into(),
            family: h.family.clone(),
            table: h.table.clone(),
            chain: h.chains.last().cloned().unwrap_or_default(),
            handle: h.handle,
            rule: h.rule.clone(),
        }
    };
    Actor {
        role,
        how,
        netns: Some(inv.label.clone()),
        device: None,
        place: match hook {
            Some(p) => format!("{} hook, priority {prio}", hook_point_name(p)),
            None => "a hook".into(),
        },
        does: action_words(&h.action),
        id,
    }
}

pub(super) fn hook_point_name(p: HookPoint) -> &'static str {
    match p {
        HookPoint::Ingress => "netdev ingress",
        HookPoint::Egress => "netdev egress",
        p => p.ipt_chain().unwrap_or("?"),
    }
}

fn action_words(a: &Action) -> String {
    match a {
        Action::Accept => "accepts it (ending the chain)".into(),
        Action::Drop => "drops it".into(),
        Action::Reject => "rejects it".into(),
        Action::Return => "returns".into(),
        Action::Jump(c) | Action::Goto(c) => format!("sends it to chain {c}"),
        Action::Dnat(Some(a)) => format!("DNAT to {a}"),
        Action::Dnat(None) => "DNAT".into(),
        Action::Snat(Some(a)) => format!("SNAT to {a}"),
        Action::Snat(None) => "SNAT".into(),
        Action::Masquerade => "MASQUERADE".into(),
        Action::Redirect => "REDIRECT to a local port".into(),
        Action::Divert(w) => format!("hands it to {w}"),
        Action::Set(Effect::Mark(Some(m))) => format!("sets mark {m:#x}"),
        Action::Set(Effect::Mark(None)) => "sets the mark".into(),
        Action::Set(Effect::Notrack) => "exempts it from conntrack (NOTRACK)".into(),
        Action::Set(Effect::CtZone(Some(z))) => format!("puts it in conntrack zone {z}"),
        Action::Set(Effect::CtZone(None)) => "puts it in another conntrack zone".into(),
        Action::Set(Effect::Ttl(Some(t))) => format!("sets its TTL to {t}"),
        Action::Set(Effect::Ttl(None)) => "changes its TTL".into(),
        Action::Set(Effect::Other(w)) => format!("changes it ({w})"),
        Action::Continue => "matches it".into(),
    }
}

/// Base chains of a namespace at `hook`, with priority in (lo, hi], in priority order.
fn chains_in(inv: &NsInventory, hook: HookPoint, (lo, hi): (i32, i32)) -> Vec<(&Table, &Chain)> {
    let mut v: Vec<(&Table, &Chain)> = inv
        .tables
        .iter()
        .flat_map(|t| t.chains.iter().map(move |c| (t, c)))
        .filter(|(_, c)| c.hook == Some(hook) && c.priority > lo && c.priority <= hi)
        .collect();
    v.sort_by_key(|(_, c)| c.priority);
    v
}

/// The first rule of each base chain in the window whose action `want` accepts, for `pkt`.
pub(super) fn acting(
    inv: &NsInventory,
    hook: HookPoint,
    window: (i32, i32),
    pkt: &eval::Packet,
    want: &dyn Fn(&Action) -> bool,
) -> Vec<(i32, Hit)> {
    chains_in(inv, hook, window)
        .into_iter()
        .filter_map(|(t, c)| match eval::first_acting(t, c, pkt, want) {
            Flow::Found(h) => Some((c.priority, h)),
            Flow::Drop(h) if h.policy && want(&Action::Drop) => Some((c.priority, h)),
            _ => None,
        })
        .collect()
}

/// Actors found by evaluation, with the ones a counter confirms promoted: one counted rule is
/// the cause; one evaluated rule is the cause; several are candidates.
pub(super) fn rank(inv: &NsInventory, hook: HookPoint, hits: Vec<(i32, Hit)>) -> Vec<Actor> {
    let counted: Vec<&(i32, Hit)> = hits.iter().filter(|(_, h)| is_counted(inv, h)).collect();
    if let [(prio, h)] = counted.as_slice() {
        return vec![rule_actor(inv, Some(hook), *prio, h, Role::Cause, How::Counter)];
    }
    let role = if hits.len() == 1 {
        Role::Cause
    } else {
        Role::Candidate
    };
    hits.iter()
        .map(|(prio, h)| rule_actor(inv, Some(hook), *prio, h, role, How::Evaluated))
        .collect()
}

/// Whether a counter showed rule `h` acting during the attempt.
pub(super) fn is_counted(inv: &NsInventory, h: &Hit) -> bool {
    inv.counted.iter().any(|c| {
        c.table == h.table
            && c.source == h.source.label()
            && match (c.handle, h.handle) {
                (Some(a), Some(b)) => a == b,
                _ => c.text == h.rule,
            }
    })
}

pub(super) fn hook_point(h: Hook) -> HookPoint {
    HookPoint::from(h)
}

/// The hooks a leg crosses in a namespace, in order.
fn hook_order(side: Side, leg: Leg) -> &'static [Hook] {
    match (side, leg) {
        (Side::Host, Leg::Request) => &[Hook::Output, Hook::Postrouting],
        (Side::Host, _) => &[Hook::Prerouting, Hook::Input],
        _ => &[Hook::Prerouting, Hook::Forward, Hook::Postrouting],
    }
}

/// The priority windows between the last hop that matched and the hop that differed: the
/// rest of the earlier hook, every hook in between, and this one up to the hop's priority —
/// what ran in between.
pub(super) fn windows_before(
    ctx: &Ctx<'_>,
    d: &Divergence,
    leg: Leg,
    h: &Hop,
) -> Vec<(HookPoint, (i32, i32))> {
    let order = hook_order(ctx.route.side(h.netns), leg);
    let (hook, priority) = match h.kind {
        HopKind::Netfilter { hook, priority, .. } => (hook, priority),
        // Leaving the namespace by a device right after one of its netfilter hops: what ran
        // from that hop to the end of the namespace's last hook (a SNAT at POSTROUTING's nat
        // priority, when the host side has only an entry slot there).
        HopKind::Tcx { ingress: false } | HopKind::Xmit
            if d.last_match
                .and_then(|i| ctx.hop(i))
                .is_some_and(|(_, p)| p.netns == h.netns && matches!(p.kind, HopKind::Netfilter { .. })) =>
        {
            match order.last() {
                Some(last) => (*last, i32::MAX),
                None => return Vec::new(),
            }
        }
        _ => return Vec::new(),
    };
    let at = |k: Hook| order.iter().position(|x| *x == k);
    let (from_hook, lo) = d
        .last_match
        .and_then(|i| ctx.hop(i))
        .and_then(|(_, prev)| match prev.kind {
            HopKind::Netfilter {
                hook: ph,
                priority: pp,
                ..
            } if prev.netns == h.netns => Some((ph, pp)),
            _ => None,
        })
        .unwrap_or((order[0], i32::MIN));
    let (Some(a), Some(b)) = (at(from_hook), at(hook)) else {
        return vec![(hook_point(hook), (i32::MIN, priority))];
    };
    (a..=b)
        .map(|i| {
            let lo = if i == a { lo } else { i32::MIN };
            let hi = if i == b { priority } else { i32::MAX };
            (hook_point(order[i]), (lo, hi))
        })
        .collect()
}

pub(super) fn window_before(ctx: &Ctx<'_>, d: &Divergence, h: &Hop) -> Option<(HookPoint, (i32, i32))> {
    let leg = ctx.hop(d.hop).map_or(Leg::Request, |(l, _)| l);
    windows_before(ctx, d, leg, h).last().copied()
}

/// Whether an actor set reads the skb mark (a rule matching a mark, a policy rule with an
/// fwmark selector): then a mark set upstream is part of the cause.
pub fn uses_mark(inv: &[NsInventory], actors: &[Actor]) -> bool {
    actors.iter().any(|a| match &a.id {
        ActorId::PolicyRule { rule, .. } => rule.contains("fwmark"),
        ActorId::FirewallRule {
            table,
            chain,
            handle,
            rule,
            ..
        } => inv.iter().any(|n| {
            n.tables.iter().filter(|t| &t.name == table).any(|t| {
                t.chain(chain).is_some_and(|c| {
                    c.rules.iter().any(|r| {
                        (r.handle.is_some() && r.handle == *handle || r.text == *rule)
                            && r.conds.iter().any(|c| matches!(c, Cond::Mark { .. }))
                    })
                })
            })
        }),
        _ => false,
    })
}
