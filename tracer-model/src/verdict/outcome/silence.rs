//! The request was handed on and nothing came back: held in a queue (the tap's ring not
//! read, a device's qdisc), or read by the VMM with no reply.
use super::{is_tap, reader_fact};
use crate::{
    facts::ReadFacts,
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::ExpectedPath,
    verdict::{Outcome, QueueKind, QueuedInfo, Verdict},
};

/// The request was handed to a device but never left it: the tap's ring was not read (a
/// transmit to the tap, no read by the VMM), or a device's queue discipline held it (it
/// went into the device's queue and was never transmitted).
pub(super) fn queued(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Option<Verdict> {
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
pub(super) fn read_by_vmm(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Option<Verdict> {
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
