//! Correlation: hops in, journeys out. A journey is one connection attempt (the SYN, the
//! reply, the client socket's transitions, route lookups and neighbour changes on the way),
//! keyed by the client's address, port and initial sequence number — which NAT on the way to
//! envd never changes. Pure logic: the one-shot trace and the watcher feed it the same way.
//!
//! This module holds what a journey is (its key, legs and hops); `correlator` builds them
//! from the hops as they arrive, with its timing and bounds (re-exported here).
mod correlator;

use std::net::Ipv4Addr;

pub use correlator::{
    Correlator, LATE_WINDOW_NS, MAX_FINISHED, MAX_NEIGH, MAX_OPEN, MAX_PENDING, Timing, is_route_failure,
};
use serde::{Deserialize, Serialize};

use crate::hop::Hop;

/// A connection attempt: client address, port and initial sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ConnKey {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub isn: u32,
}

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    /// Client → envd.
    Request,
    /// envd (or whoever answers) → client.
    Reply,
    /// Not a packet: socket, route or neighbour event.
    Control,
}

/// What a journey is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JourneyId {
    Conn(ConnKey),
    /// A connect() that found no route: no packet ever existed.
    NoRoute {
        netns: u32,
        dst: Ipv4Addr,
        at_ns: u64,
    },
    /// A connect() that failed at once, with this errno, before any packet was sent (a
    /// prohibit or blackhole route or rule, a local firewall): known from the client.
    NotSent {
        netns: u32,
        dst: Ipv4Addr,
        port: u16,
        errno: i32,
        at_ns: u64,
    },
    /// A probe the tracer did not send: the host side could not be verified, or the route
    /// read just before (`ReadFacts::probe_route`) led off it.
    Withheld {
        netns: u32,
        dst: Ipv4Addr,
        port: u16,
        at_ns: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Journey {
    pub id: JourneyId,
    /// Hops in arrival order, each with its leg.
    pub hops: Vec<(Leg, Hop)>,
    /// The destination the client asked for (before any NAT).
    pub target: Option<(Ipv4Addr, u16)>,
    pub first_ns: u64,
    pub last_ns: u64,
    /// When an event arrived that decides the outcome (the journey is then finished after a
    /// short settle time that lets events from other CPUs arrive).
    pub decided_at: Option<u64>,
    /// When the client gave up (its socket closed without an answer). A reply can still come
    /// (a slow guest): the journey stays open for the late window, unless something decides
    /// it first.
    pub closed_at: Option<u64>,
}

impl Journey {
    fn new(id: JourneyId, ts: u64) -> Self {
        Self {
            id,
            hops: Vec::new(),
            target: None,
            first_ns: ts,
            last_ns: ts,
            decided_at: None,
            closed_at: None,
        }
    }

    /// Adds a hop; beyond [`MAX_HOPS`] only the count grows (a journey is one attempt: more
    /// hops than that are repeats of the same packets).
    fn push(&mut self, leg: Leg, hop: Hop) {
        self.last_ns = self.last_ns.max(hop.ts_ns);
        self.first_ns = self.first_ns.min(hop.ts_ns);
        if self.hops.len() < MAX_HOPS {
            self.hops.push((leg, hop));
        }
    }

    fn decide(&mut self, ts: u64) {
        self.decided_at.get_or_insert(ts);
    }

    /// Applies what an event says about the attempt's end.
    fn settle(&mut self, d: Decision, ts: u64) {
        match d {
            Decision::Hard => self.decide(ts),
            Decision::ClientGaveUp => {
                self.closed_at.get_or_insert(ts);
            }
            Decision::None => {}
        }
    }

    /// A journey for a probe that was not sent (see [`JourneyId::Withheld`]).
    pub fn withheld(netns: u32, dst: Ipv4Addr, port: u16, at_ns: u64) -> Self {
        let mut j = Self::new(
            JourneyId::Withheld {
                netns,
                dst,
                port,
                at_ns,
            },
            at_ns,
        );
        j.target = Some((dst, port));
        j.decide(at_ns);
        j
    }

    /// An attempt known only from one event detection saw (a drop of one of its packets):
    /// what the watcher has when it could not follow the attempts themselves.
    /// Without one, an attempt of which nothing is known.
    pub fn detected(seen: Option<(Leg, Hop)>, target: Option<(Ipv4Addr, u16)>, at_ns: u64) -> Self {
        let key = match &seen {
            Some((Leg::Reply, h)) => (h.dst(), h.pkt.dport, h.pkt.ack.wrapping_sub(1)),
            Some((_, h)) => (h.src(), h.pkt.sport, h.pkt.seq),
            None => (Ipv4Addr::UNSPECIFIED, 0, 0),
        };
        let ts = seen.as_ref().map_or(at_ns, |(_, h)| h.ts_ns);
        let mut j = Self::new(
            JourneyId::Conn(ConnKey {
                client: key.0,
                client_port: key.1,
                isn: key.2,
            }),
            ts,
        );
        j.target = target;
        j.hops.extend(seen);
        j.decide(ts);
        j
    }

    /// Hops of one leg.
    pub fn leg(&self, leg: Leg) -> impl Iterator<Item = &Hop> {
        self.hops.iter().filter(move |(l, _)| *l == leg).map(|(_, h)| h)
    }

    pub fn client(&self) -> Option<(Ipv4Addr, u16)> {
        match self.id {
            JourneyId::Conn(k) => Some((k.client, k.client_port)),
            JourneyId::NoRoute { .. } | JourneyId::NotSent { .. } | JourneyId::Withheld { .. } => None,
        }
    }
}

/// Most hops kept per journey.
pub const MAX_HOPS: usize = 512;

/// What an event says about the end of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Decides it: connected, a RST received, a packet dropped.
    Hard,
    /// The client gave up: a late reply may still come.
    ClientGaveUp,
    None,
}
