//! Naming the actor: given where a packet first differed from its path (or, where nothing
//! differed, where it died), the actors read at that place whose kind matches what happened.
//! A rewrite is done by a NAT rule, an untracked packet by a raw rule, a wrong device by a
//! route or a policy rule, a wrong L2 destination by a neighbour entry, a drop by whatever the
//! kernel's reason and location point at. Several that cannot be told apart are all named, as
//! candidates; none is invented.
use std::net::Ipv4Addr;

use super::{
    actor::{Actor, ActorId, How, Role},
    diverge::{Divergence, Field},
    expect::{Route, Side},
    fib,
    inventory::{Attach, NsInventory, Program},
};
use crate::{
    facts::ReadFacts,
    firewall::{
        eval::{self, Ct as FwCt, Flow, Hit, Port},
        model::{Action, Chain, Cond, Effect, HookPoint, Source, Table},
    },
    hook::{Hook, PRIO_CONNTRACK, PRIO_NAT_DST, PRIO_NAT_SRC},
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::ExpectedPath,
    reason::{DropReason, ReasonClass},
    tcp::nud_name,
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

/// A rule evaluator hit as an actor.
fn rule_actor(inv: &NsInventory, hook: Option<HookPoint>, prio: i32, h: &Hit, role: Role, how: How) -> Actor {
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

fn hook_point_name(p: HookPoint) -> &'static str {
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
fn acting(
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
fn rank(inv: &NsInventory, hook: HookPoint, hits: Vec<(i32, Hit)>) -> Vec<Actor> {
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
fn is_counted(inv: &NsInventory, h: &Hit) -> bool {
    inv.counted.iter().any(|c| {
        c.table == h.table
            && c.source == h.source.label()
            && match (c.handle, h.handle) {
                (Some(a), Some(b)) => a == b,
                _ => c.text == h.rule,
            }
    })
}

fn hook_point(h: Hook) -> HookPoint {
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
fn windows_before(ctx: &Ctx<'_>, d: &Divergence, leg: Leg, h: &Hop) -> Vec<(HookPoint, (i32, i32))> {
    let HopKind::Netfilter { hook, priority, .. } = h.kind else {
        return Vec::new();
    };
    let order = hook_order(ctx.route.side(h.netns), leg);
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

fn window_before(ctx: &Ctx<'_>, d: &Divergence, h: &Hop) -> Option<(HookPoint, (i32, i32))> {
    let leg = ctx.hop(d.hop).map_or(Leg::Request, |(l, _)| l);
    windows_before(ctx, d, leg, h).last().copied()
}

/// The actors behind the first causal difference, or None when it has none to offer (then
/// the effect's place is the cause).
pub fn for_divergence(ctx: &Ctx<'_>, d: &Divergence) -> Vec<Actor> {
    let Some((leg, h)) = ctx.hop(d.hop) else {
        return Vec::new();
    };
    let Some(inv) = ctx.inv(h.netns) else {
        return match d.field {
            Field::Namespace => misdirected_route(ctx, d),
            _ => Vec::new(),
        };
    };
    match d.field {
        Field::Destination | Field::Source => rewrite(ctx, inv, d, leg, h),
        Field::Conntrack => conntrack(ctx, inv, d, leg, h),
        Field::Ttl => set_by(ctx, inv, d, leg, h, |a| matches!(a, Action::Set(Effect::Ttl(_)))),
        Field::Mark => set_by(ctx, inv, d, leg, h, |a| matches!(a, Action::Set(Effect::Mark(_)))),
        // At a hook the route lookup chose the device; between devices something redirected
        // the packet (a tc action, a BPF program).
        Field::Device | Field::Point
            if matches!(h.kind, HopKind::Netfilter { .. } | HopKind::SendReset { .. }) =>
        {
            routing(ctx, inv, leg, h)
        }
        Field::Device | Field::Point => redirected(ctx, d, leg, h),
        Field::Namespace => misdirected_route(ctx, d),
        Field::L2Destination => l2(ctx, inv, leg, h),
    }
}

/// A destination or source that was (or was not) rewritten: the NAT rule between the last
/// hop that matched and this one; for a missing rewrite, the rule that ended the nat chain
/// first, or the missing NAT rule itself.
fn rewrite(ctx: &Ctx<'_>, inv: &NsInventory, d: &Divergence, leg: Leg, h: &Hop) -> Vec<Actor> {
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
fn conntrack(ctx: &Ctx<'_>, inv: &NsInventory, d: &Divergence, leg: Leg, h: &Hop) -> Vec<Actor> {
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
    let no_entry = !untracked && d.observed == super::observe::Ct::None.describe();
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
fn set_by(
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

/// One actor is the cause; several are candidates.
fn settle(mut v: Vec<Actor>) -> Vec<Actor> {
    if v.len() == 1 {
        v[0].role = Role::Cause;
    }
    v
}

/// The route lookup that sent the packet to the wrong device or delivered it locally: the
/// route (and the policy rule, when an added one selected its table) the lookup takes for the
/// packet as seen there; and when the path's own route is missing, why.
fn routing(ctx: &Ctx<'_>, inv: &NsInventory, leg: Leg, h: &Hop) -> Vec<Actor> {
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

fn rule_target(r: &super::inventory::PolicyRule) -> String {
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

fn route_actor(inv: &NsInventory, r: &super::inventory::Route, role: Role) -> Actor {
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
    let on_expected = |r: &super::inventory::Route| {
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

fn state_actor(inv: &NsInventory, device: Option<String>, id: ActorId, does: String) -> Actor {
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
fn misdirected_route(ctx: &Ctx<'_>, _d: &Divergence) -> Vec<Actor> {
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

/// The neighbour entry that gave a frame the wrong L2 destination; toward the host side from
/// the guest, the guest's own ARP cache (not readable).
fn l2(ctx: &Ctx<'_>, inv: &NsInventory, leg: Leg, h: &Hop) -> Vec<Actor> {
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

/// A packet that turned up on another device without a route lookup in between: what sits
/// on the device it was last seen on (filters with redirect actions, programs) did it.
fn redirected(ctx: &Ctx<'_>, d: &Divergence, leg: Leg, h: &Hop) -> Vec<Actor> {
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
fn device_programs(_ctx: &Ctx<'_>, inv: &NsInventory, _leg: Leg, h: &Hop) -> Vec<Actor> {
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

fn program_actor(inv: &NsInventory, p: &Program, role: Role) -> Actor {
    Actor {
        role,
        how: How::State,
        netns: Some(inv.label.clone()),
        device: p.device.clone(),
        place: super::actor::attach_name(p.attach).into(),
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

fn filter_actor(inv: &NsInventory, f: &super::inventory::TcFilter, role: Role) -> Actor {
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

// ---------------------------------------------------------------------------------------
// The effect's place, when nothing differed before it.

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

/// For the engine: the priorities of DNAT and SNAT (what "after the rewrite" means).
pub const NAT_PRIOS: (i32, i32) = (PRIO_NAT_DST, PRIO_NAT_SRC);
