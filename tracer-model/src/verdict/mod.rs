//! The verdict engine: one outcome per journey, compared with the sandbox's expected path.
//! Plain logic over recorded journeys, tested from fixtures without root. A verdict is typed
//! data and final when [`decide`] returns it; the sentences people read are written from it by
//! the output layer.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

mod outcome;

use crate::{
    facts::{FactUsed, ReadFacts, ReaderFact},
    hook::Hook,
    journey::Journey,
    path::ExpectedPath,
    reason::DropReason,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The SYN-ACK reached the orchestrator's socket.
    Connected,
    /// A packet was dropped; `drop` says where and why.
    Dropped,
    /// A RST came back; `reset` says from whom.
    Reset,
    /// The VMM read the SYN from the tap and nothing came back.
    NoReply,
    /// The SYN waits in a queue no one empties: the tap's (the VMM does not read it) or a
    /// device's (a stopped queue discipline).
    Queued,
    /// A reply came, after the client had given up: the path works, the guest is slow.
    Late,
    /// No route, or the neighbour (ARP) was never resolved.
    Unreachable,
    /// The attempt went to another sandbox (its namespace, devices or VMM), not the one asked
    /// about: never `connected`, even when that other sandbox answered.
    Misdirected,
    /// The events do not decide it (e.g. the packet vanished where no probe sees it).
    Unknown,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Dropped => "dropped",
            Self::Reset => "reset",
            Self::NoReply => "no_reply",
            Self::Queued => "queued",
            Self::Late => "late",
            Self::Unreachable => "unreachable",
            Self::Misdirected => "misdirected",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Request,
    Reply,
}

/// Where and why a packet died, as the events show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DropInfo {
    pub direction: Direction,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// The device the packet was routed to, when the drop happened after routing.
    pub out_device: Option<String>,
    pub hook: Option<Hook>,
    /// The standard table whose priority is the only one in `priority_window`.
    pub table: Option<String>,
    pub reason: DropReason,
    pub function: Option<String>,
    pub location: Option<String>,
    /// Netfilter priorities between which the packet stopped.
    pub priority_window: Option<(i32, i32)>,
}

/// Who sent a RST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetBy {
    /// The VM answered RST.
    Guest,
    /// A namespace's own TCP stack did (the SYN was delivered locally).
    Stack,
    /// Someone else on the reply path.
    Peer,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResetInfo {
    pub by: ResetBy,
    pub netns: Option<String>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreachableKind {
    /// No route (ENETUNREACH, EHOSTUNREACH).
    NoRoute,
    /// ARP for the next hop was never answered.
    Neighbour,
    /// Forbidden locally: a prohibit route or rule, or the local firewall (EACCES, EPERM).
    Prohibited,
    /// A blackhole route or rule (EINVAL).
    Blackhole,
    /// The route leads off the sandbox's host side (another device, a local address): a
    /// probe was not sent.
    RoutedElsewhere,
    /// The sandbox's host side could not be verified (no veth leading out, its peer gone or
    /// moved): nothing was sent or attached there.
    HostSideUnknown,
}

impl UnreachableKind {
    /// From the errno of a failed connect() or route lookup.
    pub fn from_errno(errno: i32) -> Self {
        const EPERM: i32 = 1;
        const EACCES: i32 = 13;
        const EINVAL: i32 = 22;
        match errno.saturating_abs() {
            EPERM | EACCES => Self::Prohibited,
            EINVAL => Self::Blackhole,
            _ => Self::NoRoute,
        }
    }
}

/// The name of an errno the routing and connect paths return.
pub fn errno_name(errno: i32) -> String {
    match errno.saturating_abs() {
        1 => "EPERM".into(),
        11 => "EAGAIN".into(),
        13 => "EACCES".into(),
        22 => "EINVAL".into(),
        101 => "ENETUNREACH".into(),
        111 => "ECONNREFUSED".into(),
        113 => "EHOSTUNREACH".into(),
        n => format!("errno {n}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnreachableInfo {
    pub kind: UnreachableKind,
    pub address: Ipv4Addr,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// Neighbour state (INCOMPLETE, FAILED) or the neighbour drop reason, for `Neighbour`.
    pub state: Option<String>,
    /// The error the client or the route lookup got (EACCES, ENETUNREACH ...).
    pub errno: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The SYN passed the sandbox namespace's nat table without being DNATed.
    NoDnat,
    /// The host sent the SYN out another sandbox's veth.
    WrongRoute,
    /// The SYN entered a namespace that is not on the path.
    OtherNamespace,
    /// The sandbox namespace routed the SYN back out instead of to the guest.
    RoutedBack,
    /// The SYN circled until its TTL ran out.
    RoutingLoop,
}

impl FindingKind {
    /// Findings that caused what followed, not just an observation of it.
    pub fn is_cause(self) -> bool {
        matches!(self, Self::NoDnat | Self::WrongRoute)
    }
}

/// Something the journey shows beyond the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    pub kind: FindingKind,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub hook: Option<Hook>,
    pub table: Option<String>,
    /// The SYN's destination where the finding was made.
    pub address: Option<Ipv4Addr>,
    /// The lowest TTL seen (routing loops).
    pub ttl: Option<u8>,
}

/// What sent the attempt to another sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisdirectedBy {
    /// The host side's route (read with a route get before a probe; nothing was sent).
    Route,
    /// The attempt's packets were seen there.
    Events,
}

/// Where an attempt went instead of its sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MisdirectedInfo {
    pub by: MisdirectedBy,
    /// The namespace it went to, and the device it entered by (or would have).
    pub netns: Option<String>,
    pub device: Option<String>,
    /// The device it left the host side by.
    pub out_device: Option<String>,
    /// The sandbox that runs there, when known.
    pub sandbox_id: Option<String>,
    /// It was answered there (the other sandbox's envd connected it).
    pub answered: bool,
}

/// Where a packet waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// The tap's ring: only the VMM's read() empties it.
    Tap,
    /// A device's queue discipline that does not send.
    Qdisc,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueuedInfo {
    pub queue: QueueKind,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// The process that should read the tap, as /proc showed it at decision time (None: no
    /// process holds it).
    pub reader: Option<ReaderFact>,
}

/// What a late reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    SynAck,
    Rst,
}

/// What became of a late reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LateFate {
    /// Dropped (typically NO_SOCKET: the client's socket is gone).
    Dropped {
        reason: DropReason,
        netns: Option<String>,
        device: Option<String>,
    },
    /// A stack answered it with RST (the client's, whose socket is gone).
    ResetBy { netns: Option<String> },
}

/// A reply that came after the client gave up.
#[derive(Debug, Clone, PartialEq)]
pub struct LateInfo {
    pub reply: ReplyKind,
    /// From the SYN to the reply's first hop.
    pub reply_ms: f64,
    /// From the SYN to the client giving up (its timeout).
    pub timeout_ms: f64,
    /// From the client giving up to the reply.
    pub after_timeout_ms: f64,
    pub fate: Option<LateFate>,
    /// Where the time went, when the SYN's last sighting and the reply's first are on one
    /// device of one namespace (the guest's edge, its tap): None when they are not, and then
    /// nothing is said of who was slow.
    pub split: Option<LateSplit>,
}

/// A late reply's time, on either side of the guest's edge.
#[derive(Debug, Clone, PartialEq)]
pub struct LateSplit {
    /// From the SYN to its last sighting (where it reached the guest's edge).
    pub to_guest_ms: f64,
    /// From there to the reply's first sighting at the same device.
    pub guest_ms: f64,
    /// The request's longest wait between two of its hops: how long, and where it was
    /// before it went on (namespace label, device).
    pub waited: Option<(f64, String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub drop: Option<DropInfo>,
    pub reset: Option<ResetInfo>,
    pub unreachable: Option<UnreachableInfo>,
    pub queued: Option<QueuedInfo>,
    pub late: Option<LateInfo>,
    pub misdirected: Option<MisdirectedInfo>,
    /// From the SYN to the first reply seen (connected, reset and late attempts).
    pub reply_ms: Option<f64>,
    /// Facts read at decision time that the verdict rests on.
    pub facts: Vec<FactUsed>,
    pub findings: Vec<Finding>,
    /// The finding that caused the outcome (no DNAT, a wrong route), when there is one: the
    /// place to fix, which may differ from where the packet finally died.
    pub cause: Option<Finding>,
    /// Index into the journey's hops of the hop where it went wrong.
    pub failing_hop: Option<usize>,
    /// The first hop where the packet differed from its path, and how: the cause's place.
    pub divergence: Option<crate::engine::Divergence>,
    /// Who acted there (or at the effect's place when nothing differed before it).
    pub actors: Vec<crate::engine::Actor>,
}

impl Verdict {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            drop: None,
            reset: None,
            unreachable: None,
            queued: None,
            late: None,
            misdirected: None,
            reply_ms: None,
            facts: Vec::new(),
            findings: Vec::new(),
            cause: None,
            failing_hop: None,
            divergence: None,
            actors: Vec::new(),
        }
    }
}

/// Decides the outcome of one journey, from its events and the facts read now.
pub fn decide(j: &Journey, path: Option<&ExpectedPath>, facts: &ReadFacts) -> Verdict {
    let mut v = outcome::outcome(j, path, facts);
    v.reply_ms = outcome::reply_ms(j);
    // Connected by the handshake, yet the client's request got no answer: the tracer does
    // not follow data packets, so it does not say the path works.
    if v.outcome == Outcome::Connected && facts.request_unanswered {
        v.outcome = Outcome::Unknown;
        v.facts.push(FactUsed::RequestUnanswered);
    }
    if let Some(why) = &facts.not_followed {
        v.facts.push(FactUsed::NotFollowed(why.clone()));
    }
    if let Some(p) = path {
        crate::engine::cause::explain(j, p, facts, &mut v);
    }
    v
}

/// True when the journey connected (nothing needs to be read to judge it).
pub fn is_connected(j: &Journey) -> bool {
    outcome::connected(j).is_some()
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp_flag;

    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        facts::{LinkFact, NeighFact, ReaderFact, RouteBlock},
        fixtures::{hop, nf, ns_inode, path, pkt, sock, syn, syn_ack_guest, syn_dnat},
        hop::{Hop, HopKind},
        journey::{Correlator, Timing},
        reason::DropReason,
        tcp::{NUD_INCOMPLETE, TCP_CLOSE, TCP_SYN_SENT},
    };

    fn journey(hops: Vec<Hop>) -> Journey {
        let mut c = Correlator::new(&[49983], Timing::default());
        for h in hops {
            c.push(h);
        }
        let mut all = c.take_all();
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn none() -> ReadFacts {
        ReadFacts::default()
    }

    fn out_syn(ts: u64) -> Hop {
        hop(ts, "e2b-host", "veth-1", HopKind::Tcx { ingress: false }, syn())
    }

    fn nf_at(ts: u64, hook: Hook, slot: u8, p: tracer_common::Packet, out: Option<&str>) -> Hop {
        let mut h = hop(ts, "ns-1", "eth0", nf(hook, slot), p);
        if let HopKind::Netfilter { in_dev, out_dev, .. } = &mut h.kind {
            *in_dev = Some("eth0".into());
            *out_dev = out.map(str::to_string);
        }
        h
    }

    #[test]
    fn connected_when_the_socket_is_established() {
        let j = journey(vec![
            hop(
                1,
                "e2b-host",
                "",
                sock(7, TCP_SYN_SENT),
                pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
            ),
            out_syn(2),
            hop(3, "ns-1", "tap0", HopKind::Tcx { ingress: true }, syn_ack_guest()),
            hop(
                4,
                "e2b-host",
                "",
                sock(TCP_SYN_SENT, 1),
                pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
            ),
        ]);
        assert_eq!(decide(&j, Some(&path()), &none()).outcome, Outcome::Connected);
    }

    #[test]
    fn forward_drop_names_hook_table_and_devices() {
        let mut drop = hop(
            6,
            "ns-1",
            "eth0",
            HopKind::Drop {
                reason: DropReason::new("NETFILTER_DROP"),
            },
            syn_dnat(),
        );
        drop.function = Some("nf_hook_slow".into());
        let j = journey(vec![
            out_syn(1),
            nf_at(2, Hook::Prerouting, 8, syn_dnat(), None),
            nf_at(3, Hook::Forward, 0, syn_dnat(), Some("tap0")),
            nf_at(4, Hook::Forward, 3, syn_dnat(), Some("tap0")),
            nf_at(5, Hook::Forward, 4, syn_dnat(), Some("tap0")),
            drop,
        ]);
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Dropped);
        let d = v.drop.unwrap();
        assert_eq!(d.direction, Direction::Request);
        assert_eq!(d.netns.as_deref(), Some("ns-1"));
        assert_eq!(d.hook, Some(Hook::Forward));
        assert_eq!(d.table.as_deref(), Some("filter"));
        assert_eq!(
            (d.device.as_deref(), d.out_device.as_deref()),
            (Some("eth0"), Some("tap0"))
        );
        assert_eq!(d.function.as_deref(), Some("nf_hook_slow"));
    }

    #[test]
    fn reply_drop_has_the_reply_direction() {
        let mut reply = syn_ack_guest();
        reply.saddr = crate::fixtures::ip("169.254.0.21");
        let j = journey(vec![
            out_syn(1),
            hop(2, "ns-1", "tap0", HopKind::Tcx { ingress: true }, reply),
            hop(
                3,
                "ns-1",
                "tap0",
                HopKind::Drop {
                    reason: DropReason::new("NETFILTER_DROP"),
                },
                reply,
            ),
        ]);
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Dropped);
        assert_eq!(v.drop.unwrap().direction, Direction::Reply);
    }

    #[test]
    fn guest_rst_is_a_reset_by_the_guest() {
        let rst = pkt(
            "169.254.0.21",
            49983,
            "10.12.0.2",
            40000,
            tcp_flag::RST | tcp_flag::ACK,
            0,
            1001,
        );
        let j = journey(vec![
            out_syn(1),
            hop(2, "ns-1", "tap0", HopKind::Tcx { ingress: true }, rst),
        ]);
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Reset);
        let r = v.reset.unwrap();
        assert_eq!((r.by, r.netns.as_deref()), (ResetBy::Guest, Some("ns-1")));
        // The same RST dropped on its way back (a qdisc on eth0): the client never saw it,
        // the drop decides.
        let mut j = j;
        let mut dropped = hop(
            3,
            "ns-1",
            "eth0",
            HopKind::Drop {
                reason: DropReason::new("QDISC_DROP"),
            },
            rst,
        );
        dropped.skb = j.hops[1].1.skb;
        j.hops.push((crate::journey::Leg::Reply, dropped));
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Dropped, "{v:?}");
        assert_eq!(
            v.drop.map(|d| d.reason.name().to_string()).as_deref(),
            Some("QDISC_DROP")
        );
    }

    /// The guest's own RST walks the reply path like a SYN-ACK: where it strays off the path
    /// is a difference (a RST made on the way is not walked).
    #[test]
    fn the_guests_rst_is_walked_along_the_reply_path() {
        let rst = pkt(
            "169.254.0.21",
            49983,
            "10.12.0.2",
            40000,
            tcp_flag::RST | tcp_flag::ACK,
            0,
            1001,
        );
        let j = journey(vec![
            out_syn(1),
            hop(2, "ns-1", "tap0", HopKind::Consumed, syn_dnat()),
            hop(3, "ns-1", "tap0", HopKind::Tcx { ingress: true }, rst),
            hop(
                4,
                "ns-1",
                "lo",
                HopKind::Drop {
                    reason: DropReason::new("OTHERHOST"),
                },
                rst,
            ),
        ]);
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Dropped, "{v:?}");
        let d = v.divergence.as_ref().expect("the RST strayed onto lo");
        assert_eq!(
            (d.leg, d.hop, d.field),
            (crate::journey::Leg::Reply, 3, crate::engine::Field::Device),
            "{d:?}"
        );
    }

    #[test]
    fn stack_rst_names_the_namespace() {
        let j = journey(vec![
            out_syn(1),
            hop(
                2,
                "ns-1",
                "eth0",
                HopKind::SendReset {
                    reason: "NO_SOCKET".into(),
                },
                syn(),
            ),
            hop(
                3,
                "ns-1",
                "eth0",
                HopKind::Drop {
                    reason: DropReason::new("NO_SOCKET"),
                },
                syn(),
            ),
        ]);
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Reset);
        assert_eq!(v.reset.unwrap().by, ResetBy::Stack);
    }

    #[test]
    fn only_a_read_from_the_tap_is_no_reply() {
        let read = |with_read: bool| {
            let mut hops = vec![out_syn(1), hop(2, "ns-1", "tap0", HopKind::Xmit, syn_dnat())];
            if with_read {
                hops.push(hop(3, "ns-1", "tap0", HopKind::Consumed, syn_dnat()));
            }
            decide(&journey(hops), Some(&path()), &none()).outcome
        };
        assert_eq!(read(true), Outcome::NoReply);
        assert_eq!(
            read(false),
            Outcome::Queued,
            "sent to the tap is not read by the VMM"
        );
    }

    #[test]
    fn silence_after_the_tap_is_no_reply() {
        let j = journey(vec![
            out_syn(1),
            hop(2, "ns-1", "tap0", HopKind::Xmit, syn_dnat()),
            hop(3, "ns-1", "tap0", HopKind::Consumed, syn_dnat()),
            hop(
                4,
                "e2b-host",
                "",
                sock(TCP_SYN_SENT, TCP_CLOSE),
                pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
            ),
        ]);
        assert_eq!(decide(&j, Some(&path()), &none()).outcome, Outcome::NoReply);
    }

    #[test]
    fn unresolved_arp_in_front_of_the_tap_is_unreachable() {
        let j = journey(vec![
            out_syn(1),
            nf_at(2, Hook::Postrouting, 8, syn_dnat(), Some("tap0")),
        ]);
        let facts = ReadFacts {
            neighbours: vec![NeighFact {
                netns: ns_inode("ns-1"),
                device: "tap0".into(),
                address: "169.254.0.21".parse().unwrap(),
                state: NUD_INCOMPLETE,
                mac: None,
            }],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(v.outcome, Outcome::Unreachable);
        let u = v.unreachable.unwrap();
        assert_eq!(
            (u.kind, u.device.as_deref(), u.state.as_deref()),
            (UnreachableKind::Neighbour, Some("tap0"), Some("INCOMPLETE"))
        );
        assert!(v.facts.contains(&FactUsed::NoReader), "{:?}", v.facts);
    }

    #[test]
    fn unresolved_arp_on_the_host_side_names_the_veth_and_its_peer() {
        let j = journey(vec![hop(
            1,
            "e2b-host",
            "veth-1",
            nf(Hook::Postrouting, 8),
            syn(),
        )]);
        let facts = ReadFacts {
            neighbours: vec![NeighFact {
                netns: ns_inode("e2b-host"),
                device: "veth-1".into(),
                address: "10.12.0.3".parse().unwrap(),
                state: NUD_INCOMPLETE,
                mac: None,
            }],
            links: vec![
                LinkFact {
                    netns: ns_inode("e2b-host"),
                    name: "veth-1".into(),
                    up: true,
                    carrier: false,
                    mac: None,
                },
                LinkFact {
                    netns: ns_inode("ns-1"),
                    name: "eth0".into(),
                    up: false,
                    carrier: false,
                    mac: None,
                },
            ],
            reader: None,
            route_blocks: Vec::new(),
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(v.outcome, Outcome::Unreachable);
        let u = v.unreachable.as_ref().unwrap();
        assert_eq!(
            (u.address, u.device.as_deref()),
            ("10.12.0.3".parse::<Ipv4Addr>().unwrap(), Some("veth-1"))
        );
        let links: Vec<&str> = v
            .facts
            .iter()
            .filter_map(|f| match f {
                FactUsed::Link(l) => Some(l.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(links, ["veth-1", "eth0"], "the carrier and the peer that took it");
    }

    #[test]
    fn a_tap_nobody_reads_holds_the_syn() {
        let j = journey(vec![
            out_syn(1),
            hop(2, "ns-1", "tap0", HopKind::Xmit, syn_dnat()),
            hop(
                50_000_000,
                "e2b-host",
                "",
                sock(TCP_SYN_SENT, TCP_CLOSE),
                pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
            ),
        ]);
        let stopped = ReaderFact {
            pid: 42,
            comm: "firecracker".into(),
            state: 'T',
            holds_tap: true,
        };
        let facts = ReadFacts {
            reader: Some(stopped.clone()),
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(v.outcome, Outcome::Queued);
        let q = v.queued.unwrap();
        assert_eq!((q.queue, q.device.as_deref()), (QueueKind::Tap, Some("tap0")));
        assert_eq!(q.reader, Some(stopped));
    }

    #[test]
    fn a_reply_after_the_client_gave_up_is_late() {
        let mut late_reply = syn_ack_guest();
        late_reply.saddr = crate::fixtures::ip("10.11.0.1");
        let j = journey(vec![
            out_syn(0),
            hop(100_000, "ns-1", "tap0", HopKind::Consumed, syn_dnat()),
            hop(
                50_000_000,
                "e2b-host",
                "",
                sock(TCP_SYN_SENT, TCP_CLOSE),
                pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
            ),
            hop(
                80_000_000,
                "ns-1",
                "tap0",
                HopKind::Tcx { ingress: true },
                syn_ack_guest(),
            ),
            hop(
                80_200_000,
                "e2b-host",
                "veth-1",
                HopKind::Drop {
                    reason: DropReason::new("NO_SOCKET"),
                },
                late_reply,
            ),
        ]);
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Late, "{v:?}");
        let l = v.late.unwrap();
        assert_eq!(
            (l.reply, l.reply_ms, l.timeout_ms, l.after_timeout_ms),
            (ReplyKind::SynAck, 80.0, 50.0, 30.0)
        );
        // Both sightings are on the tap: the time was the guest's.
        let s = l.split.as_ref().expect("split");
        assert!(s.guest_ms > s.to_guest_ms, "{s:?}");
        assert!(matches!(l.fate, Some(LateFate::Dropped { ref reason, .. }) if reason.name() == "NO_SOCKET"));
        // The same reply before the client gave up connects it.
        assert_eq!(v.reply_ms, Some(80.0));
    }

    /// The SYN waited on the way (here 70 ms before the host's veth sent it on, as while a
    /// neighbour is resolved) and the guest answered at once: the time is the path's, and the
    /// split says where it waited; without a sighting at the guest's edge there is no split.
    #[test]
    fn a_late_reply_says_where_the_time_went() {
        let late = |edge: bool| {
            let mut j = vec![
                out_syn(0),
                hop(70_000_000, "ns-1", "eth0", HopKind::Receive, syn()),
                hop(70_100_000, "ns-1", "tap0", HopKind::Consumed, syn_dnat()),
                hop(
                    50_000_000,
                    "e2b-host",
                    "",
                    sock(TCP_SYN_SENT, TCP_CLOSE),
                    pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
                ),
                hop(
                    70_400_000,
                    "ns-1",
                    "tap0",
                    HopKind::Tcx { ingress: true },
                    syn_ack_guest(),
                ),
            ];
            if !edge {
                j.remove(2);
            }
            decide(&journey(j), Some(&path()), &none())
        };
        let v = late(true);
        assert_eq!(v.outcome, Outcome::Late, "{v:?}");
        let s = v.late.as_ref().and_then(|l| l.split.clone()).expect("split");
        assert!(s.to_guest_ms > 70.0 && s.guest_ms < 1.0, "{s:?}");
        let (ms, netns, _) = s.waited.expect("the longest wait");
        assert_eq!((ms, netns.as_str()), (70.0, "e2b-host"));
        let v = late(false);
        assert_eq!(v.outcome, Outcome::Late, "{v:?}");
        assert_eq!(v.late.and_then(|l| l.split), None);
    }

    #[test]
    fn a_reply_that_is_dropped_before_the_client_gave_up_is_a_drop() {
        let j = journey(vec![
            out_syn(0),
            hop(
                1_000_000,
                "ns-1",
                "tap0",
                HopKind::Tcx { ingress: true },
                syn_ack_guest(),
            ),
            hop(
                1_100_000,
                "ns-1",
                "tap0",
                HopKind::Drop {
                    reason: DropReason::new("NETFILTER_DROP"),
                },
                syn_ack_guest(),
            ),
            hop(
                50_000_000,
                "e2b-host",
                "",
                sock(TCP_SYN_SENT, TCP_CLOSE),
                pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
            ),
        ]);
        assert_eq!(decide(&j, Some(&path()), &none()).outcome, Outcome::Dropped);
    }

    #[test]
    fn a_missing_dnat_is_the_first_difference_and_its_absence_the_cause() {
        let mut looped = syn();
        looped.ttl = 1;
        let j = journey(vec![
            out_syn(1),
            nf_at(2, Hook::Prerouting, 8, syn(), None),
            nf_at(3, Hook::Forward, 8, syn(), Some("eth0")),
            hop(
                4,
                "ns-1",
                "eth0",
                HopKind::Drop {
                    reason: DropReason::new("IP_INHDR"),
                },
                looped,
            ),
        ]);
        let facts = ReadFacts {
            namespaces: vec![crate::fixtures::inventory("ns-1", false, "")],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(v.outcome, Outcome::Dropped);
        let d = v.divergence.as_ref().expect("a difference");
        assert_eq!(
            (d.hop, d.field, d.observed.as_str()),
            (1, crate::engine::Field::Destination, "10.11.0.1:49983")
        );
        assert!(
            matches!(&v.actors[0].id, crate::engine::ActorId::MissingRule { table, .. } if table == "nat"),
            "{:?}",
            v.actors
        );
        // With the DNAT rule in place the absence is not claimed.
        let facts = ReadFacts {
            namespaces: vec![crate::fixtures::inventory("ns-1", true, "")],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert!(
            !v.actors
                .iter()
                .any(|a| matches!(a.id, crate::engine::ActorId::MissingRule { .. })),
            "{:?}",
            v.actors
        );
    }

    #[test]
    fn an_attempt_seen_in_another_sandbox_is_misdirected_by_the_host_route() {
        let j = journey(vec![
            hop(1, "e2b-host", "veth-2", HopKind::Xmit, syn()),
            hop(2, "ns-2", "eth0", HopKind::Receive, syn()),
            hop(
                3,
                "e2b-host",
                "",
                sock(TCP_SYN_SENT, crate::tcp::TCP_ESTABLISHED),
                pkt("10.12.0.2", 40000, "10.11.0.1", 49983, 0, 0, 0),
            ),
        ]);
        let facts = ReadFacts {
            namespaces: vec![crate::fixtures::inventory("e2b-host", false, "veth-2")],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(
            v.outcome,
            Outcome::Misdirected,
            "answered elsewhere is never connected"
        );
        let m = v.misdirected.as_ref().unwrap();
        assert_eq!(
            (m.netns.as_deref(), m.by, m.answered),
            (Some("ns-2"), MisdirectedBy::Events, true)
        );
        assert!(
            matches!(&v.actors[0].id, crate::engine::ActorId::Route { device, .. } if device.as_deref() == Some("veth-2")),
            "{:?}",
            v.actors
        );
    }

    #[test]
    fn a_connect_refused_locally_is_unreachable_with_its_errno_and_rule() {
        let mut c = Correlator::new(&[49983], Timing::default());
        c.connect_failed(ns_inode("e2b-host"), "10.11.0.1".parse().unwrap(), 49983, 13, 1);
        let j = c.take_all().pop().unwrap();
        let facts = ReadFacts {
            route_blocks: vec![RouteBlock {
                netns: ns_inode("e2b-host"),
                dst: "10.11.0.1".parse().unwrap(),
                what: "policy rule 100: from all to 10.11.0.1/32 prohibit".into(),
            }],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(v.outcome, Outcome::Unreachable);
        let u = v.unreachable.as_ref().unwrap();
        assert_eq!(
            (u.kind, u.errno.as_deref(), u.netns.as_deref()),
            (UnreachableKind::Prohibited, Some("EACCES"), Some("e2b-host"))
        );
        assert!(matches!(&v.facts[..], [FactUsed::RouteBlocker(b)] if b.what.contains("prohibit")));
    }

    /// A frame redirected off the path (tc mirred to `lo`) dies there: the drop's device is
    /// the difference and the filter on the last device that matched is the cause.
    #[test]
    fn a_drop_on_a_device_off_the_path_names_what_redirected_it() {
        use crate::engine::inventory::TcFilter;
        let j = journey(vec![
            out_syn(1),
            hop(
                2,
                "e2b-host",
                "lo",
                HopKind::Drop {
                    reason: DropReason::new("OTHERHOST"),
                },
                syn(),
            ),
        ]);
        let mut host = crate::fixtures::inventory("e2b-host", false, "veth-1");
        host.filters.push(TcFilter {
            ifindex: crate::fixtures::HOST_VETH_IFINDEX,
            device: "veth-1".into(),
            direction: "egress".into(),
            kind: "u32".into(),
            priority: 49,
            handle: 0x800,
            actions: vec!["mirred egress redirect dev lo".into()],
            program: None,
        });
        let facts = ReadFacts {
            namespaces: vec![host],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(v.outcome, Outcome::Dropped);
        let d = v.divergence.as_ref().expect("a difference");
        assert_eq!(
            (d.hop, d.field, d.observed.as_str()),
            (1, crate::engine::Field::Device, "on lo")
        );
        assert!(
            matches!(&v.actors[..], [a] if a.role == crate::engine::Role::Cause
                && matches!(&a.id, crate::engine::ActorId::TcFilter { device, .. } if device == "veth-1")),
            "{:?}",
            v.actors
        );
        // Without the filter nothing is named for the redirect: no actor is invented.
        let facts = ReadFacts {
            namespaces: vec![crate::fixtures::inventory("e2b-host", false, "veth-1")],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert!(
            !v.actors
                .iter()
                .any(|a| matches!(a.id, crate::engine::ActorId::TcFilter { .. })),
            "{:?}",
            v.actors
        );
    }

    /// Past POSTROUTING's last slot a drop by nft can be a netdev egress chain on the out
    /// device: the rule there is found, and conntrack's confirm is never named as a table.
    #[test]
    fn a_drop_after_the_last_postrouting_slot_finds_the_netdev_egress_rule() {
        use crate::firewall::model::{Action, Chain, Cond, HookPoint, Rule, Source, Table};
        let mut last = nf_at(6, Hook::Postrouting, 7, syn_dnat(), Some("tap0"));
        if let HopKind::Netfilter { window_end, .. } = &mut last.kind {
            *window_end = i32::MAX;
        }
        let mut drop = hop(
            7,
            "ns-1",
            "tap0",
            HopKind::Drop {
                reason: DropReason::new("NETFILTER_DROP"),
            },
            syn_dnat(),
        );
        drop.function = Some("nft_do_chain".into());
        let j = journey(vec![
            out_syn(1),
            hop(2, "ns-1", "eth0", HopKind::Receive, syn()),
            nf_at(3, Hook::Prerouting, 0, syn(), None),
            nf_at(4, Hook::Prerouting, 4, syn_dnat(), None),
            nf_at(5, Hook::Forward, 0, syn_dnat(), Some("tap0")),
            last,
            drop,
        ]);
        let mut ns = crate::fixtures::inventory("ns-1", true, "");
        ns.tables.push(Table {
            source: Source::Nft,
            family: "netdev".into(),
            name: "camp".into(),
            chains: vec![Chain {
                name: "c".into(),
                hook: Some(HookPoint::Egress),
                priority: -30,
                is_nat: false,
                policy_drop: false,
                device: Some("tap0".into()),
                rules: vec![Rule {
                    conds: vec![Cond::Tcp(true), Cond::DPort(vec![(49983, 49983)])],
                    action: Action::Drop,
                    text: "tcp dport 49983 drop".into(),
                    handle: Some(2),
                }],
            }],
        });
        let facts = ReadFacts {
            namespaces: vec![ns],
            ..Default::default()
        };
        let v = decide(&j, Some(&path()), &facts);
        assert_eq!(v.outcome, Outcome::Dropped);
        let d = v.drop.as_ref().unwrap();
        assert_eq!((d.hook, d.table.as_deref()), (Some(Hook::Postrouting), None));
        assert!(
            matches!(&v.actors[..], [a] if a.role == crate::engine::Role::Cause
                && a.place.starts_with("netdev egress")
                && matches!(&a.id, crate::engine::ActorId::FirewallRule { table, handle: Some(2), .. } if table == "camp")),
            "{:?}",
            v.actors
        );
    }

    #[test]
    fn a_route_miss_without_any_packet_is_unreachable() {
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
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(r);
        let j = c.take_all().pop().unwrap();
        let v = decide(&j, Some(&path()), &none());
        assert_eq!(v.outcome, Outcome::Unreachable);
        let u = v.unreachable.unwrap();
        assert_eq!(
            (u.kind, u.netns.as_deref()),
            (UnreachableKind::NoRoute, Some("e2b-host"))
        );
    }

    /// Found by the kernel_events fuzz target: a route event's error is whatever the kernel
    /// (or a corrupt record) says, and i32::MIN has no absolute value.
    #[test]
    fn any_route_error_value_is_judged_without_panic() {
        for error in [i32::MIN, i32::MAX, -11, 11] {
            let r = hop(
                1,
                "e2b-host",
                "",
                HopKind::Route {
                    table: 254,
                    error,
                    iif: 1,
                },
                pkt("0.0.0.0", 0, "10.11.0.1", 0, 0, 0, 0),
            );
            let mut c = Correlator::new(&[49983], Timing::default());
            c.push(r);
            let j = c.take_all().pop().unwrap();
            assert_eq!(decide(&j, Some(&path()), &none()).outcome, Outcome::Unreachable);
        }
        assert_eq!(errno_name(i32::MIN), format!("errno {}", i32::MAX));
    }
}
