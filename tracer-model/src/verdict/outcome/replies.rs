//! What came back decides: a reset (from the namespace's own stack, from the guest, or made
//! on the way), or a reply that arrived after the client had given up (late, with its fate).
use crate::{
    hop::HopKind,
    journey::{Journey, Leg},
    path::ExpectedPath,
    tcp::{TCP_CLOSE, TCP_SYN_SENT},
    verdict::{LateFate, LateInfo, LateSplit, Outcome, ReplyKind, ResetBy, ResetInfo, Verdict},
};

use super::ms;

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
pub(super) fn late(j: &Journey) -> Option<Verdict> {
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
        split: split(j, start, first),
    });
    v.failing_hop = Some(i);
    Some(v)
}

/// Where a late reply's time went: the SYN's last packet hop before the reply and the reply's
/// first must be on one device of one namespace (the guest's edge), else the split is unknown.
fn split(j: &Journey, start: u64, reply: &crate::hop::Hop) -> Option<LateSplit> {
    let request: Vec<&crate::hop::Hop> = j
        .leg(Leg::Request)
        .filter(|h| h.is_packet() && h.ts_ns <= reply.ts_ns)
        .collect();
    let last = request.iter().max_by_key(|h| h.ts_ns)?;
    let at_edge =
        |h: &&&crate::hop::Hop| h.netns == reply.netns && h.device.is_some() && h.device == reply.device;
    if !at_edge(&last) {
        return None;
    }
    // Its first arrival there: a retransmitted SYN arrives again, later.
    let arrived = request.iter().filter(at_edge).map(|h| h.ts_ns).min()?;
    let mut before: Vec<&&crate::hop::Hop> = request.iter().filter(|h| h.ts_ns <= arrived).collect();
    before.sort_by_key(|h| h.ts_ns);
    let waited = before
        .windows(2)
        .max_by_key(|w| w[1].ts_ns - w[0].ts_ns)
        .map(|w| (ms(w[1].ts_ns - w[0].ts_ns), w[0].ns_label(), w[0].device.clone()));
    Some(LateSplit {
        to_guest_ms: ms(arrived.saturating_sub(start)),
        guest_ms: ms(reply.ts_ns.saturating_sub(arrived)),
        waited,
    })
}

/// A namespace's own stack answered the SYN with RST (nothing listening there).
pub(super) fn stack_reset(j: &Journey) -> Option<Verdict> {
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
pub(super) fn peer_reset(j: &Journey, path: Option<&ExpectedPath>) -> Option<Verdict> {
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
    // A RST dropped on its way back never reached the client: what it met was the drop (a
    // qdisc, a rule on the reply path), and the drop decides.
    let rst_dropped = j.hops[i..]
        .iter()
        .any(|(l, x)| *l == Leg::Reply && x.is_rst() && matches!(x.kind, HopKind::Drop { .. }));
    if rst_dropped {
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
