//! The correlator: hops in arrival order in, journeys out. It ties packets, socket events,
//! route lookups and neighbour changes to the attempt they belong to (by client address,
//! port and initial sequence number; by socket; by followed skb across rewrites), and
//! finishes a journey once its end is decided and settled, quiet, or past the late window.
//! Its tables are bounded. Kept apart from the journey's own types, which callers read
//! without needing how they are built.
use std::{collections::HashMap, net::Ipv4Addr};

use super::{ConnKey, Decision, Journey, JourneyId, Leg};
use crate::{
    hop::{Hop, HopKind},
    tcp::{TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_SENT},
};

/// Timing of the correlator, in ns.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// After a deciding event, wait this long for stragglers.
    pub settle_ns: u64,
    /// A journey with no event for this long is finished anyway.
    pub quiet_ns: u64,
    /// Route/socket events wait this long for the packet they belong to.
    pub pending_ns: u64,
    /// After the client gives up without an answer, a reply is still awaited this long (a
    /// slow guest answers after the orchestrator's 50 ms timeout).
    pub late_ns: u64,
}

/// The default late window: a reply seconds late is not "late" any more but a separate
/// problem, and Linux retransmits an unanswered SYN after 1 s.
pub const LATE_WINDOW_NS: u64 = 1_000_000_000;

impl Default for Timing {
    fn default() -> Self {
        Self {
            settle_ns: 15_000_000,
            quiet_ns: 400_000_000,
            pending_ns: 20_000_000,
            late_ns: LATE_WINDOW_NS,
        }
    }
}
/// Most journeys open at once; beyond, the oldest is finished early.
pub const MAX_OPEN: usize = 8192;
/// Most events waiting for the packet they belong to.
pub const MAX_PENDING: usize = 8192;
/// Most finished attempts remembered (to ignore their late packets).
pub const MAX_FINISHED: usize = 65536;
/// Most neighbour states remembered.
pub const MAX_NEIGH: usize = 8192;
/// At most this many rewritten client keys are remembered (one per SNAT'ed attempt).
pub const MAX_ALIASES: usize = 8192;
/// `-EAGAIN`: a fib table had no matching route (`fib_lookup` turns it into ENETUNREACH).
const FIB_NO_MATCH: i32 = -11;
const RT_TABLE_MAIN: u32 = 254;

/// Builds journeys from hops.
pub struct Correlator {
    ports: Vec<u16>,
    timing: Timing,
    open: HashMap<ConnKey, Journey>,
    /// Latest journey per client address and port.
    by_client: HashMap<(Ipv4Addr, u16), ConnKey>,
    /// Journey of each client socket (kernel `struct sock` address): a socket's transitions
    /// are tied to its SYN by address, because an unbound socket has no port yet when it
    /// enters SYN_SENT.
    by_sock: HashMap<u64, ConnKey>,
    /// Socket events that came before their SYN, by socket.
    pending_sock: HashMap<u64, Vec<Hop>>,
    /// Route lookups not yet matched to a packet.
    pending_route: Vec<Hop>,
    /// Attempts already reported, to ignore their late packets (FIN, ACKs, a drop seconds
    /// later); and their sockets.
    finished: HashMap<ConnKey, u64>,
    finished_sock: HashMap<u64, u64>,
    /// Latest neighbour state per (netns, address).
    neigh: HashMap<(u32, Ipv4Addr), (u32, u64)>,
    /// Journeys finished without a connection (route failures).
    ready: Vec<Journey>,
    /// The journey and leg of each followed skb: a packet whose tuple a rewrite changed
    /// (REDIRECT to another port, a DNAT elsewhere) stays in its journey.
    by_skb: HashMap<u64, (ConnKey, Leg)>,
    /// A client side rewritten on the way (SNAT, MASQUERADE): the key its packets carry after
    /// the rewrite → the attempt's own key. The reply comes back to the rewritten address.
    aliases: HashMap<ConnKey, ConnKey>,
}

impl Correlator {
    pub fn new(ports: &[u16], timing: Timing) -> Self {
        Self {
            ports: ports.to_vec(),
            timing,
            open: HashMap::new(),
            by_client: HashMap::new(),
            by_sock: HashMap::new(),
            pending_sock: HashMap::new(),
            pending_route: Vec::new(),
            finished: HashMap::new(),
            finished_sock: HashMap::new(),
            neigh: HashMap::new(),
            ready: Vec::new(),
            by_skb: HashMap::new(),
            aliases: HashMap::new(),
        }
    }

    /// Latest known neighbour state (NUD bits) of `addr` in namespace `netns`.
    pub fn neigh_state(&self, netns: u32, addr: Ipv4Addr) -> Option<u32> {
        self.neigh.get(&(netns, addr)).map(|(s, _)| *s)
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn push(&mut self, hop: Hop) {
        match &hop.kind {
            HopKind::Socket { .. } | HopKind::RecvReset => self.push_socket(hop),
            HopKind::Route { .. } => self.push_route(hop),
            HopKind::Neigh {
                address, new_state, ..
            } => {
                if self.neigh.len() < MAX_NEIGH || self.neigh.contains_key(&(hop.netns, *address)) {
                    self.neigh.insert((hop.netns, *address), (*new_state, hop.ts_ns));
                }
                self.push_neigh(hop);
            }
            _ => self.push_packet(hop),
        }
    }

    /// Client address/port of a packet, and its leg; None when it is not ours.
    fn classify(&self, hop: &Hop) -> Option<((Ipv4Addr, u16), Leg)> {
        if self.ports.contains(&hop.pkt.dport) {
            Some(((hop.src(), hop.pkt.sport), Leg::Request))
        } else if self.ports.contains(&hop.pkt.sport) {
            Some(((hop.dst(), hop.pkt.dport), Leg::Reply))
        } else {
            None
        }
    }

    fn push_packet(&mut self, hop: Hop) {
        let Some((client, leg)) = self.classify(&hop) else {
            self.push_rewritten(hop);
            return;
        };
        let key = match leg {
            Leg::Request if hop.is_syn() => Some(ConnKey {
                client: client.0,
                client_port: client.1,
                isn: hop.pkt.seq,
            }),
            Leg::Reply if hop.is_syn_ack() || (hop.is_rst() && hop.pkt.ack != 0) => Some(ConnKey {
                client: client.0,
                client_port: client.1,
                isn: hop.pkt.ack.wrapping_sub(1),
            }),
            _ => None,
        };
        let key = match key {
            Some(k) => self.rewritten_from(k, &hop),
            // Other packets of the connection go to its latest journey, if still open.
            None => match self.by_client.get(&client) {
                Some(k) if self.open.contains_key(k) => *k,
                _ => return,
            },
        };
        if self.finished.contains_key(&key) {
            return;
        }
        if !self.open.contains_key(&key) {
            self.start(key, &hop);
        }
        if leg == Leg::Request && hop.sk != 0 && !self.by_sock.contains_key(&hop.sk) {
            self.adopt_socket(hop.sk, key);
        }
        let is_drop = matches!(hop.kind, HopKind::Drop { .. });
        let handshake = hop.is_syn() || hop.is_syn_ack() || hop.is_rst();
        let ts = hop.ts_ns;
        let Some(j) = self.open.get_mut(&key) else { return };
        // Once decided, only the handshake matters: the data exchange that follows a
        // connection is not part of the attempt.
        if j.decided_at.is_some() && !handshake {
            return;
        }
        if leg == Leg::Request && j.target.is_none() {
            j.target = Some((hop.dst(), hop.pkt.dport));
        }
        let skb = hop.skb;
        let freed = matches!(hop.kind, HopKind::Drop { .. } | HopKind::Consumed);
        j.push(leg, hop);
        if is_drop {
            j.decide(ts);
        }
        self.note_skb(skb, key, leg, freed);
    }

    /// The attempt a handshake packet belongs to: its own key, unless the client's side was
    /// rewritten on the way. The same skb, with the same ISN and toward the same target,
    /// already followed under another key is that attempt's SYN after a SNAT (which changes
    /// the source only): its new key joins the attempt, and so does the reply addressed to it.
    fn rewritten_from(&mut self, key: ConnKey, hop: &Hop) -> ConnKey {
        if let Some(k) = self.aliases.get(&key) {
            return *k;
        }
        match self.by_skb.get(&hop.skb) {
            Some((k, Leg::Request))
                if hop.skb != 0
                    && hop.is_syn()
                    && *k != key
                    && k.isn == key.isn
                    && self
                        .open
                        .get(k)
                        .is_some_and(|j| j.target == Some((hop.dst(), hop.pkt.dport))) =>
            {
                let k = *k;
                if self.aliases.len() < MAX_ALIASES {
                    self.aliases.insert(key, k);
                }
                k
            }
            _ => key,
        }
    }

    /// Remembers which journey an skb belongs to (forgets it once it is freed: its address
    /// is then reused).
    fn note_skb(&mut self, skb: u64, key: ConnKey, leg: Leg, freed: bool) {
        if skb == 0 {
            return;
        }
        if freed {
            self.by_skb.remove(&skb);
        } else if self.by_skb.len() < MAX_OPEN * 8 || self.by_skb.contains_key(&skb) {
            self.by_skb.insert(skb, (key, leg));
        }
    }

    /// A followed skb whose ports no longer name the port (rewritten on the way): its hop
    /// goes to the journey the skb was seen in.
    fn push_rewritten(&mut self, hop: Hop) {
        let Some(&(key, leg)) = self.by_skb.get(&hop.skb).filter(|_| hop.skb != 0) else {
            return;
        };
        // A rewrite changes addresses and ports, never flags: anything but a handshake packet
        // is another packet in a reused skb (one freed where no event showed it).
        if !(hop.is_syn() || hop.is_syn_ack() || hop.is_rst()) {
            self.by_skb.remove(&hop.skb);
            return;
        }
        let freed = matches!(hop.kind, HopKind::Drop { .. } | HopKind::Consumed);
        let is_drop = matches!(hop.kind, HopKind::Drop { .. });
        let (skb, ts) = (hop.skb, hop.ts_ns);
        let Some(j) = self.open.get_mut(&key) else {
            self.by_skb.remove(&skb);
            return;
        };
        j.push(leg, hop);
        if is_drop {
            j.decide(ts);
        }
        self.note_skb(skb, key, leg, freed);
    }

    /// Ties socket `sk` to journey `key`, with the socket's events that came first.
    fn adopt_socket(&mut self, sk: u64, key: ConnKey) {
        self.by_sock.insert(sk, key);
        let pending = self.pending_sock.remove(&sk).unwrap_or_default();
        if let Some(j) = self.open.get_mut(&key) {
            for h in pending {
                let d = decision(&h);
                let ts = h.ts_ns;
                j.push(Leg::Control, h);
                j.settle(d, ts);
            }
            j.hops.sort_by_key(|(_, h)| h.ts_ns);
        }
    }

    /// Opens a journey, with the route events that came before its first packet.
    fn start(&mut self, key: ConnKey, first: &Hop) {
        let client = (key.client, key.client_port);
        let mut j = Journey::new(JourneyId::Conn(key), first.ts_ns);
        let dst = first.dst();
        let (routes, rest): (Vec<Hop>, Vec<Hop>) = std::mem::take(&mut self.pending_route)
            .into_iter()
            .partition(|r| r.dst() == dst && (r.netns == first.netns || r.netns == 0));
        self.pending_route = rest;
        for r in routes {
            j.push(Leg::Control, r);
        }
        j.hops.sort_by_key(|(_, h)| h.ts_ns);
        if self.open.len() >= MAX_OPEN {
            self.finish_oldest();
        }
        self.by_client.insert(client, key);
        self.open.insert(key, j);
    }

    /// Finishes the journey that started first (the table of open journeys is full).
    fn finish_oldest(&mut self) {
        let Some(k) = self.open.iter().min_by_key(|(_, j)| j.first_ns).map(|(k, _)| *k) else {
            return;
        };
        let now = self.open[&k].last_ns;
        self.close_out(k, now);
    }

    /// Moves a finished journey out of the open table (to `ready`), remembering its key and
    /// sockets for a while to ignore their late packets.
    fn close_out(&mut self, k: ConnKey, now_ns: u64) {
        let Some(j) = self.open.remove(&k) else { return };
        self.finished.insert(k, now_ns);
        self.by_sock.retain(|sk, key| {
            if *key == k {
                self.finished_sock.insert(*sk, now_ns);
            }
            *key != k
        });
        if self.by_client.get(&(k.client, k.client_port)) == Some(&k) {
            self.by_client.remove(&(k.client, k.client_port));
        }
        self.by_skb.retain(|_, (key, _)| *key != k);
        // Its rewritten keys are finished with it: their late packets are ignored too.
        let aliases: Vec<ConnKey> = self
            .aliases
            .iter()
            .filter(|(_, v)| **v == k)
            .map(|(a, _)| *a)
            .collect();
        for a in aliases {
            self.aliases.remove(&a);
            self.finished.insert(a, now_ns);
        }
        self.ready.push(j);
    }

    fn push_socket(&mut self, hop: Hop) {
        // A client socket: the port we follow is its remote port.
        if !self.ports.contains(&hop.pkt.dport) {
            return;
        }
        let sk = hop.sk;
        if matches!(
            hop.kind,
            HopKind::Socket {
                new_state: TCP_SYN_SENT,
                ..
            }
        ) {
            // A new attempt (the address of a freed socket may be reused): what was parked
            // for that address belongs to an older attempt.
            self.by_sock.remove(&sk);
            self.finished_sock.remove(&sk);
            self.pending_sock.remove(&sk);
            self.park_socket_event(sk, hop);
            return;
        }
        // By socket; events without one (test fixtures) by client address and port.
        let key = match self.by_sock.get(&sk) {
            Some(k) if sk != 0 => Some(*k),
            _ if sk == 0 => self.by_client.get(&(hop.src(), hop.pkt.sport)).copied(),
            _ => None,
        };
        match key.filter(|k| self.open.contains_key(k)) {
            Some(k) => {
                let d = decision(&hop);
                let ts = hop.ts_ns;
                let Some(j) = self.open.get_mut(&k) else { return };
                if j.decided_at.is_some() && d == Decision::None {
                    return;
                }
                j.push(Leg::Control, hop);
                j.settle(d, ts);
            }
            None if self.finished_sock.contains_key(&sk) || key.is_some() => {}
            None => self.park_socket_event(sk, hop),
        }
    }

    /// Keeps a socket event until its SYN shows up (bounded: a flood of sockets that never
    /// send a SYN on the path must not grow the tracer).
    fn park_socket_event(&mut self, sk: u64, hop: Hop) {
        if self.pending_sock.len() >= MAX_PENDING && !self.pending_sock.contains_key(&sk) {
            return;
        }
        let hops = self.pending_sock.entry(sk).or_default();
        if hops.len() < 16 {
            hops.push(hop);
        }
    }

    fn push_route(&mut self, hop: Hop) {
        let dst = hop.dst();
        let recent = hop.ts_ns.saturating_sub(self.timing.pending_ns);
        // The journey whose packet is being routed: same destination, same namespace, recent.
        let target = self.open.values_mut().filter(|j| j.last_ns >= recent).find(|j| {
            j.hops
                .iter()
                .rev()
                .find(|(l, h)| *l != Leg::Control && h.is_packet())
                .is_some_and(|(_, h)| h.dst() == dst && (h.netns == hop.netns || hop.netns == 0))
        });
        match target {
            Some(j) => j.push(Leg::Control, hop),
            None if self.pending_route.len() < MAX_PENDING => self.pending_route.push(hop),
            None => {}
        }
    }

    fn push_neigh(&mut self, hop: Hop) {
        let recent = hop.ts_ns.saturating_sub(3_000_000_000);
        for j in self.open.values_mut() {
            if j.last_ns >= recent
                && j.hops
                    .iter()
                    .any(|(l, h)| *l == Leg::Request && h.netns == hop.netns)
            {
                j.push(Leg::Control, hop.clone());
            }
        }
    }

    /// Journeys that are finished at `now_ns` (monotonic).
    pub fn take_due(&mut self, now_ns: u64) -> Vec<Journey> {
        self.expire(now_ns);
        let t = self.timing;
        let due: Vec<ConnKey> = self
            .open
            .iter()
            .filter(|(_, j)| match (j.decided_at, j.closed_at) {
                (Some(d), _) => now_ns >= d + t.settle_ns,
                (None, Some(c)) => now_ns >= c + t.late_ns.max(t.settle_ns),
                (None, None) => now_ns >= j.last_ns + t.quiet_ns,
            })
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            self.close_out(k, now_ns);
        }
        let mut out = std::mem::take(&mut self.ready);
        out.sort_by_key(|j| j.first_ns);
        out
    }

    /// A connect() from namespace `netns` to `dst:port` failed at once with `errno` (the
    /// client says so; no packet exists). The route lookups that failed on the way are its
    /// evidence.
    pub fn connect_failed(&mut self, netns: u32, dst: Ipv4Addr, port: u16, errno: i32, at_ns: u64) {
        let mut j = Journey::new(
            JourneyId::NotSent {
                netns,
                dst,
                port,
                errno,
                at_ns,
            },
            at_ns,
        );
        j.target = Some((dst, port));
        let (routes, rest): (Vec<Hop>, Vec<Hop>) = std::mem::take(&mut self.pending_route)
            .into_iter()
            .partition(|r| r.dst() == dst);
        self.pending_route = rest;
        for r in routes {
            j.push(Leg::Control, r);
        }
        j.decide(at_ns);
        self.ready.push(j);
    }

    /// Everything still open (at exit).
    /// Journeys whose end is known (a drop, a reset, a connection, a late reply) before
    /// their settle time has passed, with the ones already due: what a stopping trace still
    /// reports. Open attempts stay ([`Correlator::open_count`]).
    pub fn take_decided(&mut self, now_ns: u64) -> Vec<Journey> {
        let decided: Vec<ConnKey> = self
            .open
            .iter()
            .filter(|(_, j)| j.decided_at.is_some())
            .map(|(k, _)| *k)
            .collect();
        for k in decided {
            self.close_out(k, now_ns);
        }
        self.take_due(now_ns)
    }

    pub fn take_all(&mut self) -> Vec<Journey> {
        self.expire(u64::MAX);
        let mut out = std::mem::take(&mut self.ready);
        out.extend(self.open.drain().map(|(_, j)| j));
        out.sort_by_key(|j| j.first_ns);
        out
    }

    /// Drops stale bookkeeping; route failures nobody claimed become no-route journeys.
    fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(self.timing.pending_ns);
        let (old, keep): (Vec<Hop>, Vec<Hop>) = std::mem::take(&mut self.pending_route)
            .into_iter()
            .partition(|r| r.ts_ns < cutoff);
        self.pending_route = keep;
        for r in old {
            if let HopKind::Route { table, error, .. } = r.kind
                && is_route_failure(table, error)
            {
                let mut j = Journey::new(
                    JourneyId::NoRoute {
                        netns: r.netns,
                        dst: r.dst(),
                        at_ns: r.ts_ns,
                    },
                    r.ts_ns,
                );
                j.target = Some((r.dst(), 0));
                j.push(Leg::Control, r);
                self.ready.push(j);
            }
        }
        self.pending_sock.retain(|_, hops| {
            hops.last()
                .is_some_and(|h| h.ts_ns >= cutoff.saturating_sub(1_000_000_000))
        });
        // Late events of reported attempts come for a few seconds (ARP gives up after 3 s).
        let keep_finished = now_ns.saturating_sub(10_000_000_000);
        self.finished.retain(|_, t| *t >= keep_finished);
        self.finished_sock.retain(|_, t| *t >= keep_finished);
        cap_by_age(&mut self.finished, MAX_FINISHED);
        cap_by_age(&mut self.finished_sock, MAX_FINISHED);
        let keep_neigh = now_ns.saturating_sub(60_000_000_000);
        self.neigh.retain(|_, (_, t)| *t >= keep_neigh);
    }
}

/// Keeps the `cap` newest entries of a map of timestamps.
fn cap_by_age<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, cap: usize) {
    if map.len() <= cap {
        return;
    }
    let mut times: Vec<u64> = map.values().copied().collect();
    times.sort_unstable();
    let cut = times[times.len() - cap];
    map.retain(|_, t| *t >= cut);
}

/// What a socket event says about the attempt: connected or reset decides it; a close from
/// SYN_SENT means the client gave up, and a late reply may still come.
fn decision(h: &Hop) -> Decision {
    match h.kind {
        HopKind::Socket {
            new_state: TCP_ESTABLISHED,
            ..
        }
        | HopKind::RecvReset => Decision::Hard,
        HopKind::Socket {
            old_state: TCP_SYN_SENT,
            new_state: TCP_CLOSE,
            ..
        } => Decision::ClientGaveUp,
        _ => Decision::None,
    }
}

/// True when a fib lookup event means "no route" (not the per-table miss before the next
/// table is tried).
pub fn is_route_failure(table: u32, error: i32) -> bool {
    error != 0 && (error != FIB_NO_MATCH || table == RT_TABLE_MAIN)
}

#[cfg(test)]
pub mod tests {
    use tracer_common::tcp_flag;

    use super::*;
    use crate::{fixtures::*, hook::Hook};

    fn sock_hop(ts: u64, old: u32, new: u32) -> Hop {
        hop(
            ts,
            "e2b-host",
            "",
            sock(old, new),
            pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
        )
    }

    #[test]
    fn a_reused_socket_address_does_not_carry_an_older_attempts_events() {
        let mut c = Correlator::new(&[49983], Timing::default());
        // The end of an attempt whose SYN was never seen (it began before the tracer looked).
        c.push(sock_hop(1, TCP_SYN_SENT, TCP_CLOSE));
        // The next attempt's socket gets the same address.
        c.push(sock_hop(10, TCP_CLOSE, TCP_SYN_SENT));
        c.push(hop(
            11,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        let j = c.take_all().remove(0);
        let states: Vec<u32> = j
            .hops
            .iter()
            .filter_map(|(_, h)| match h.kind {
                HopKind::Socket { new_state, .. } => Some(new_state),
                _ => None,
            })
            .collect();
        assert_eq!(states, [TCP_SYN_SENT], "{:?}", j.hops);
    }

    /// A followed skb keeps its journey across a port rewrite; the same address reused for a
    /// data packet (the first was freed where no event showed it) does not join the journey.
    #[test]
    fn a_followed_skb_joins_across_rewrites_but_not_once_reused_for_data() {
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(hop(
            1,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        // REDIRECT to another port: same skb, port no longer 49983.
        let redirected = pkt("10.12.0.2", 40000, "10.11.0.1", 1, tcp_flag::SYN, 1000, 0);
        c.push(hop(2, "ns-1", "eth0", HopKind::Receive, redirected));
        // The skb address reused for data with garbage ports.
        let data = pkt(
            "10.12.0.2",
            12592,
            "169.254.0.21",
            11825,
            tcp_flag::PSH | tcp_flag::ACK,
            7,
            7,
        );
        c.push(hop(3, "ns-1", "tap0", HopKind::Xmit, data));
        let j = c.take_all().remove(0);
        let ts: Vec<u64> = j.hops.iter().map(|(_, h)| h.ts_ns).collect();
        assert_eq!(ts, [1, 2], "{:?}", j.hops);
    }

    /// SNAT on the host side: the SYN seen before it (the socket's, at OUTPUT) and after it
    /// (same skb, same ISN, another source), and the reply addressed to the rewritten source,
    /// are one attempt, under the client's own key.
    #[test]
    fn a_snat_of_the_client_side_stays_in_its_attempt() {
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(sock_hop(1, 7, TCP_SYN_SENT));
        c.push(hop(2, "e2b-host", "", nf(Hook::Output, 0), syn()));
        let snat = pkt("10.99.0.1", 40000, "10.11.0.1", 49983, tcp_flag::SYN, 1000, 0);
        c.push(hop(
            3,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            snat,
        ));
        let mut reply = syn_ack_guest();
        reply.daddr = crate::fixtures::ip("10.99.0.1");
        let mut back = hop(4, "ns-1", "tap0", HopKind::Tcx { ingress: true }, reply);
        back.skb = 0xffff_8880_0000_2000;
        c.push(back);
        let all = c.take_all();
        assert_eq!(all.len(), 1, "{all:?}");
        let j = &all[0];
        assert_eq!(j.client(), Some(("10.12.0.2".parse().unwrap(), 40000)));
        assert_eq!(j.hops.len(), 4, "{:?}", j.hops);
        assert_eq!(j.leg(Leg::Reply).count(), 1);
    }

    #[test]
    fn request_and_reply_meet_across_nat() {
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(sock_hop(1, 7, TCP_SYN_SENT));
        c.push(hop(
            2,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        c.push(hop(3, "ns-1", "eth0", nf(Hook::Forward, 0), syn_dnat()));
        c.push(hop(
            4,
            "ns-1",
            "tap0",
            HopKind::Tcx { ingress: true },
            syn_ack_guest(),
        ));
        c.push(sock_hop(5, TCP_SYN_SENT, TCP_ESTABLISHED));
        assert!(c.take_due(5).is_empty(), "settling");
        let done = c.take_due(5 + Timing::default().settle_ns);
        assert_eq!(done.len(), 1);
        let j = &done[0];
        assert_eq!(
            j.hops.len(),
            5,
            "socket start, request, NATed request, reply, established"
        );
        assert_eq!(j.leg(Leg::Reply).count(), 1);
        assert_eq!(j.target, Some(("10.11.0.1".parse().unwrap(), 49983)));
    }

    #[test]
    fn an_unbound_socket_is_tied_to_its_syn_by_address() {
        // connect() without bind: the socket has no port yet when it enters SYN_SENT, and
        // the kernel reports port 0 when it closes.
        let t = Timing::default();
        let mut c = Correlator::new(&[49983], t);
        let portless = pkt("10.12.0.2", 0, "10.11.0.1", 49983, 0, 0, 0);
        let mut start = hop(1, "e2b-host", "", sock(7, TCP_SYN_SENT), portless);
        start.sk = 0xabc;
        c.push(start);
        let mut out = hop(2, "e2b-host", "veth-1", HopKind::Tcx { ingress: false }, syn());
        out.sk = 0xabc;
        c.push(out);
        let mut close = hop(3, "e2b-host", "", sock(TCP_SYN_SENT, TCP_CLOSE), portless);
        close.sk = 0xabc;
        c.push(close);
        assert!(
            c.take_due(3 + t.settle_ns).is_empty(),
            "a client that gave up may still get a late reply"
        );
        let done = c.take_due(3 + t.late_ns);
        assert_eq!(
            done.len(),
            1,
            "finished by the late window after the close, not by the quiet timeout"
        );
        assert_eq!(done[0].hops.len(), 3);
        assert_eq!(done[0].closed_at, Some(3));
    }

    #[test]
    fn a_late_reply_joins_the_attempt_and_its_drop_decides_it() {
        let t = Timing::default();
        let mut c = Correlator::new(&[49983], t);
        c.push(hop(
            1,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        c.push(sock_hop(50_000_000, TCP_SYN_SENT, TCP_CLOSE));
        c.push(hop(
            80_000_000,
            "ns-1",
            "tap0",
            HopKind::Tcx { ingress: true },
            syn_ack_guest(),
        ));
        let mut dropped = syn_ack_guest();
        dropped.saddr = ip("10.11.0.1");
        c.push(hop(
            80_100_000,
            "e2b-host",
            "veth-1",
            HopKind::Drop {
                reason: crate::reason::DropReason::new("NO_SOCKET"),
            },
            dropped,
        ));
        let done = c.take_due(80_100_000 + t.settle_ns);
        assert_eq!(
            done.len(),
            1,
            "the reply's fate decides it before the window ends"
        );
        assert_eq!(done[0].leg(Leg::Reply).count(), 2);
    }

    #[test]
    fn tables_stay_bounded() {
        let mut c = Correlator::new(&[49983], Timing::default());
        for port in 0..(MAX_OPEN as u32 + 100) {
            let mut p = syn();
            p.sport = (port % 60000) as u16 + 1;
            p.saddr = port;
            p.seq = port;
            c.push(hop(
                port as u64 + 1,
                "e2b-host",
                "veth-1",
                HopKind::Tcx { ingress: false },
                p,
            ));
        }
        assert!(c.open_count() <= MAX_OPEN);
        assert_eq!(
            c.take_all().len(),
            MAX_OPEN + 100,
            "none is lost, the oldest finish early"
        );
    }

    #[test]
    fn a_second_client_is_a_separate_journey() {
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(hop(
            1,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        let other = pkt("10.12.0.4", 40000, "10.11.0.2", 49983, tcp_flag::SYN, 1000, 0);
        c.push(hop(
            2,
            "e2b-host",
            "veth-2",
            HopKind::Tcx { ingress: false },
            other,
        ));
        assert_eq!(c.open_count(), 2);
    }

    #[test]
    fn quiet_journeys_finish_and_late_packets_are_ignored() {
        let t = Timing::default();
        let mut c = Correlator::new(&[49983], t);
        c.push(hop(
            1,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        assert_eq!(c.take_due(1 + t.quiet_ns).len(), 1);
        // A FIN of that client afterwards opens nothing.
        let fin = pkt(
            "10.12.0.2",
            40000,
            "10.11.0.1",
            49983,
            tcp_flag::FIN | tcp_flag::ACK,
            1001,
            1,
        );
        c.push(hop(
            2 + t.quiet_ns,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            fin,
        ));
        assert_eq!(c.open_count(), 0);
    }

    #[test]
    fn unclaimed_route_failure_is_a_no_route_journey() {
        let t = Timing::default();
        let mut c = Correlator::new(&[49983], t);
        let r = hop(
            1,
            "e2b-host",
            "",
            HopKind::Route {
                table: 254,
                error: -11,
                iif: 1,
            },
            pkt("0.0.0.0", 0, "10.11.0.1", 0, 0, 0, 0),
        );
        c.push(r);
        let done = c.take_due(1 + t.pending_ns + 1);
        assert_eq!(done.len(), 1);
        assert!(matches!(done[0].id, JourneyId::NoRoute { .. }));
    }

    #[test]
    fn route_failure_rules() {
        assert!(
            !is_route_failure(255, -11),
            "local table miss: the main table is next"
        );
        assert!(is_route_failure(254, -11));
        assert!(is_route_failure(254, -101));
        assert!(!is_route_failure(254, 0));
    }
}
