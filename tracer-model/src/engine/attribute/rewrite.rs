//! Fields a rule changed: a destination or source rewritten (or left alone) by NAT, a
//! packet untracked or put in another conntrack zone, a TTL or mark set on the way. Each
//! names the rules that ran between the last hop that matched the path and the one that
//! differed.
use crate::{
    engine::{
        actor::{Actor, ActorId, How, Role},
        diverge::{Divergence, Field},
        expect::Side,
        inventory::NsInventory,
        observe,
    },
    firewall::{
        eval::{Hit, Port},
        model::{Action, Effect, HookPoint},
    },
    hook::{Hook, PRIO_CONNTRACK},
    hop::{Hop, HopKind},
    journey::Leg,
};

use super::{
    Ctx,
    devices::device_programs,
    firewall::{
        acting, hook_point, hook_point_name, is_counted, rank, rule_actor, window_before, windows_before,
    },
    settle,
};

/// A destination or source that was (or was not) rewritten: the NAT rule between the last
/// hop that matched and this one; for a missing rewrite, the rule that ended the nat chain
/// first, or the missing NAT rule itself.
pub(super) fn rewrite(ctx: &Ctx<'_>, inv: &NsInventory, d: &Divergence, leg: Leg, h: &Hop) -> Vec<Actor> {
    let windows = windows_before(ctx, d, leg, h);
    if windows.is_empty() {
        // Not at a hook: between devices (tc pedit, a BPF program) — name what is there.
        return device_programs(ctx, inv, leg, h);
    }
    // The packet as the rules saw it: this hop's devices, the tuple before the rewrite (the
    // last matching hop's, when it is in this namespace).
    let mut before = ctx.packet(leg, h);
    if let Some((_, prev)) = d
        .last_match
        .and_then(|i| ctx.hop(i))
        .filter(|(_, p)| p.netns == h.netns)
    {
        before.src = Some(prev.src());
        before.dst = Some(prev.dst());
        before.sport = Port::Known(prev.pkt.sport);
        before.dport = Port::Known(prev.pkt.dport);
    }
    let is_dst = d.field == Field::Destination;
    let rewrites = |a: &Action| match a {
        Action::Dnat(_) | Action::Redirect => is_dst,
        Action::Snat(_) | Action::Masquerade => !is_dst,
        _ => false,
    };
    let done: Vec<(HookPoint, i32, Hit)> = windows
        .iter()
        .flat_map(|(hook, w)| {
            acting(inv, *hook, *w, &before, &rewrites)
                .into_iter()
                .map(move |(p, hit)| (*hook, p, hit))
        })
        .collect();
    let expected_rewrite = (leg == Leg::Request && is_dst && ctx.route.side(h.netns) == Side::Sandbox)
        || (leg == Leg::Reply && !is_dst);
    if !done.is_empty() && (!expected_rewrite || observed_is_rewritten(d, ctx)) {
        return rank_across(inv, done);
    }
    if !expected_rewrite {
        return Vec::new();
    }
    // The path's own rewrite did not happen: who ended the nat chain before it, or no rule.
    let (hook, window) = *windows.last().expect("not empty");
    let ends = |a: &Action| {
        matches!(
            a,
            Action::Accept | Action::Drop | Action::Dnat(_) | Action::Redirect
        )
    };
    let first = acting(inv, hook, window, &before, &ends);
    match first.iter().find(|(_, h)| !rewrites(&h.action)) {
        Some((prio, hit)) => vec![rule_actor(
            inv,
            Some(hook),
            *prio,
            hit,
            Role::Cause,
            How::Evaluated,
        )],
        None if first.is_empty() => vec![missing_nat(inv, hook, is_dst, ctx)],
        // The rewrite rule is there and matches, yet the packet was not rewritten.
        None => Vec::new(),
    }
}

/// Like [`rank`], for hits found at several hooks.
fn rank_across(inv: &NsInventory, hits: Vec<(HookPoint, i32, Hit)>) -> Vec<Actor> {
    let counted: Vec<&(HookPoint, i32, Hit)> = hits.iter().filter(|(_, _, h)| is_counted(inv, h)).collect();
    if let [(hook, prio, h)] = counted.as_slice() {
        return vec![rule_actor(inv, Some(*hook), *prio, h, Role::Cause, How::Counter)];
    }
    let role = if hits.len() == 1 {
        Role::Cause
    } else {
        Role::Candidate
    };
    hits.iter()
        .map(|(hook, prio, h)| rule_actor(inv, Some(*hook), *prio, h, role, How::Evaluated))
        .collect()
}

/// True when the observed address is not the one before the hook (it was rewritten, to the
/// wrong place), false when it was left alone.
fn observed_is_rewritten(d: &Divergence, ctx: &Ctx<'_>) -> bool {
    let host = format!("{}:{}", ctx.path.host_ip, ctx.path.port);
    d.observed != host
}

fn missing_nat(inv: &NsInventory, hook: HookPoint, is_dst: bool, ctx: &Ctx<'_>) -> Actor {
    let want = if is_dst {
        format!("DNAT {} → {}", ctx.path.host_ip, ctx.path.guest_ip)
    } else {
        format!("SNAT {} → {}", ctx.path.guest_ip, ctx.path.host_ip)
    };
    let chain = hook_point_name(hook).to_string();
    Actor {
        role: Role::Cause,
        how: How::State,
        netns: Some(inv.label.clone()),
        device: None,
        place: format!("{chain} hook, nat"),
        does: format!("nothing does {want}"),
        id: ActorId::MissingRule {
            family: "ip".into(),
            table: "nat".into(),
            chain,
            want,
        },
    }
}

/// Untracked, another zone, or a reply conntrack did not recognize.
pub(super) fn conntrack(ctx: &Ctx<'_>, inv: &NsInventory, d: &Divergence, leg: Leg, h: &Hop) -> Vec<Actor> {
    let hook = match h.kind {
        HopKind::Netfilter { hook, .. } => hook,
        _ if leg == Leg::Request && ctx.route.side(h.netns) == Side::Host => Hook::Output,
        _ => Hook::Prerouting,
    };
    let pkt = ctx.packet(leg, h);
    let upto = match h.kind {
        HopKind::Netfilter { priority, .. } => priority,
        _ => i32::MAX,
    };
    let untracked = d.observed == "untracked";
    let zone = d.observed.contains("zone") && !d.observed.ends_with("zone 0");
    // No entry at all where one was expected: a packet conntrack found invalid in another
    // zone (a reply without its request's entry) carries none, as does one never looked up.
    let no_entry = !untracked && d.observed == observe::Ct::None.describe();
    let wanted = |a: &Action| match a {
        Action::Set(Effect::Notrack) => untracked || no_entry,
        Action::Set(Effect::CtZone(_)) => zone || no_entry,
        _ => false,
    };
    let hits = acting(
        inv,
        hook_point(hook),
        (i32::MIN, upto.min(PRIO_CONNTRACK)),
        &pkt,
        &wanted,
    );
    if !hits.is_empty() {
        return rank(inv, hook_point(hook), hits);
    }
    // The request's entry is made in another zone upstream: the reply is then "new".
    if leg == Leg::Reply {
        let on_request = ctx
            .j
            .hops
            .iter()
            .find_map(|(l, rh)| (*l == Leg::Request && rh.netns == h.netns).then_some(rh));
        if let Some(rq) = on_request {
            let zoned =
                |a: &Action| matches!(a, Action::Set(Effect::CtZone(_)) | Action::Set(Effect::Notrack));
            let hits = acting(
                inv,
                HookPoint::Prerouting,
                (i32::MIN, PRIO_CONNTRACK),
                &ctx.packet(Leg::Request, rq),
                &zoned,
            );
            if !hits.is_empty() {
                return rank(inv, HookPoint::Prerouting, hits);
            }
        }
    }
    Vec::new()
}

/// A rule that changed a field (TTL, mark) between the last hop that matched and this one,
/// in this namespace's hooks so far.
pub(super) fn set_by(
    ctx: &Ctx<'_>,
    inv: &NsInventory,
    d: &Divergence,
    leg: Leg,
    h: &Hop,
    want: fn(&Action) -> bool,
) -> Vec<Actor> {
    let pkt = ctx.packet(leg, h);
    let upto = match window_before(ctx, d, h) {
        Some((hook, (_, hi))) => vec![(hook, hi)],
        None => Vec::new(),
    };
    // Every hook this leg crossed in this namespace before the hop, then the hop's own.
    let hooks: Vec<(HookPoint, i32)> = [Hook::Output, Hook::Prerouting, Hook::Forward, Hook::Postrouting]
        .into_iter()
        .map(|k| (hook_point(k), i32::MAX))
        .filter(|(k, _)| !upto.iter().any(|(u, _)| u == k))
        .chain(upto.iter().copied())
        .collect();
    let mut hits = Vec::new();
    for (hook, hi) in hooks {
        for (prio, hit) in acting(inv, hook, (i32::MIN, hi), &pkt, &want) {
            hits.push(rule_actor(
                inv,
                Some(hook),
                prio,
                &hit,
                Role::Candidate,
                How::Evaluated,
            ));
        }
    }
    let hits = settle(hits);
    if hits.is_empty() {
        return device_programs(ctx, inv, leg, h);
    }
    hits
}
