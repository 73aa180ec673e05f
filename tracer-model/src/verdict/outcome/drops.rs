//! A packet dropped on the way: the first drop that is a loss decides, placed in its hook and
//! priority window when netfilter dropped it. A drop in the route lookup or in the neighbour
//! code is an unreachable destination instead.
use super::{
    is_tap, reader_fact,
    unreachable::{blocker, unreachable_no_route},
};
use crate::{
    facts::ReadFacts,
    hook::tables_in_window,
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::ExpectedPath,
    reason::{DropReason, ReasonClass},
    verdict::{Direction, DropInfo, Outcome, UnreachableInfo, UnreachableKind, Verdict},
};

/// A RST that reached its socket is freed by TCP: not a loss.
fn benign_drop(leg: Leg, h: &Hop) -> bool {
    leg == Leg::Reply && h.is_rst() && h.function.as_deref().is_some_and(|f| f.starts_with("tcp_"))
}

pub(super) fn first_drop(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Option<Verdict> {
    let (i, (leg, h)) = j.hops.iter().enumerate().find(|(_, (l, h))| {
        *l != Leg::Control && matches!(h.kind, HopKind::Drop { .. }) && !benign_drop(*l, h)
    })?;
    let HopKind::Drop { reason } = &h.kind else {
        return None;
    };
    let mut v = match reason.class() {
        // Packets queued for an unresolved neighbour die in the neighbour code when it gives
        // up (NEIGH_FAILED) or is flushed (QUEUE_PURGE when the tap lost its reader).
        _ if reason.is(ReasonClass::Neighbour) || in_neigh_code(h) => {
            let mut v = Verdict::new(Outcome::Unreachable);
            v.unreachable = Some(UnreachableInfo {
                kind: UnreachableKind::Neighbour,
                address: h.dst(),
                netns: Some(h.ns_label()),
                device: h.device.clone(),
                state: Some(reason.name().to_string()),
                errno: None,
            });
            v
        }
        ReasonClass::NoRoute => unreachable_no_route(h.dst(), Some(h), Some(i), 0),
        _ => Verdict::new(Outcome::Dropped),
    };
    v.drop = Some(drop_info(j, i, *leg, h, reason));
    v.failing_hop = Some(i);
    // A drop in the route lookup: the rule or route that refused this destination, if one did.
    if in_routing(h, reason) {
        v.facts.extend(blocker(facts, h.netns, h.dst()));
    }
    // The tap was not read (no reader, or a full ring): say who should read it.
    if reason.is(ReasonClass::TapNotRead) && is_tap(path, h.device.as_deref()) {
        v.facts.push(reader_fact(facts));
    }
    Some(v)
}

/// Dropped because the route lookup failed (ip_error answers unreachable/prohibit routes).
fn in_routing(h: &Hop, reason: &DropReason) -> bool {
    matches!(
        reason.class(),
        ReasonClass::NoRoute | ReasonClass::InputNoRoute | ReasonClass::InputAddrErrors
    ) || h.function.as_deref() == Some("ip_error")
}

fn in_neigh_code(h: &Hop) -> bool {
    h.function.as_deref().is_some_and(|f| f.starts_with("neigh_"))
}

fn drop_info(j: &Journey, i: usize, leg: Leg, h: &Hop, reason: &DropReason) -> DropInfo {
    let mut d = DropInfo {
        direction: if leg == Leg::Reply {
            Direction::Reply
        } else {
            Direction::Request
        },
        netns: Some(h.ns_label()),
        device: h.device.clone(),
        out_device: None,
        hook: None,
        table: None,
        reason: reason.clone(),
        function: h.function.clone(),
        location: h.location.clone(),
        priority_window: None,
    };
    if reason.is(ReasonClass::Netfilter) {
        place_in_netfilter(j, i, leg, h, &mut d);
    }
    d
}

/// The last netfilter hop of this skb in this namespace: the drop happened in that hook,
/// after that slot.
fn place_in_netfilter(j: &Journey, i: usize, leg: Leg, h: &Hop, d: &mut DropInfo) {
    let last_nf = j.hops[..i].iter().rev().find(|(l, x)| {
        *l == leg
            && x.netns == h.netns
            && matches!(x.kind, HopKind::Netfilter { .. })
            && (x.skb == h.skb || h.skb == 0)
    });
    let Some((
        _,
        Hop {
            kind:
                HopKind::Netfilter {
                    hook,
                    priority,
                    window_end,
                    in_dev,
                    out_dev,
                    ..
                },
            ..
        },
    )) = last_nf
    else {
        return;
    };
    d.hook = Some(*hook);
    let window = (*priority, *window_end);
    d.priority_window = Some(window);
    // A rule evaluator (nft_do_chain, ipt_do_table) dropped it: conntrack's own hook
    // functions share the window but are not tables with rules.
    let by_rules = d
        .function
        .as_deref()
        .is_some_and(|f| f.starts_with("nft_") || f.starts_with("ipt_"));
    let tables: Vec<&str> = tables_in_window(*hook, window)
        .into_iter()
        .filter(|t| !(by_rules && t.starts_with("conntrack")))
        .collect();
    d.table = (tables.len() == 1).then(|| tables[0].to_string());
    if in_dev.is_some() {
        d.device = in_dev.clone();
    }
    d.out_device = out_dev.clone();
}
