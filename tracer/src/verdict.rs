//! The verdict engine: one outcome per journey, compared with the sandbox's expected path.
//! Plain logic over recorded journeys, tested from fixtures without root.
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::{
    hop::{Hook, Hop, HopKind, NUD_FAILED, NUD_INCOMPLETE, TCP_ESTABLISHED, nud_name},
    journey::{Journey, JourneyId, Leg},
    path::{ExpectedPath, tables_in_window},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Request,
    Reply,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DropInfo {
    pub direction: Direction,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// The device the packet was routed to, when the drop happened after routing.
    pub out_device: Option<String>,
    pub hook: Option<Hook>,
    pub table: Option<String>,
    pub chain: Option<String>,
    pub rule: Option<String>,
    /// Why chain/rule are null, when they are.
    pub rule_note: Option<String>,
    pub reason: String,
    pub function: Option<String>,
    pub location: Option<String>,
    /// Netfilter priorities between which the packet stopped.
    pub priority_window: Option<(i32, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ResetInfo {
    /// `guest` (the VM answered RST) or `stack` (a namespace's own TCP stack did).
    pub by: String,
    pub netns: Option<String>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct UnreachableInfo {
    /// `no_route` or `neighbour`.
    pub kind: String,
    pub address: Ipv4Addr,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// Neighbour state (INCOMPLETE, FAILED) for `neighbour`.
    pub state: Option<String>,
}

/// Something the journey shows beyond the outcome: the cause behind it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub hook: Option<Hook>,
    pub table: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
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
    pub summary: String,
    pub fix: Option<String>,
    /// Configuration problems (doctor checks) that explain the outcome.
    pub explained_by: Vec<String>,
}

impl Verdict {
    pub fn new(outcome: Outcome, summary: String) -> Self {
        Self {
            outcome,
            drop: None,
            reset: None,
            unreachable: None,
            findings: Vec::new(),
            cause: None,
            failing_hop: None,
            summary,
            fix: None,
            explained_by: Vec::new(),
        }
    }

    /// What makes two verdicts "the same failure" for aggregation.
    pub fn signature(&self) -> String {
        serde_json::to_string(&(
            &self.outcome,
            &self.drop,
            &self.reset,
            &self.unreachable,
            &self.findings,
        ))
        .unwrap_or_default()
    }
}

/// Neighbour state lookup: (netns inode, address) → NUD state.
pub type NeighLookup<'a> = &'a dyn Fn(u32, Ipv4Addr) -> Option<u32>;

/// Decides the outcome of one journey.
pub fn decide(j: &Journey, path: Option<&ExpectedPath>, neigh: NeighLookup<'_>) -> Verdict {
    let mut v = outcome(j, path, neigh);
    if v.outcome != Outcome::Connected {
        v.findings = findings(j, path);
        v.cause = v.findings.iter().find(|f| CAUSES.contains(&f.kind)).cloned();
        v.summary = summary(&v, j);
        v.fix = fix(&v, path);
    }
    v
}

fn outcome(j: &Journey, path: Option<&ExpectedPath>, neigh: NeighLookup<'_>) -> Verdict {
    if let JourneyId::NoRoute { dst, .. } = j.id {
        let hop = j.hops.first().map(|(_, h)| h);
        return unreachable_no_route(dst, hop, Some(0));
    }
    if let Some(v) = connected(j) {
        return v;
    }
    if let Some(v) = stack_reset(j) {
        return v;
    }
    if let Some(v) = peer_reset(j, path) {
        return v;
    }
    if let Some(v) = first_drop(j) {
        return v;
    }
    if let Some(v) = route_failure(j) {
        return v;
    }
    if let Some(v) = neighbour_failure(j, path, neigh) {
        return v;
    }
    if let Some(v) = handed_to_vmm(j, path) {
        return v;
    }
    let mut v = Verdict::new(Outcome::Unknown, String::new());
    v.failing_hop = last_packet_hop(j);
    v
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
        .then(|| {
            Verdict::new(
                Outcome::Connected,
                "connected: the SYN-ACK reached the client's socket".into(),
            )
        })
}

/// A namespace's own stack answered the SYN with RST (nothing listening there).
fn stack_reset(j: &Journey) -> Option<Verdict> {
    let (i, h) = j
        .hops
        .iter()
        .enumerate()
        .find(|(_, (l, h))| *l == Leg::Request && matches!(h.kind, HopKind::SendReset { .. }))?;
    let mut v = Verdict::new(Outcome::Reset, String::new());
    v.reset = Some(ResetInfo {
        by: "stack".into(),
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
    let mut v = Verdict::new(Outcome::Reset, String::new());
    v.reset = Some(ResetInfo {
        by: if from_guest { "guest" } else { "peer" }.into(),
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
    // Packets queued for an unresolved neighbour die in the neighbour code when it gives up
    // (NEIGH_FAILED) or is flushed (QUEUE_PURGE when the tap lost its reader).
    if reason.starts_with("NEIGH_") || h.function.as_deref().is_some_and(|f| f.starts_with("neigh_")) {
        let mut v = Verdict::new(Outcome::Unreachable, String::new());
        v.unreachable = Some(UnreachableInfo {
            kind: "neighbour".into(),
            address: h.dst(),
            netns: Some(h.ns_label()),
            device: h.device.clone(),
            state: Some(reason.clone()),
        });
        v.drop = Some(drop_info(j, i, *leg, h, reason));
        v.failing_hop = Some(i);
        return Some(v);
    }
    if reason == "IP_NOROUTE" {
        let mut v = unreachable_no_route(h.dst(), Some(h), Some(i));
        v.drop = Some(drop_info(j, i, *leg, h, reason));
        return Some(v);
    }
    let mut v = Verdict::new(Outcome::Dropped, String::new());
    v.drop = Some(drop_info(j, i, *leg, h, reason));
    v.failing_hop = Some(i);
    Some(v)
}

fn drop_info(j: &Journey, i: usize, leg: Leg, h: &Hop, reason: &str) -> DropInfo {
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
        chain: None,
        rule: None,
        rule_note: None,
        reason: reason.to_string(),
        function: h.function.clone(),
        location: h.location.clone(),
        priority_window: None,
    };
    if reason == "NETFILTER_DROP" {
        // The last netfilter hop of this skb in this namespace: the drop happened in that hook,
        // after that slot.
        let last_nf = j.hops[..i].iter().rev().find(|(l, x)| {
            *l == leg
                && x.netns == h.netns
                && matches!(x.kind, HopKind::Netfilter { .. })
                && (x.skb == h.skb || h.skb == 0)
        });
        if let Some((
            _,
            HopKind::Netfilter {
                hook,
                priority,
                window_end,
                in_dev,
                out_dev,
                ..
            },
        )) = last_nf.map(|(l, x)| (l, &x.kind))
        {
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
    }
    d
}

fn unreachable_no_route(dst: Ipv4Addr, hop: Option<&Hop>, i: Option<usize>) -> Verdict {
    let mut v = Verdict::new(Outcome::Unreachable, String::new());
    v.unreachable = Some(UnreachableInfo {
        kind: "no_route".into(),
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
    let mut v = Verdict::new(Outcome::Unreachable, String::new());
    v.unreachable = Some(UnreachableInfo {
        kind: "neighbour".into(),
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
    let (i, h) = j.hops.iter().enumerate().find(|(_, (l, h))| {
        *l == Leg::Request
            && matches!(h.kind, HopKind::Xmit | HopKind::Consumed)
            && is_tap(h.device.as_deref())
    })?;
    if j.leg(Leg::Reply).next().is_some() {
        return None;
    }
    let mut v = Verdict::new(Outcome::NoReply, String::new());
    v.failing_hop = Some(i);
    let _ = h;
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
    let mut out = Vec::new();
    let req: Vec<&Hop> = j.leg(Leg::Request).collect();
    // Left the host through another sandbox's veth.
    if let Some(h) = req.iter().find(|h| {
        h.netns == p.host_ns.inode
            && matches!(h.kind, HopKind::Xmit | HopKind::Tcx { ingress: false })
            && h.device.as_deref().is_some_and(|d| d != p.host_veth)
    }) {
        out.push(Finding {
            kind: "wrong_route",
            netns: Some(p.host_ns.label()),
            device: h.device.clone(),
            hook: None,
            table: None,
            detail: format!(
                "the host sent the SYN for {} out {}, not {} (the route points at another sandbox's veth)",
                p.host_ip,
                h.device.as_deref().unwrap_or("?"),
                p.host_veth
            ),
        });
    }
    // Entered a namespace that is not on the path.
    if let Some(h) = req
        .iter()
        .find(|h| h.netns != 0 && h.netns != p.host_ns.inode && h.netns != p.sandbox_ns.inode)
    {
        out.push(Finding {
            kind: "other_namespace",
            netns: Some(h.ns_label()),
            device: h.device.clone(),
            hook: None,
            table: None,
            detail: format!(
                "the SYN landed in {}, not in the sandbox's {}",
                h.ns_label(),
                p.sandbox_ns.label()
            ),
        });
    }
    // Passed the nat table of the sandbox namespace without being DNATed.
    let after_nat = req.iter().find(|h| {
        h.netns == p.sandbox_ns.inode
            && matches!(h.kind, HopKind::Netfilter { hook: Hook::Prerouting, slot, .. } if slot >= 4)
    });
    if let Some(h) = after_nat
        && h.dst() == p.host_ip
    {
        out.push(Finding {
            kind: "no_dnat",
            netns: Some(p.sandbox_ns.label()),
            device: h.device.clone(),
            hook: Some(Hook::Prerouting),
            table: Some("nat".into()),
            detail: format!(
                "the SYN to {} left the nat table of {} unchanged: no DNAT to {}",
                p.host_ip,
                p.sandbox_ns.label(),
                p.guest_ip
            ),
        });
    }
    // Routed back out of the sandbox namespace instead of to the guest.
    if let Some(h) = req.iter().find(|h| {
        h.netns == p.sandbox_ns.inode
            && matches!(&h.kind, HopKind::Netfilter { hook: Hook::Forward, out_dev: Some(o), .. } if *o == p.ns_veth)
    }) {
        out.push(Finding {
            kind: "routed_back",
            netns: Some(p.sandbox_ns.label()),
            device: Some(p.ns_veth.clone()),
            hook: Some(Hook::Forward),
            table: None,
            detail: format!(
                "{} routed the SYN for {} back out {} instead of to {}",
                p.sandbox_ns.label(),
                h.dst(),
                p.ns_veth,
                p.guest_side_dev()
            ),
        });
    }
    if let Some(ttl) = req.iter().map(|h| h.pkt.ttl).filter(|t| *t > 0).min()
        && ttl <= 2
    {
        out.push(Finding {
            kind: "routing_loop",
            netns: None,
            device: None,
            hook: None,
            table: None,
            detail: format!("the SYN circled between namespaces until its TTL ran out (TTL {ttl} seen)"),
        });
    }
    out
}

fn place(netns: &Option<String>, device: &Option<String>) -> String {
    match (netns, device) {
        (Some(n), Some(d)) => format!("{n}, device {d}"),
        (Some(n), None) => n.clone(),
        (None, Some(d)) => format!("device {d}"),
        (None, None) => "an unknown place".into(),
    }
}

/// One plain sentence (or two) for people.
/// The summary sentence of a verdict (again, after enrichment filled in the rule).
pub fn summary_for(v: &Verdict, j: &Journey) -> String {
    if v.outcome == Outcome::Connected {
        return v.summary.clone();
    }
    summary(v, j)
}

fn summary(v: &Verdict, j: &Journey) -> String {
    let target = j
        .target
        .map(|(a, p)| format!("{a}:{p}"))
        .unwrap_or_else(|| "envd".into());
    let mut s = match v.outcome {
        Outcome::Dropped => {
            let d = v.drop.as_ref().expect("dropped has drop");
            let dir = if d.direction == Direction::Request {
                "the SYN to"
            } else {
                "the reply from"
            };
            let dev = match (&d.device, &d.out_device) {
                (Some(i), Some(o)) => Some(format!("{i} → {o}")),
                (i, _) => i.clone(),
            };
            let mut s = format!("{dir} {target} was dropped in {}", place(&d.netns, &dev));
            if let Some(hook) = d.hook {
                s += &format!(", {} hook", hook.name());
            }
            if let Some(t) = &d.table {
                s += &format!(", {t} table");
            }
            if let Some(c) = &d.chain {
                s += &format!(", chain {c}");
            }
            if let Some(r) = &d.rule {
                s += &format!(", by rule `{r}`");
            }
            s += &format!(" (kernel reason {}", d.reason);
            if let Some(f) = &d.function {
                s += &format!(" in {f}");
            }
            s + ")"
        }
        Outcome::Reset => {
            let r = v.reset.as_ref().expect("reset has reset");
            match r.by.as_str() {
                "guest" => format!(
                    "the guest answered the SYN to {target} with RST: nothing listens on the port inside the VM"
                ),
                "stack" => format!(
                    "the SYN to {target} was answered with RST by the kernel of {}: it was delivered locally there, where nothing listens",
                    r.netns.as_deref().unwrap_or("?")
                ),
                _ => format!("a RST came back from {}", place(&r.netns, &r.device)),
            }
        }
        Outcome::NoReply => format!(
            "the SYN to {target} was handed to the VMM through the tap, and nothing came back: the guest is silent"
        ),
        Outcome::Unreachable => {
            let u = v.unreachable.as_ref().expect("unreachable has info");
            if u.kind == "neighbour" {
                format!(
                    "ARP for {} on {} was never answered (neighbour {}): nobody reads the tap, or the guest is down",
                    u.address,
                    place(&u.netns, &u.device),
                    u.state.as_deref().unwrap_or("?")
                )
            } else {
                format!(
                    "no route to {} in {}",
                    u.address,
                    u.netns.as_deref().unwrap_or("?")
                )
            }
        }
        Outcome::Unknown => {
            let last = v.failing_hop.and_then(|i| j.hops.get(i)).map(|(_, h)| h);
            match last {
                Some(h) => format!(
                    "the SYN to {target} was last seen in {} and then vanished without a drop event",
                    place(&h.netns_name, &h.device)
                ),
                None => format!("nothing of the attempt to {target} was seen on the path"),
            }
        }
        Outcome::Connected => unreachable!("connected has its own summary"),
    };
    // A cause found on the way (no DNAT, wrong route) leads; what happened to the packet follows.
    let (causes, rest): (Vec<&Finding>, Vec<&Finding>) =
        v.findings.iter().partition(|f| CAUSES.contains(&f.kind));
    if !causes.is_empty() {
        let lead: Vec<&str> = causes.iter().map(|f| f.detail.as_str()).collect();
        s = format!("{}; as a result, {s}", capitalize(&lead.join("; ")));
    }
    for f in rest {
        s += "; ";
        s += &f.detail;
    }
    s
}

/// Findings that are the cause of what followed, not just an observation.
const CAUSES: &[&str] = &["no_dnat", "wrong_route"];

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The likely fix, in one line.
/// The fix line of a verdict (again, after enrichment).
pub fn fix_for(v: &Verdict, path: Option<&ExpectedPath>) -> Option<String> {
    fix(v, path)
}

fn fix(v: &Verdict, path: Option<&ExpectedPath>) -> Option<String> {
    let ns = path
        .map(|p| p.sandbox_ns.label())
        .unwrap_or_else(|| "<netns>".into());
    for f in &v.findings {
        let hint = match f.kind {
            "wrong_route" => Some(format!(
                "fix the host route: ip route replace {}/32 via {} dev {}",
                path.map(|p| p.host_ip.to_string()).unwrap_or_default(),
                path.and_then(|p| p.ns_veth_ip)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                path.map(|p| p.host_veth.clone()).unwrap_or_default()
            )),
            "no_dnat" => Some(format!(
                "restore the DNAT: ip netns exec {ns} iptables -t nat -A PREROUTING -d {}/32 -i {} -j DNAT --to-destination {}",
                path.map(|p| p.host_ip.to_string()).unwrap_or_default(),
                path.map(|p| p.ns_veth.clone()).unwrap_or_default(),
                path.map(|p| p.guest_ip.to_string()).unwrap_or_default()
            )),
            _ => None,
        };
        if hint.is_some() {
            return hint;
        }
    }
    match v.outcome {
        Outcome::Dropped => {
            let d = v.drop.as_ref()?;
            let ns = d.netns.clone().unwrap_or(ns);
            Some(match (d.reason.as_str(), &d.rule) {
                ("NETFILTER_DROP", Some(r)) if r.starts_with("-A ") => {
                    format!("remove or narrow that rule: ip netns exec {ns} iptables -t {} -D {}", d.table.as_deref().unwrap_or("filter"), &r[3..])
                }
                ("NETFILTER_DROP", Some(r)) if r.starts_with("-P ") => {
                    format!("accept envd traffic before the policy applies, or change it: ip netns exec {ns} iptables {}", r.replace("DROP", "ACCEPT"))
                }
                ("NETFILTER_DROP", Some(r)) if r.contains("# handle ") => format!(
                    "delete that rule: ip netns exec {ns} nft delete rule {} {} handle {}",
                    d.table.as_deref().unwrap_or("?"),
                    d.chain.as_deref().unwrap_or("?"),
                    r.rsplit("# handle ").next().unwrap_or("?").trim()
                ),
                ("NETFILTER_DROP", _) => format!("find the dropping rule: ip netns exec {ns} nft list ruleset (or rerun with --nft-trace)"),
                ("IP_RPFILTER", _) => format!("the return path is asymmetric: fix the routes, or relax rp_filter: ip netns exec {ns} sysctl net.ipv4.conf.all.rp_filter=2"),
                ("DEV_READY", _) | ("FULL_RING", _) | ("QDISC_DROP", _) => "the VMM does not read the tap: check that Firecracker is running and attached (tracer doctor)".into(),
                _ => format!("check the configuration of {ns} with `tracer doctor`"),
            })
        }
        Outcome::Reset => Some(match v.reset.as_ref()?.by.as_str() {
            "guest" => "start envd in the guest (or check it listens on the port)".into(),
            _ => "the packet was not forwarded to the guest: check the DNAT and routes (tracer doctor)".into(),
        }),
        Outcome::NoReply => Some("the guest received the SYN but did not answer: check envd and the guest's network inside the VM".into()),
        Outcome::Unreachable => Some(match v.unreachable.as_ref()?.kind.as_str() {
            "neighbour" => "check that the VMM is running and reads the tap (tracer doctor): an unread tap never answers ARP".into(),
            _ => "add the missing route (tracer doctor shows the expected one)".into(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::tcp_flag;

    use super::*;
    use crate::{
        hop::{TCP_CLOSE, TCP_SYN_SENT},
        journey::{
            Correlator, Timing,
            tests::{hop, nf, pkt, sock, syn, syn_ack_guest, syn_dnat},
        },
        path::NsRef,
    };

    fn ns_inode(name: &str) -> u32 {
        name.bytes().map(u32::from).sum()
    }

    fn path() -> ExpectedPath {
        ExpectedPath {
            sandbox_id: Some("ix7hj8hustuvlxiqc0g0u".into()),
            vmm_pid: Some(42),
            host_ns: NsRef {
                inode: ns_inode("e2b-host"),
                name: Some("e2b-host".into()),
            },
            sandbox_ns: NsRef {
                inode: ns_inode("ns-1"),
                name: Some("ns-1".into()),
            },
            host_veth: "veth-1".into(),
            ns_veth: "eth0".into(),
            tap: "tap0".into(),
            bridge: None,
            host_ip: "10.11.0.1".parse().unwrap(),
            guest_ip: "169.254.0.21".parse().unwrap(),
            host_veth_ip: Some("10.12.0.2".parse().unwrap()),
            ns_veth_ip: Some("10.12.0.3".parse().unwrap()),
            port: 49983,
        }
    }

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
                reason: "NETFILTER_DROP".into(),
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
        assert!(v.summary.contains("FORWARD hook, filter table"), "{}", v.summary);
    }

    #[test]
    fn reply_drop_has_the_reply_direction() {
        let mut reply = syn_ack_guest();
        reply.saddr = crate::journey::tests::ip("169.254.0.21");
        let j = journey(vec![
            out_syn(1),
            hop(2, "ns-1", "tap0", HopKind::Tcx { ingress: true }, reply),
            hop(
                3,
                "ns-1",
                "tap0",
                HopKind::Drop {
                    reason: "NETFILTER_DROP".into(),
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
        assert_eq!((r.by.as_str(), r.netns.as_deref()), ("guest", Some("ns-1")));
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
                    reason: "NO_SOCKET".into(),
                },
                syn(),
            ),
        ]);
        let v = decide(&j, Some(&path()), &no_neigh);
        assert_eq!(v.outcome, Outcome::Reset);
        assert_eq!(v.reset.unwrap().by, "stack");
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
            (u.kind.as_str(), u.device.as_deref(), u.state.as_deref()),
            ("neighbour", Some("tap0"), Some("INCOMPLETE"))
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
                    reason: "IP_INHDR".into(),
                },
                looped,
            ),
        ]);
        let v = decide(&j, Some(&path()), &no_neigh);
        assert_eq!(v.outcome, Outcome::Dropped);
        let kinds: Vec<&str> = v.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec!["no_dnat", "routed_back", "routing_loop"]);
        assert!(v.fix.unwrap().contains("DNAT --to-destination 169.254.0.21"));
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
                    reason: "IP_INHDR".into(),
                },
                syn(),
            ),
        ]);
        let v = decide(&j, Some(&path()), &no_neigh);
        let kinds: Vec<&str> = v.findings.iter().map(|f| f.kind).collect();
        assert!(
            kinds.contains(&"wrong_route") && kinds.contains(&"other_namespace"),
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
            (u.kind.as_str(), u.netns.as_deref()),
            ("no_route", Some("e2b-host"))
        );
    }
}
