//! Connection attempts as the client's socket sees them, from socket events alone (no packet
//! hop needed): the watcher's always-on detection. A socket that goes SYN_SENT → ESTABLISHED
//! connected; SYN_SENT → CLOSE failed (refused when a RST came in first). A reply that arrives
//! for a client port whose attempt already gave up is a late reply, and its delay is known
//! from the SYN_SENT time. Bounded: every table has a cap, and entries expire.
use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
};

use crate::{
    hop::{Hop, HopKind},
    net::addr,
    reason::DropReason,
    tcp::{TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_SENT},
};

/// Attempts in flight at most (an orchestrator makes one at a time per sandbox).
pub const MAX_IN_FLIGHT: usize = 16_384;
/// Attempts that gave up, kept for a late reply, at most.
pub const MAX_GAVE_UP: usize = 16_384;
/// An attempt in flight longer than this is forgotten (its close event was lost).
const IN_FLIGHT_NS: u64 = 120_000_000_000;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Connected,
    /// A RST answered the SYN.
    Refused,
    /// The client gave up (its timeout) or the kernel did (an error).
    GaveUp,
}

/// One attempt's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The address the client connected to (the sandbox's host IP).
    pub target: Ipv4Addr,
    pub client: (Ipv4Addr, u16),
    /// The client's namespace.
    pub netns: u32,
    pub syn_ns: u64,
    pub end_ns: u64,
    pub end: End,
}

impl Attempt {
    pub fn ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.syn_ns) as f64 / 1e6
    }
}

/// A reply to an attempt that had already given up.
#[derive(Debug, Clone, PartialEq)]
pub struct Late {
    pub target: Ipv4Addr,
    pub client: (Ipv4Addr, u16),
    /// ms from the SYN to the reply, and from the client giving up to the reply.
    pub reply_ms: f64,
    pub after_timeout_ms: f64,
    pub rst: bool,
}

/// What detection saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Detected {
    Attempt(Attempt),
    Late(Late),
    /// A handshake packet of the port dropped somewhere (not a RST freed by its socket).
    Drop {
        reason: DropReason,
        hop: Box<Hop>,
    },
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    target: Ipv4Addr,
    client: (Ipv4Addr, u16),
    netns: u32,
    syn_ns: u64,
    rst_seen: bool,
}

#[derive(Debug, Clone, Copy)]
struct GaveUp {
    syn_ns: u64,
    closed_ns: u64,
    /// The client port: known from the socket on some kernels; else learnt from the reply
    /// that matched (a second copy of that reply is not a second late reply).
    port: Option<u16>,
    matched: bool,
}

/// Given-up attempts kept per (client, target) for late replies, at most.
const MAX_GAVE_UP_PER_PAIR: usize = 64;

pub struct AttemptTracker {
    port: u16,
    late_ns: u64,
    in_flight: HashMap<u64, InFlight>,
    /// By (client address, target), oldest first. The kernel names a socket's port only
    /// after it leaves SYN_SENT, and takes it back before CLOSE, so a given-up attempt is
    /// known by its addresses and times; a late reply belongs to the latest attempt that had
    /// given up before it came.
    gave_up: HashMap<(Ipv4Addr, Ipv4Addr), VecDeque<GaveUp>>,
    gave_up_count: usize,
}

impl AttemptTracker {
    /// Attempts to `port`; replies up to `late_ns` after giving up count as late.
    pub fn new(port: u16, late_ns: u64) -> Self {
        Self {
            port,
            late_ns,
            in_flight: HashMap::new(),
            gave_up: HashMap::new(),
            gave_up_count: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Takes one hop; what it completes, if anything.
    pub fn push(&mut self, h: &Hop) -> Option<Detected> {
        match &h.kind {
            HopKind::Socket {
                old_state, new_state, ..
            } if h.pkt.dport == self.port => self.socket(h, *old_state, *new_state),
            HopKind::RecvReset => {
                if let Some(f) = self.in_flight.get_mut(&h.sk) {
                    f.rst_seen = true;
                }
                None
            }
            HopKind::Drop { reason } => self.late(h).or_else(|| {
                let benign = h.is_rst() && h.function.as_deref().is_some_and(|f| f.starts_with("tcp_"));
                (!benign).then(|| Detected::Drop {
                    reason: reason.clone(),
                    hop: Box::new(h.clone()),
                })
            }),
            HopKind::SendReset { .. } => self.late(h),
            _ => None,
        }
    }

    fn socket(&mut self, h: &Hop, old: u32, new: u32) -> Option<Detected> {
        match (old, new) {
            (TCP_CLOSE, TCP_SYN_SENT) => {
                if self.in_flight.len() < MAX_IN_FLIGHT || self.in_flight.contains_key(&h.sk) {
                    self.in_flight.insert(
                        h.sk,
                        InFlight {
                            target: h.dst(),
                            client: (h.src(), h.pkt.sport),
                            netns: h.netns,
                            syn_ns: h.ts_ns,
                            rst_seen: false,
                        },
                    );
                }
                None
            }
            (TCP_SYN_SENT, TCP_ESTABLISHED | TCP_CLOSE) => {
                let mut f = self.in_flight.remove(&h.sk)?;
                // The kernel picks the source port after the socket enters SYN_SENT: the
                // SYN_SENT event says port 0, later ones the real port.
                if h.pkt.sport != 0 {
                    f.client = (h.src(), h.pkt.sport);
                }
                let end = match new {
                    TCP_ESTABLISHED => End::Connected,
                    _ if f.rst_seen => End::Refused,
                    _ => End::GaveUp,
                };
                if end == End::GaveUp && self.late_ns > 0 && self.gave_up_count < MAX_GAVE_UP {
                    let q = self.gave_up.entry((f.client.0, f.target)).or_default();
                    if q.len() >= MAX_GAVE_UP_PER_PAIR {
                        q.pop_front();
                    } else {
                        self.gave_up_count += 1;
                    }
                    q.push_back(GaveUp {
                        syn_ns: f.syn_ns,
                        closed_ns: h.ts_ns,
                        port: (f.client.1 != 0).then_some(f.client.1),
                        matched: false,
                    });
                }
                Some(Detected::Attempt(Attempt {
                    target: f.target,
                    client: f.client,
                    netns: f.netns,
                    syn_ns: f.syn_ns,
                    end_ns: h.ts_ns,
                    end,
                }))
            }
            _ => None,
        }
    }

    /// A SYN-ACK or RST from the port to a client that gave up.
    fn late(&mut self, h: &Hop) -> Option<Detected> {
        if h.pkt.sport != self.port || !(h.is_syn_ack() || h.is_rst()) {
            return None;
        }
        let (client, target, port) = (addr(h.pkt.daddr), addr(h.pkt.saddr), h.pkt.dport);
        let late_ns = self.late_ns;
        let q = self.gave_up.get_mut(&(client, target))?;
        // A copy of a reply already matched (its RST, then its drop) is not another one.
        if q.iter().any(|g| g.matched && g.port == Some(port)) {
            return None;
        }
        let open = |g: &GaveUp| !g.matched && g.closed_ns <= h.ts_ns && h.ts_ns <= g.closed_ns + late_ns;
        let i = match q.iter().position(|g| g.port == Some(port) && open(g)) {
            Some(i) => i,
            None => (0..q.len()).rev().find(|&i| q[i].port.is_none() && open(&q[i]))?,
        };
        let g = &mut q[i];
        g.matched = true;
        g.port = Some(port);
        Some(Detected::Late(Late {
            target,
            client: (client, port),
            reply_ms: h.ts_ns.saturating_sub(g.syn_ns) as f64 / 1e6,
            after_timeout_ms: h.ts_ns.saturating_sub(g.closed_ns) as f64 / 1e6,
            rst: h.is_rst(),
        }))
    }

    /// Forgets attempts whose end or late reply can no longer come.
    pub fn expire(&mut self, now_ns: u64) {
        let late = self.late_ns;
        let mut kept = 0;
        self.gave_up.retain(|_, q| {
            q.retain(|g| now_ns <= g.closed_ns + late);
            kept += q.len();
            !q.is_empty()
        });
        self.gave_up_count = kept;
        self.in_flight
            .retain(|_, f| now_ns.saturating_sub(f.syn_ns) <= IN_FLIGHT_NS);
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp_flag;

    use super::*;
    use crate::fixtures::hop;

    const HOST: &str = "e2b-host";

    fn sock(ts: u64, sk: u64, old: u32, new: u32, sport: u16) -> Hop {
        let mut h = hop(
            ts,
            HOST,
            "",
            HopKind::Socket {
                old: "",
                new: "",
                old_state: old,
                new_state: new,
            },
            Default::default(),
        );
        h.sk = sk;
        h.pkt.saddr = u32::from_ne_bytes([10, 12, 0, 2]);
        h.pkt.daddr = u32::from_ne_bytes([10, 11, 0, 1]);
        h.pkt.sport = sport;
        h.pkt.dport = 49983;
        h
    }

    fn syn_ack_drop(ts: u64, dport: u16) -> Hop {
        let mut h = hop(
            ts,
            HOST,
            "veth-1",
            HopKind::Drop {
                reason: DropReason::new("NO_SOCKET"),
            },
            Default::default(),
        );
        h.pkt.saddr = u32::from_ne_bytes([10, 11, 0, 1]);
        h.pkt.daddr = u32::from_ne_bytes([10, 12, 0, 2]);
        h.pkt.sport = 49983;
        h.pkt.dport = dport;
        h.pkt.flags = tcp_flag::SYN | tcp_flag::ACK;
        h.function = Some("tcp_v4_rcv".into());
        h
    }

    #[test]
    fn connected_refused_and_gave_up() {
        let mut t = AttemptTracker::new(49983, 1_000_000_000);
        assert_eq!(t.push(&sock(0, 1, TCP_CLOSE, TCP_SYN_SENT, 1000)), None);
        let Some(Detected::Attempt(a)) = t.push(&sock(300_000, 1, TCP_SYN_SENT, TCP_ESTABLISHED, 1000))
        else {
            panic!("connected")
        };
        assert_eq!(
            (a.end, a.target, a.client.1),
            (End::Connected, [10, 11, 0, 1].into(), 1000)
        );
        t.push(&sock(0, 2, TCP_CLOSE, TCP_SYN_SENT, 1001));
        let mut rst = sock(100, 2, 0, 0, 1001);
        rst.kind = HopKind::RecvReset;
        t.push(&rst);
        let Some(Detected::Attempt(a)) = t.push(&sock(200, 2, TCP_SYN_SENT, TCP_CLOSE, 1001)) else {
            panic!("refused")
        };
        assert_eq!(a.end, End::Refused);
        t.push(&sock(0, 3, TCP_CLOSE, TCP_SYN_SENT, 1002));
        let Some(Detected::Attempt(a)) = t.push(&sock(50_000_000, 3, TCP_SYN_SENT, TCP_CLOSE, 1002)) else {
            panic!("gave up")
        };
        assert_eq!((a.end, a.ms()), (End::GaveUp, 50.0));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_reply_after_giving_up_is_late_once_and_only_in_the_window() {
        let mut t = AttemptTracker::new(49983, 1_000_000_000);
        // As the kernel says it: no source port yet when the socket enters SYN_SENT.
        t.push(&sock(0, 3, TCP_CLOSE, TCP_SYN_SENT, 0));
        t.push(&sock(50_000_000, 3, TCP_SYN_SENT, TCP_CLOSE, 1002));
        let Some(Detected::Late(l)) = t.push(&syn_ack_drop(80_000_000, 1002)) else {
            panic!("late")
        };
        assert_eq!((l.reply_ms, l.after_timeout_ms, l.rst), (80.0, 30.0, false));
        // A second copy is an ordinary drop, not a second late reply.
        assert!(matches!(
            t.push(&syn_ack_drop(81_000_000, 1002)),
            Some(Detected::Drop { .. })
        ));
        // Past the window: a drop.
        t.push(&sock(0, 4, TCP_CLOSE, TCP_SYN_SENT, 1003));
        t.push(&sock(50_000_000, 4, TCP_SYN_SENT, TCP_CLOSE, 1003));
        assert!(matches!(
            t.push(&syn_ack_drop(2_000_000_000, 1003)),
            Some(Detected::Drop { .. })
        ));
        t.expire(10_000_000_000);
        assert!(t.gave_up.is_empty());
    }

    #[test]
    fn without_ports_a_late_reply_goes_to_the_latest_attempt_that_gave_up_before_it() {
        let ms = 1_000_000;
        let mut t = AttemptTracker::new(49983, 1_000 * ms);
        // As this kernel says it: port 0 at SYN_SENT and at CLOSE. Attempt k at 0, k+1 at 55.
        t.push(&sock(0, 1, TCP_CLOSE, TCP_SYN_SENT, 0));
        t.push(&sock(50 * ms, 1, TCP_SYN_SENT, TCP_CLOSE, 0));
        t.push(&sock(55 * ms, 2, TCP_CLOSE, TCP_SYN_SENT, 0));
        let Some(Detected::Late(l)) = t.push(&syn_ack_drop(80 * ms, 3001)) else {
            panic!("k's reply")
        };
        assert_eq!((l.reply_ms, l.client.1), (80.0, 3001));
        // The same reply again (its RST, then its drop) is not k+1's.
        assert!(matches!(
            t.push(&syn_ack_drop(81 * ms, 3001)),
            Some(Detected::Drop { .. })
        ));
        t.push(&sock(105 * ms, 2, TCP_SYN_SENT, TCP_CLOSE, 0));
        let Some(Detected::Late(l)) = t.push(&syn_ack_drop(135 * ms, 3002)) else {
            panic!("k+1's reply")
        };
        assert_eq!((l.reply_ms, l.after_timeout_ms), (80.0, 30.0));
    }

    #[test]
    fn tables_are_bounded() {
        let mut t = AttemptTracker::new(49983, 1_000_000_000);
        for sk in 0..(MAX_IN_FLIGHT as u64 + 100) {
            t.push(&sock(0, sk + 1, TCP_CLOSE, TCP_SYN_SENT, 1000));
        }
        assert_eq!(t.in_flight(), MAX_IN_FLIGHT);
        t.expire(IN_FLIGHT_NS + 1);
        assert_eq!(t.in_flight(), 0);
    }
}
