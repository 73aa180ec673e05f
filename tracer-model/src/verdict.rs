//! The verdict engine: one outcome per journey, compared with the sandbox's expected path.
//! Plain logic over recorded journeys, tested from fixtures without root. A verdict is typed
//! data and final when [`decide`] returns it; the sentences people read are written from it by
//! the output layer.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{
    hook::{Hook, tables_in_window},
    hop::{Hop, HopKind},
    journey::{Journey, JourneyId, Leg},
    path::ExpectedPath,
    reason::{DropReason, ReasonClass},
    tcp::{NUD_FAILED, NUD_INCOMPLETE, TCP_ESTABLISHED, nud_name},
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
    /// The SYN was handed to the VMM (read from the tap) and nothing came back.
    NoReply,
    /// No route, or the neighbour (ARP) was never resolved.
    Unreachable,
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
            Self::Unreachable => "unreachable",
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
    NoRoute,
    Neighbour,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnreachableInfo {
    pub kind: UnreachableKind,
    pub address: Ipv4Addr,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// Neighbour state (INCOMPLETE, FAILED) or the neighbour drop reason, for `Neighbour`.
    pub state: Option<String>,
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

impl Finding {
    fn new(kind: FindingKind) -> Self {
        Self {
            kind,
            netns: None,
            device: None,
            hook: None,
            table: None,
            address: None,
            ttl: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub drop: Option<DropInfo>,
    pub reset: Option<ResetInfo>,
    pub unreachable: Option<UnreachableInfo>,
    pub findings: Vec<Finding>,
    /// The finding that caused the outcome (no DNAT, a wrong route), when there is one: the
    /// place to fix, which may differ from where the packet finally died.
    pub cause: Option<Finding>,
    /// Index into the journey's hops of the hop where it went wrong.
    pub failing_hop: Option<usize>,
}

impl Verdict {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            drop: None,
            reset: None,
            unreachable: None,
            findings: Vec::new(),
            cause: None,
            failing_hop: None,
        }
    }
}

/// Neighbour state lookup: (netns inode, address) → NUD state.
pub type NeighLookup<'a> = &'a dyn Fn(u32, Ipv4Addr) -> Option<u32>;

/// Decides the outcome of one journey.
pub fn decide(j: &Journey, path: Option<&ExpectedPath>, neigh: NeighLookup<'_>) -> Verdict {
    let mut v = outcome(j, path, neigh);
    if v.outcome != Outcome::Connected {
        v.findings = findings(j, path);
        v.cause = v.findings.iter().find(|f| f.kind.is_cause()).cloned();
    }
    v
}

fn outcome(j: &Journey, path: Option<&ExpectedPath>, neigh: NeighLookup<'_>) -> Verdict {
    if let JourneyId::NoRoute { dst, .. } = j.id {
        let hop = j.hops.first().map(|(_, h)| h);
        return unreachable_no_route(dst, hop, Some(0));
    }
    connected(j)
        .or_else(|| stack_reset(j))
        .or_else(|| peer_reset(j, path))
        .or_else(|| first_drop(j))
        .or_else(|| route_failure(j))
        .or_else(|| neighbour_failure(j, path, neigh))
        .or_else(|| handed_to_vmm(j, path))
        .unwrap_or_else(|| {
            let mut v = Verdict::new(Outcome::Unknown);
            v.failing_hop = last_packet_hop(j);
            v
        })
}

fn connected(j: &Journey) -> Option<Verdict> {
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
    let from_guest = match path {
        Some(p) => h.src() == p.guest_ip || h.src() == p.host_ip,
        None => true,
    };
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

fn first_drop(j: &Journey) -> Option<Verdict> {
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
            });
            v
        }
        ReasonClass::NoRoute => unreachable_no_route(h.dst(), Some(h), Some(i)),
        _ => Verdict::new(Outcome::Dropped),
    };
    v.drop = Some(drop_info(j, i, *leg, h, reason));
    v.failing_hop = Some(i);
    Some(v)
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
    let tables = tables_in_window(*hook, window);
    d.table = (tables.len() == 1).then(|| tables[0].to_string());
    if in_dev.is_some() {
        d.device = in_dev.clone();
    }
    d.out_device = out_dev.clone();
}

fn unreachable_no_route(dst: Ipv4Addr, hop: Option<&Hop>, i: Option<usize>) -> Verdict {
    let mut v = Verdict::new(Outcome::Unreachable);
    v.unreachable = Some(UnreachableInfo {
        kind: UnreachableKind::NoRoute,
        address: dst,
        netns: hop.map(Hop::ns_label),
        device: hop.and_then(|h| h.device.clone()),
        state: None,
    });
    v.failing_hop = i;
    v
}

fn route_failure(j: &Journey) -> Option<Verdict> {
    let (i, (_, h)) = j.hops.iter().enumerate().find(|(_, (_, h))| {
        matches!(h.kind, HopKind::Route { table, error, .. } if crate::journey::is_route_failure(table, error))
    })?;
    Some(unreachable_no_route(h.dst(), Some(h), Some(i)))
}

/// The SYN stopped in front of the tap while ARP for the guest was unresolved.
fn neighbour_failure(j: &Journey, path: Option<&ExpectedPath>, neigh: NeighLookup<'_>) -> Option<Verdict> {
    let p = path?;
    let reached_driver = j.leg(Leg::Request).any(|h| {
        matches!(h.kind, HopKind::Xmit | HopKind::Consumed) && h.device.as_deref() == Some(p.tap.as_str())
    });
    if reached_driver {
        return None;
    }
    let from_hops = j.hops.iter().rev().find_map(|(_, h)| match h.kind {
        HopKind::Neigh {
            address, new_state, ..
        } if address == p.guest_ip => Some(new_state),
        _ => None,
    });
    let state = from_hops.or_else(|| neigh(p.sandbox_ns.inode, p.guest_ip))?;
    if state & (NUD_INCOMPLETE | NUD_FAILED) == 0 {
        return None;
    }
    let mut v = Verdict::new(Outcome::Unreachable);
    v.unreachable = Some(UnreachableInfo {
        kind: UnreachableKind::Neighbour,
        address: p.guest_ip,
        netns: Some(p.sandbox_ns.label()),
        device: Some(p.guest_side_dev().to_string()),
        state: Some(nud_name(state).into()),
    });
    v.failing_hop = last_packet_hop(j);
    Some(v)
}

/// The SYN went into the tap (the VMM's side) and nothing came back.
fn handed_to_vmm(j: &Journey, path: Option<&ExpectedPath>) -> Option<Verdict> {
    let is_tap = |d: Option<&str>| match path {
        Some(p) => d == Some(p.tap.as_str()),
        None => d.is_some_and(|d| d.starts_with("tap")),
    };
    let (i, _) = j.hops.iter().enumerate().find(|(_, (l, h))| {
        *l == Leg::Request
            && matches!(h.kind, HopKind::Xmit | HopKind::Consumed)
            && is_tap(h.device.as_deref())
    })?;
    if j.leg(Leg::Reply).next().is_some() {
        return None;
    }
    let mut v = Verdict::new(Outcome::NoReply);
    v.failing_hop = Some(i);
    Some(v)
}

fn last_packet_hop(j: &Journey) -> Option<usize> {
    j.hops
        .iter()
        .rposition(|(l, h)| *l != Leg::Control && h.is_packet())
}

/// Path-aware observations: slot mix-ups, missing DNAT, routing loops.
fn findings(j: &Journey, path: Option<&ExpectedPath>) -> Vec<Finding> {
    let Some(p) = path else { return Vec::new() };
    let req: Vec<&Hop> = j.leg(Leg::Request).collect();
    [
        wrong_route(&req, p),
        other_namespace(&req, p),
        no_dnat(&req, p),
        routed_back(&req, p),
        routing_loop(&req),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Left the host through another sandbox's veth.
fn wrong_route(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req.iter().find(|h| {
        h.netns == p.host_ns.inode
            && matches!(h.kind, HopKind::Xmit | HopKind::Tcx { ingress: false })
            && h.device.as_deref().is_some_and(|d| d != p.host_veth)
    })?;
    let mut f = Finding::new(FindingKind::WrongRoute);
    f.netns = Some(p.host_ns.label());
    f.device = h.device.clone();
    f.address = Some(p.host_ip);
    Some(f)
}

/// Entered a namespace that is not on the path.
fn other_namespace(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req
        .iter()
        .find(|h| h.netns != 0 && h.netns != p.host_ns.inode && h.netns != p.sandbox_ns.inode)?;
    let mut f = Finding::new(FindingKind::OtherNamespace);
    f.netns = Some(h.ns_label());
    f.device = h.device.clone();
    Some(f)
}

/// Passed the nat table of the sandbox namespace without being DNATed.
fn no_dnat(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req.iter().find(|h| {
        h.netns == p.sandbox_ns.inode
            && matches!(h.kind, HopKind::Netfilter { hook: Hook::Prerouting, slot, .. } if slot >= 4)
    })?;
    if h.dst() != p.host_ip {
        return None;
    }
    let mut f = Finding::new(FindingKind::NoDnat);
    f.netns = Some(p.sandbox_ns.label());
    f.device = h.device.clone();
    f.hook = Some(Hook::Prerouting);
    f.table = Some("nat".into());
    f.address = Some(p.host_ip);
    Some(f)
}

/// Routed back out of the sandbox namespace instead of to the guest.
fn routed_back(req: &[&Hop], p: &ExpectedPath) -> Option<Finding> {
    let h = req.iter().find(|h| {
        h.netns == p.sandbox_ns.inode
            && matches!(&h.kind, HopKind::Netfilter { hook: Hook::Forward, out_dev: Some(o), .. } if *o == p.ns_veth)
    })?;
    let mut f = Finding::new(FindingKind::RoutedBack);
    f.netns = Some(p.sandbox_ns.label());
    f.device = Some(p.ns_veth.clone());
    f.hook = Some(Hook::Forward);
    f.address = Some(h.dst());
    Some(f)
}

fn routing_loop(req: &[&Hop]) -> Option<Finding> {
    let ttl = req.iter().map(|h| h.pkt.ttl).filter(|t| *t > 0).min()?;
    (ttl <= 2).then(|| {
        let mut f = Finding::new(FindingKind::RoutingLoop);
        f.ttl = Some(ttl);
        f
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp_flag;

    use super::*;
    use crate::{
        fixtures::{hop, nf, path, pkt, sock, syn, syn_ack_guest, syn_dnat},
        journey::{Correlator, Timing},
        tcp::{TCP_CLOSE, TCP_SYN_SENT},
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

    fn no_neigh(_: u32, _: Ipv4Addr) -> Option<u32> {
        None
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
        assert_eq!(decide(&j, Some(&path()), &no_neigh).outcome, Outcome::Connected);
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
        let v = decide(&j, Some(&path()), &no_neigh);
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
        let v = decide(&j, Some(&path()), &no_neigh);
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
        let v = decide(&j, Some(&path()), &no_neigh);
        assert_eq!(v.outcome, Outcome::Reset);
        let r = v.reset.unwrap();
        assert_eq!((r.by, r.netns.as_deref()), (ResetBy::Guest, Some("ns-1")));
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
        let v = decide(&j, Some(&path()), &no_neigh);
        assert_eq!(v.outcome, Outcome::Reset);
        assert_eq!(v.reset.unwrap().by, ResetBy::Stack);
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
        assert_eq!(decide(&j, Some(&path()), &no_neigh).outcome, Outcome::NoReply);
    }

    #[test]
    fn unresolved_arp_in_front_of_the_tap_is_unreachable() {
        let j = journey(vec![
            out_syn(1),
            nf_at(2, Hook::Postrouting, 8, syn_dnat(), Some("tap0")),
        ]);
        let incomplete = |_: u32, a: Ipv4Addr| {
            (a == "169.254.0.21".parse::<Ipv4Addr>().unwrap()).then_some(NUD_INCOMPLETE)
        };
        let v = decide(&j, Some(&path()), &incomplete);
        assert_eq!(v.outcome, Outcome::Unreachable);
        let u = v.unreachable.unwrap();
        assert_eq!(
            (u.kind, u.device.as_deref(), u.state.as_deref()),
            (UnreachableKind::Neighbour, Some("tap0"), Some("INCOMPLETE"))
        );
    }

    #[test]
    fn missing_dnat_and_a_loop_are_named() {
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
        let v = decide(&j, Some(&path()), &no_neigh);
        assert_eq!(v.outcome, Outcome::Dropped);
        let kinds: Vec<FindingKind> = v.findings.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![
                FindingKind::NoDnat,
                FindingKind::RoutedBack,
                FindingKind::RoutingLoop
            ]
        );
        assert_eq!(v.cause.map(|c| c.kind), Some(FindingKind::NoDnat));
    }

    #[test]
    fn wrong_slot_route_is_named() {
        let j = journey(vec![
            hop(1, "e2b-host", "veth-2", HopKind::Xmit, syn()),
            hop(
                2,
                "ns-2",
                "eth0",
                HopKind::Drop {
                    reason: DropReason::new("IP_INHDR"),
                },
                syn(),
            ),
        ]);
        let v = decide(&j, Some(&path()), &no_neigh);
        let kinds: Vec<FindingKind> = v.findings.iter().map(|f| f.kind).collect();
        assert!(
            kinds.contains(&FindingKind::WrongRoute) && kinds.contains(&FindingKind::OtherNamespace),
            "{kinds:?}"
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
        let v = decide(&j, Some(&path()), &no_neigh);
        assert_eq!(v.outcome, Outcome::Unreachable);
        let u = v.unreachable.unwrap();
        assert_eq!(
            (u.kind, u.netns.as_deref()),
            (UnreachableKind::NoRoute, Some("e2b-host"))
        );
    }
}
