//! An unreachable destination: a route lookup that failed (and the rule or route that
//! refused it), a connect() refused at once, a probe withheld because the route read just
//! before led elsewhere, or a next hop whose neighbour entry never resolved.
use std::net::Ipv4Addr;

use super::{
    reader_fact,
    stopped::{facts_at, stopped_on},
};
use crate::{
    facts::{FactUsed, ReadFacts},
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::ExpectedPath,
    tcp::{NUD_FAILED, NUD_INCOMPLETE, nud_name},
    verdict::{
        MisdirectedBy, MisdirectedInfo, Outcome, UnreachableInfo, UnreachableKind, Verdict, errno_name,
    },
};

/// An unreachable destination: the kind from the route lookup's error (0 when unknown).
pub(super) fn unreachable_no_route(
    dst: Ipv4Addr,
    hop: Option<&Hop>,
    i: Option<usize>,
    error: i32,
) -> Verdict {
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
pub(super) fn route_error(j: &Journey) -> Option<(usize, i32)> {
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

pub(super) fn route_failure(j: &Journey) -> Option<Verdict> {
    let (i, error) = route_error(j)?;
    let h = &j.hops[i].1;
    Some(unreachable_no_route(h.dst(), Some(h), Some(i), error))
}

/// The rule or route that blocks routing to `dst` in namespace `netns`, when one was read.
pub(super) fn blocker(facts: &ReadFacts, netns: u32, dst: Ipv4Addr) -> Option<FactUsed> {
    facts
        .route_block(netns, dst)
        .map(|b| FactUsed::RouteBlocker(b.clone()))
}

/// A connect() that failed at once, known from the client: the errno says what kind of
/// refusal, the rule or route read now says which.
pub(super) fn not_sent(
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
pub(super) fn withheld(netns: u32, dst: Ipv4Addr, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Verdict {
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

/// The request stopped before a device's driver while ARP for the next hop went unanswered
/// (INCOMPLETE, FAILED): in the neighbour's queue.
pub(super) fn neighbour_failure(
    j: &Journey,
    path: Option<&ExpectedPath>,
    facts: &ReadFacts,
) -> Option<Verdict> {
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
