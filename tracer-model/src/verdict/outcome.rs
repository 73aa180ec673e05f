//! The outcome of a journey, from its events first and the facts read at decision time
//! second. Each decider looks for one kind of evidence and is tried in order: the first that
//! finds it decides. Nothing is claimed that no event or read fact shows.
use std::net::Ipv4Addr;

use super::{
    Direction, DropInfo, LateFate, LateInfo, MisdirectedBy, MisdirectedInfo, Outcome, QueueKind, QueuedInfo,
    ReplyKind, ResetBy, ResetInfo, UnreachableInfo, UnreachableKind, Verdict, errno_name,
};
use crate::{
    facts::{FactUsed, ReadFacts},
    hook::tables_in_window,
    hop::{Hop, HopKind},
    journey::{Journey, JourneyId, Leg},
    path::ExpectedPath,
    reason::{DropReason, ReasonClass},
    tcp::{NUD_FAILED, NUD_INCOMPLETE, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_SENT, nud_name},
};

pub(super) fn outcome(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Verdict {
    match j.id {
        JourneyId::NoRoute { dst, .. } => {
            let hop = j.hops.first().map(|(_, h)| h);
            let (index, error) = route_error(j).unzip();
            let mut v = unreachable_no_route(dst, hop, index.or(Some(0)), error.unwrap_or(0));
            v.facts.extend(blocker(facts, hop.map_or(0, |h| h.netns), dst));
            return v;
        }
        JourneyId::NotSent {
            netns, dst, errno, ..
        } => return not_sent(j, netns, dst, errno, path, facts),
        JourneyId::Withheld { netns, dst, .. } => return withheld(netns, dst, path, facts),
        JourneyId::Conn(_) => {}
    }
    connected(j)
        .or_else(|| late(j))
        .or_else(|| stack_reset(j))
        .or_else(|| peer_reset(j, path))
        .or_else(|| first_drop(j, path, facts))
        .or_else(|| route_failure(j))
        .or_else(|| neighbour_failure(j, path, facts))
        .or_else(|| queued(j, path, facts))
        .or_else(|| read_by_vmm(j, path, facts))
        .unwrap_or_else(|| {
            let mut v = Verdict::new(Outcome::Unknown);
            v.failing_hop = last_packet_hop(j);
            v.facts = stopped_at(j)
                .map(|s| facts_at(&s, path, facts))
                .unwrap_or_default();
            v
        })
}

pub(super) fn connected(j: &Journey) -> Option<Verdict> {
    j.hops
        .iter()
        .any(|(_, h)| {
            matches!(
                h.kind,
                HopKind::Socket {
                    new_state: TCP_ESTABLISHED,
                    ..
                }
            )
        })
        .then(|| Verdict::new(Outcome::Connected))
}

/// Milliseconds from the first hop of the request to the first reply packet (or to the
/// client's socket connecting).
pub(super) fn reply_ms(j: &Journey) -> Option<f64> {
    let start = j.leg(Leg::Request).map(|h| h.ts_ns).min()?;
    let reply = j
        .hops
        .iter()
        .filter(|(l, h)| {
            (*l == Leg::Reply && (h.is_syn_ack() || h.is_rst()))
                || matches!(
                    h.kind,
                    HopKind::Socket {
                        new_state: TCP_ESTABLISHED,
                        ..
                    }
                )
        })
        .map(|(_, h)| h.ts_ns)
        .min()?;
    Some(ms(reply.saturating_sub(start)))
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 10_000.0).round() / 100.0
}

/// When the client gave up on the attempt (its socket closed from SYN_SENT).
fn gave_up_at(j: &Journey) -> Option<u64> {
    j.hops.iter().find_map(|(_, h)| match h.kind {
        HopKind::Socket {
            old_state: TCP_SYN_SENT,
            new_state: TCP_CLOSE,
            ..
        } => Some(h.ts_ns),
        _ => None,
    })
}

/// The reply came after the client had given up: the guest answered, too late.
fn late(j: &Journey) -> Option<Verdict> {
    let closed = gave_up_at(j)?;
    let replies = || {
        j.hops
            .iter()
            .enumerate()
            .filter(|(_, (l, h))| *l == Leg::Reply && h.is_packet() && (h.is_syn_ack() || h.is_rst()))
    };
    // A reply before the client gave up is not late (it was lost on the way instead).
    if replies().any(|(_, (_, h))| h.ts_ns <= closed) {
        return None;
    }
    let (i, (_, first)) = replies().next()?;
    let start = j.leg(Leg::Request).map(|h| h.ts_ns).min()?;
    let fate = j.hops[i..].iter().find_map(|(l, h)| match &h.kind {
        HopKind::Drop { reason } if *l == Leg::Reply => Some(LateFate::Dropped {
            reason: reason.clone(),
            netns: Some(h.ns_label()),
            device: h.device.clone(),
        }),
        HopKind::SendReset { .. } if *l == Leg::Reply => Some(LateFate::ResetBy {
            netns: Some(h.ns_label()),
        }),
        _ => None,
    });
    let mut v = Verdict::new(Outcome::Late);
    v.late = Some(LateInfo {
        reply: if first.is_rst() {
            ReplyKind::Rst
        } else {
            ReplyKind::SynAck
        },
        reply_ms: ms(first.ts_ns.saturating_sub(start)),
        timeout_ms: ms(closed.saturating_sub(start)),
        after_timeout_ms: ms(first.ts_ns.saturating_sub(closed)),
        fate,
    });
    v.failing_hop = Some(i);
    Some(v)
}

/// A namespace's own stack answered the SYN with RST (nothing listening there).
fn stack_reset(j: &Journey) -> Option<Verdict> {
    let (i, h) = j
        .hops
        .iter()
        .enumerate()
        .find(|(_, (l, h))| *l == Leg::Request && matches!(h.kind, HopKind::SendReset { .. }))?;
    let mut v = Verdict::new(Outcome::Reset);
    v.reset = Some(ResetInfo {
        by: ResetBy::Stack,
        netns: Some(h.1.ns_label()),
        device: h.1.device.clone(),
    });
    v.failing_hop = Some(i);
    Some(v)
}

/// The peer behind the tap (the guest) answered RST.
fn peer_reset(j: &Journey, path: Option<&ExpectedPath>) -> Option<Verdict> {
    let (i, (_, h)) = j
        .hops
        .iter()
        .enumerate()
        .find(|(_, (l, h))| *l == Leg::Reply && h.is_rst())?;
    // From the guest only if it came in at the tap: a RST made on the way (a REJECT rule, a
    // stack) first appears elsewhere.
    let from_guest = match path {
        Some(p) => {
            h.netns == p.sandbox_ns.inode
                && (h.device.as_deref() == Some(p.tap.as_str()) || h.device.as_deref() == p.bridge.as_deref())
                && matches!(h.kind, HopKind::Tcx { ingress: true } | HopKind::Receive)
        }
        None => true,
    };
    // A RST made on the way answers a SYN that was dropped there (REJECT): the drop decides.
    let dropped_before = j.hops[..i]
        .iter()
        .any(|(l, x)| *l == Leg::Request && matches!(x.kind, HopKind::Drop { .. }));
    if !from_guest && dropped_before {
        return None;
    }
    let mut v = Verdict::new(Outcome::Reset);
    v.reset = Some(ResetInfo {
        by: if from_guest { ResetBy::Guest } else { ResetBy::Peer },
        netns: Some(h.ns_label()),
        device: h.device.clone(),
    });
    v.failing_hop = Some(i);
    Some(v)
}

/// A RST that reached its socket is freed by TCP: not a loss.
fn benign_drop(leg: Leg, h: &Hop) -> bool {
    leg == Leg::Reply && h.is_rst() && h.function.as_deref().is_some_and(|f| f.starts_with("tcp_"))
}

fn first_drop(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Option<Verdict> {
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

/// An unreachable destination: the kind from the route lookup's error (0 when unknown).
fn unreachable_no_route(dst: Ipv4Addr, hop: Option<&Hop>, i: Option<usize>, error: i32) -> Verdict {
    let mut v = Verdict::new(Outcome::Unreachable);
    v.unreachable = Some(UnreachableInfo {
        kind: UnreachableKind::from_errno(error),
        address: dst,
        netns: hop.map(Hop::ns_label),
        device: hop.and_then(|h| h.device.clone()),
        state: None,
        errno: (error != 0).then(|| errno_name(error)),
    });
    v.failing_hop = i;
    v
}

/// The first route lookup that failed: (its hop, the error the caller got).
fn route_error(j: &Journey) -> Option<(usize, i32)> {
    const EAGAIN: i32 = 11;
    const ENETUNREACH: i32 = 101;
    j.hops.iter().enumerate().find_map(|(i, (_, h))| match h.kind {
        HopKind::Route { table, error, .. } if crate::journey::is_route_failure(table, error) => {
            // The last table's "no match" (EAGAIN) reaches the caller as ENETUNREACH.
            Some((
                i,
                if error.unsigned_abs() == EAGAIN as u32 {
                    -ENETUNREACH
                } else {
                    error
                },
            ))
        }
        _ => None,
    })
}

fn route_failure(j: &Journey) -> Option<Verdict> {
    let (i, error) = route_error(j)?;
    let h = &j.hops[i].1;
    Some(unreachable_no_route(h.dst(), Some(h), Some(i), error))
}

/// The rule or route that blocks routing to `dst` in namespace `netns`, when one was read.
fn blocker(facts: &ReadFacts, netns: u32, dst: Ipv4Addr) -> Option<FactUsed> {
    facts
        .route_block(netns, dst)
        .map(|b| FactUsed::RouteBlocker(b.clone()))
}

/// A connect() that failed at once, known from the client: the errno says what kind of
/// refusal, the rule or route read now says which.
fn not_sent(
    j: &Journey,
    netns: u32,
    dst: Ipv4Addr,
    errno: i32,
    path: Option<&ExpectedPath>,
    facts: &ReadFacts,
) -> Verdict {
    let mut v = Verdict::new(Outcome::Unreachable);
    let label = path
        .and_then(|p| p.host_ns.as_ref().filter(|h| h.inode == netns))
        .map(|h| h.label())
        .unwrap_or_else(|| format!("netns:{netns}"));
    v.unreachable = Some(UnreachableInfo {
        kind: UnreachableKind::from_errno(errno),
        address: dst,
        netns: Some(label),
        device: None,
        state: None,
        errno: Some(errno_name(errno)),
    });
    v.failing_hop = route_error(j).map(|(i, _)| i);
    v.facts.extend(blocker(facts, netns, dst));
    v
}

/// A probe that was not sent: the host side could not be verified, or the route read in it
/// just before led elsewhere (another sandbox's veth: misdirected; anything else, or no route:
/// unreachable). Rests only on those reads.
fn withheld(netns: u32, dst: Ipv4Addr, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Verdict {
    let sandbox_label = path.map(|p| p.sandbox_ns.label());
    if let Some(problem) = &facts.host_side_problem {
        let mut v = Verdict::new(Outcome::Unreachable);
        v.unreachable = Some(UnreachableInfo {
            kind: UnreachableKind::HostSideUnknown,
            address: dst,
            netns: sandbox_label,
            device: None,
            state: None,
            errno: None,
        });
        v.facts.push(FactUsed::HostSideProblem(problem.clone()));
        return v;
    }
    let Some(route) = facts.probe_route.as_ref() else {
        return Verdict::new(Outcome::Unknown);
    };
    let mut v = match (&route.answer, &route.leads_to) {
        (Err(errno), _) => {
            let mut v = unreachable_no_route(dst, None, None, -errno.saturating_abs());
            if let Some(u) = v.unreachable.as_mut() {
                u.netns = Some(route.netns_label.clone());
            }
            v.facts.extend(blocker(facts, netns, dst));
            v
        }
        (Ok(answer), Some(peer)) if peer.sandbox => {
            let mut v = Verdict::new(Outcome::Misdirected);
            v.misdirected = Some(MisdirectedInfo {
                by: MisdirectedBy::Route,
                netns: Some(peer.netns_label.clone()),
                device: peer.device.clone(),
                out_device: answer.device.clone(),
                sandbox_id: peer.sandbox_id.clone(),
                answered: false,
            });
            v
        }
        (Ok(answer), _) => {
            let mut v = Verdict::new(Outcome::Unreachable);
            v.unreachable = Some(UnreachableInfo {
                kind: UnreachableKind::RoutedElsewhere,
                address: dst,
                netns: Some(route.netns_label.clone()),
                device: answer.device.clone(),
                state: None,
                errno: None,
            });
            v
        }
    };
    v.facts.push(FactUsed::ProbeRoute(route.clone()));
    v
}

/// Where the request was last seen: the namespace, and the device it was on its way out of.
pub(super) struct Stop {
    pub index: usize,
    pub netns: u32,
    pub netns_label: String,
    pub device: Option<String>,
    /// It reached the device's driver (a transmit event).
    pub transmitted: bool,
}

pub(super) fn stopped_at(j: &Journey) -> Option<Stop> {
    stopped_on(j, Leg::Request)
}

/// Where a leg was last seen.
fn stopped_on(j: &Journey, leg: Leg) -> Option<Stop> {
    let index = j
        .hops
        .iter()
        .rposition(|(l, h)| *l == leg && h.is_packet() && !matches!(h.kind, HopKind::Drop { .. }))?;
    let h = &j.hops[index].1;
    let device = match &h.kind {
        HopKind::Netfilter { out_dev: Some(o), .. } => Some(o.clone()),
        _ => h.device.clone(),
    };
    Some(Stop {
        index,
        netns: h.netns,
        netns_label: h.ns_label(),
        device,
        transmitted: matches!(h.kind, HopKind::Xmit | HopKind::Consumed),
    })
}

/// The facts about the device where the packet stopped, and about its veth peer on the path.
fn facts_at(s: &Stop, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Vec<FactUsed> {
    let Some(dev) = s.device.as_deref() else {
        return Vec::new();
    };
    let mut out: Vec<FactUsed> = facts
        .link(s.netns, dev)
        .filter(|l| !l.up || !l.carrier)
        .map(|l| FactUsed::Link(l.clone()))
        .into_iter()
        .collect();
    if let Some((ns, peer)) = path.and_then(|p| veth_peer(p, s.netns, dev))
        && let Some(l) = facts.link(ns, &peer).filter(|l| !l.up)
    {
        out.push(FactUsed::Link(l.clone()));
    }
    out
}

/// The other end of a path veth: (namespace inode, device).
fn veth_peer(p: &ExpectedPath, netns: u32, dev: &str) -> Option<(u32, String)> {
    if p.is_host(netns) && dev == p.host_veth {
        Some((p.sandbox_ns.inode, p.ns_veth.clone()))
    } else if netns == p.sandbox_ns.inode && dev == p.ns_veth {
        Some((p.host_inode()?, p.host_veth.clone()))
    } else {
        None
    }
}

/// The request stopped before a device's driver while ARP for the next hop went unanswered
/// (INCOMPLETE, FAILED): in the neighbour's queue.
fn neighbour_failure(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Option<Verdict> {
    // The request, else (it reached the guest) the reply on its way back.
    let s = [Leg::Request, Leg::Reply]
        .into_iter()
        .filter_map(|leg| stopped_on(j, leg))
        .find(|s| !s.transmitted)?;
    let dev = s.device.clone()?;
    // The next hop the path expects there: the guest behind the tap, the namespace's veth
    // address from the host.
    let prefer = path.and_then(|p| {
        let reply = j.hops[s.index].0 == Leg::Reply;
        if s.netns == p.sandbox_ns.inode && reply {
            p.host_veth_ip
        } else if s.netns == p.sandbox_ns.inode {
            Some(p.guest_ip)
        } else if p.is_host(s.netns) {
            p.ns_veth_ip
        } else {
            None
        }
    });
    // Changes seen as events on the way count too (the table may have moved on since).
    let from_events = j.hops.iter().rev().find_map(|(_, h)| match h.kind {
        HopKind::Neigh {
            address, new_state, ..
        } if h.netns == s.netns
            && h.device.as_deref() == Some(dev.as_str())
            && new_state & (NUD_INCOMPLETE | NUD_FAILED) != 0 =>
        {
            Some((address, new_state))
        }
        _ => None,
    });
    let read = facts.unresolved_on(s.netns, &dev, prefer);
    let (address, state) = match (read, from_events) {
        (Some(n), _) => (n.address, n.state),
        (None, Some(e)) => e,
        (None, None) => return None,
    };
    let mut v = Verdict::new(Outcome::Unreachable);
    v.unreachable = Some(UnreachableInfo {
        kind: UnreachableKind::Neighbour,
        address,
        netns: Some(s.netns_label.clone()),
        device: Some(dev.clone()),
        state: Some(nud_name(state).into()),
        errno: None,
    });
    v.facts.extend(read.cloned().map(FactUsed::Neighbour));
    v.facts.extend(facts_at(&s, path, facts));
    if path.is_some_and(|p| s.netns == p.sandbox_ns.inode && dev == p.tap) {
        v.facts.push(reader_fact(facts));
    }
    v.failing_hop = Some(s.index);
    Some(v)
}

fn reader_fact(facts: &ReadFacts) -> FactUsed {
    match &facts.reader {
        Some(r) => FactUsed::Reader(r.clone()),
        None => FactUsed::NoReader,
    }
}

fn is_tap(path: Option<&ExpectedPath>, dev: Option<&str>) -> bool {
    match path {
        Some(p) => dev == Some(p.tap.as_str()),
        None => dev.is_some_and(|d| d.starts_with("tap")),
    }
}

/// The request was handed to a device but never left it: the tap's ring was not read (a
/// transmit to the tap, no read by the VMM), or a device's queue discipline held it (it
/// went into the device's queue and was never transmitted).
fn queued(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Option<Verdict> {
    if j.leg(Leg::Reply).next().is_some() {
        return None;
    }
    let req: Vec<(usize, &Hop)> = j
        .hops
        .iter()
        .enumerate()
        .filter(|(_, (l, _))| *l == Leg::Request)
        .map(|(i, (_, h))| (i, h))
        .collect();
    let read = req
        .iter()
        .any(|(_, h)| matches!(h.kind, HopKind::Consumed) && is_tap(path, h.device.as_deref()));
    let to_tap = req
        .iter()
        .rfind(|(_, h)| matches!(h.kind, HopKind::Xmit) && is_tap(path, h.device.as_deref()));
    if let Some((i, h)) = to_tap
        && !read
    {
        let mut v = Verdict::new(Outcome::Queued);
        v.queued = Some(QueuedInfo {
            queue: QueueKind::Tap,
            netns: Some(h.ns_label()),
            device: h.device.clone(),
            reader: facts.reader.clone(),
        });
        v.facts.push(reader_fact(facts));
        v.failing_hop = Some(*i);
        return Some(v);
    }
    // Into a device's queue (tcx egress runs before the qdisc), never transmitted.
    let (i, last) = req.iter().rfind(|(_, h)| h.is_packet())?;
    let into_queue = matches!(last.kind, HopKind::Tcx { ingress: false });
    let transmitted = req
        .iter()
        .any(|(_, h)| matches!(h.kind, HopKind::Xmit) && h.netns == last.netns && h.device == last.device);
    if !into_queue || transmitted {
        return None;
    }
    let mut v = Verdict::new(Outcome::Queued);
    v.queued = Some(QueuedInfo {
        queue: QueueKind::Qdisc,
        netns: Some(last.ns_label()),
        device: last.device.clone(),
        reader: None,
    });
    v.failing_hop = Some(*i);
    Some(v)
}

/// The VMM read the SYN from the tap (the tap's read frees it) and nothing came back.
fn read_by_vmm(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Option<Verdict> {
    let (i, _) = j.hops.iter().enumerate().find(|(_, (l, h))| {
        *l == Leg::Request && matches!(h.kind, HopKind::Consumed) && is_tap(path, h.device.as_deref())
    })?;
    if j.leg(Leg::Reply).next().is_some() {
        return None;
    }
    let mut v = Verdict::new(Outcome::NoReply);
    v.failing_hop = Some(i);
    if facts.reader.is_some() {
        v.facts.push(reader_fact(facts));
    }
    Some(v)
}

pub(super) fn last_packet_hop(j: &Journey) -> Option<usize> {
    j.hops
        .iter()
        .rposition(|(l, h)| *l != Leg::Control && h.is_packet())
}
