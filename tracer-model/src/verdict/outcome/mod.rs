//! The outcome of a journey, from its events first and the facts read at decision time
//! second. Each decider looks for one kind of evidence and is tried in order: the first that
//! finds it decides. Nothing is claimed that no event or read fact shows.
//!
//! The deciders are grouped by the outcome they find: `replies` (a reset, a reply after the
//! client gave up), `drops` (a packet dropped, placed in its hook), `unreachable` (no route,
//! a refused connect(), a withheld probe, an unresolved neighbour) and `silence` (queued, or
//! read with no reply); `stopped` finds where a packet was last seen. This module tries them
//! in order and holds what they share.
mod drops;
mod replies;
mod silence;
mod stopped;
mod unreachable;

use super::{Outcome, Verdict};
use crate::{
    facts::{FactUsed, ReadFacts},
    hop::HopKind,
    journey::{Journey, JourneyId, Leg},
    path::ExpectedPath,
    tcp::TCP_ESTABLISHED,
};

pub(super) fn outcome(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Verdict {
    match j.id {
        JourneyId::NoRoute { dst, .. } => {
            let hop = j.hops.first().map(|(_, h)| h);
            let (index, error) = unreachable::route_error(j).unzip();
            let mut v = unreachable::unreachable_no_route(dst, hop, index.or(Some(0)), error.unwrap_or(0));
            v.facts
                .extend(unreachable::blocker(facts, hop.map_or(0, |h| h.netns), dst));
            return v;
        }
        JourneyId::NotSent {
            netns, dst, errno, ..
        } => return unreachable::not_sent(j, netns, dst, errno, path, facts),
        JourneyId::Withheld { netns, dst, .. } => return unreachable::withheld(netns, dst, path, facts),
        JourneyId::Conn(_) => {}
    }
    connected(j)
        .or_else(|| replies::late(j))
        .or_else(|| replies::stack_reset(j))
        .or_else(|| replies::peer_reset(j, path))
        .or_else(|| drops::first_drop(j, path, facts))
        .or_else(|| unreachable::route_failure(j))
        .or_else(|| unreachable::neighbour_failure(j, path, facts))
        .or_else(|| silence::queued(j, path, facts))
        .or_else(|| silence::read_by_vmm(j, path, facts))
        .unwrap_or_else(|| {
            let mut v = Verdict::new(Outcome::Unknown);
            v.failing_hop = last_packet_hop(j);
            v.facts = stopped::stopped_at(j)
                .map(|s| stopped::facts_at(&s, path, facts))
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
pub(super) fn last_packet_hop(j: &Journey) -> Option<usize> {
    j.hops
        .iter()
        .rposition(|(l, h)| *l != Leg::Control && h.is_packet())
}
