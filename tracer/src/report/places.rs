//! The places of a journey's path, for the diagrams: the namespaces (host side, the sandbox's,
//! the guest), the devices on the way, and the netfilter hooks of each leg between them, each
//! marked observed, passed or never reached, and the place where it failed. Computed once from
//! a record; the SVG (`svg.rs`) and Mermaid (`mermaid.rs`) renderers only draw it, so both
//! show the same thing.
use tracer_model::{
    journey::Leg,
    verdict::{Direction, Outcome, ResetBy},
};

use super::record::{HopRecord, JourneyRecord};

/// A namespace box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Stable key for ids and tests: `host`, `sandbox`, `guest`, `other-1` ...
    pub key: String,
    pub kind: ZoneKind,
    /// The namespace's name (`e2b-host`, `ns-1`), or `microVM` for the guest.
    pub name: String,
    pub caption: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneKind {
    Host,
    Sandbox,
    Guest,
    /// A namespace off the expected path (a packet routed to another sandbox's slot).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// The orchestrator's socket.
    Client,
    Device,
    /// The DNAT step (host IP → guest IP) in the sandbox's namespace.
    Nat,
    Bridge,
    /// The guest's `eth0`, where envd listens.
    Guest,
}

/// How far a leg got, at one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// No event shows the packet here, nor anywhere after.
    Unreached,
    /// Not observed here, but observed further on, so it went through.
    Passed,
    /// An event shows the packet here.
    Seen,
}

/// A device (or the NAT step, or an endpoint), in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Stable key: `client`, `veth`, `eth0`, `nat`, `bridge-1`, `tap`, `guest`, `other-1-2`.
    pub key: String,
    pub zone: usize,
    pub kind: NodeKind,
    pub label: String,
    /// Addresses under the label; lines separated by `\n`.
    pub sub: Option<String>,
    pub request: Reach,
    pub reply: Reach,
}

/// Which lane: the request (left to right) or the reply (right to left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Request,
    Reply,
}

impl Lane {
    pub fn name(self) -> &'static str {
        match self {
            Lane::Request => "request",
            Lane::Reply => "reply",
        }
    }

    fn of(leg: Leg) -> Self {
        match leg {
            Leg::Reply => Lane::Reply,
            Leg::Request | Leg::Control => Lane::Request,
        }
    }
}

/// A netfilter hook on one lane, between `nodes[edge]` and `nodes[edge + 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub lane: Lane,
    /// `PREROUTING`, `FORWARD` ...
    pub hook: String,
    pub zone: usize,
    pub edge: usize,
    pub reach: Reach,
    /// On the expected path; an unexpected hook is only drawn when seen.
    pub expected: bool,
}

impl Mark {
    /// The short label drawn on the lane.
    pub fn short(&self) -> &str {
        match self.hook.as_str() {
            "PREROUTING" => "PRE",
            "INPUT" => "IN",
            "FORWARD" => "FWD",
            "OUTPUT" => "OUT",
            "POSTROUTING" => "POST",
            other => other,
        }
    }
}

/// A place on the path: a node or a hook mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spot {
    Node(usize),
    Mark(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The path is broken here.
    Bad,
    /// The path works, something is off (a late reply, an undecided verdict).
    Unsure,
}

impl Severity {
    /// What the callouts put before the title.
    pub fn symbol(self) -> &'static str {
        match self {
            Severity::Bad => "✗",
            Severity::Unsure => "⚠",
        }
    }
}

/// Where and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub spot: Spot,
    pub lane: Lane,
    pub zone: usize,
    pub severity: Severity,
    /// One line: the outcome and the kernel's reason.
    pub title: String,
    /// Where, the rule, the actors, the divergence: one line each.
    pub lines: Vec<String>,
}

/// Everything the diagrams draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Places {
    pub zones: Vec<Zone>,
    pub nodes: Vec<Node>,
    pub marks: Vec<Mark>,
    pub failure: Option<Failure>,
}

impl Places {
    pub fn zone_nodes(&self, zone: usize) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().enumerate().filter(move |(_, n)| n.zone == zone)
    }

    /// The marks drawn on one lane of one edge, in the order the packet meets them.
    pub fn edge_marks(&self, edge: usize, lane: Lane) -> Vec<usize> {
        (0..self.marks.len())
            .filter(|&i| {
                let m = &self.marks[i];
                m.edge == edge && m.lane == lane && (m.expected || m.reach == Reach::Seen)
            })
            .collect()
    }

    /// Consecutive nodes of the main path (zones off the path are not joined to it).
    pub fn main_pairs(&self) -> Vec<(usize, usize)> {
        let main: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.zones[self.nodes[i].zone].kind != ZoneKind::Other)
            .collect();
        main.windows(2).map(|w| (w[0], w[1])).collect()
    }

    pub fn node(&self, key: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.key == key)
    }

    pub fn zone(&self, key: &str) -> Option<usize> {
        self.zones.iter().position(|z| z.key == key)
    }
}

/// The places of one record.
pub fn places(r: &JourneyRecord) -> Places {
    let names = Names::of(r);
    let mut p = skeleton(r, &names);
    add_unexpected_marks(&mut p, &names, r);
    let spots: Vec<Option<(Lane, Spot)>> = r.hops.iter().map(|h| spot_of(&p, &names, h)).collect();
    // A route lookup or a neighbour event names a device the packet may never reach.
    let moved = |h: &HopRecord| !matches!(h.point.as_str(), "route" | "neigh");
    for (h, s) in r.hops.iter().zip(&spots) {
        if let Some(s) = s.filter(|_| moved(h)) {
            set_reach(&mut p, s, Reach::Seen);
        }
    }
    nat_reach(&mut p, r, &names);
    guest_reach(&mut p, r, &spots);
    p.failure = failure(&p, &names, r, &spots);
    // A drop at a hook is an event there, even when no slot of that hook saw the packet.
    if let Some(Failure {
        spot: Spot::Mark(m), ..
    }) = p.failure
    {
        p.marks[m].reach = Reach::Seen;
    }
    infer_passed(&mut p);
    p
}

/// The namespaces and devices a record names.
struct Names {
    host: String,
    sandbox: String,
    /// The sandbox side of the veth pair (`eth0`).
    ingress: String,
    tap: String,
    veth: String,
    bridges: Vec<String>,
    /// Namespaces off the path, each with the devices seen there.
    others: Vec<(String, Vec<String>)>,
}

impl Names {
    fn of(r: &JourneyRecord) -> Self {
        let sandbox = r
            .sandbox
            .as_ref()
            .map(|s| s.netns.clone())
            .or_else(|| r.drop.as_ref().and_then(|d| d.netns.clone()))
            .unwrap_or_else(|| "sandbox".into());
        let tap = r.sandbox.as_ref().map_or("tap0".into(), |s| s.tap.clone());
        let host = host_name(r, &sandbox);
        let in_sandbox = |h: &&HopRecord| h.netns == sandbox;
        let ingress = r
            .hops
            .iter()
            .filter(in_sandbox)
            .filter(|h| h.leg == Leg::Request && matches!(h.point.as_str(), "tcx/ingress" | "receive"))
            .find_map(|h| h.device.clone().filter(|d| *d != tap))
            .unwrap_or_else(|| "eth0".into());
        let veth = r
            .hops
            .iter()
            .filter(|h| h.netns == host && h.point != "socket")
            .find_map(|h| h.device.clone().filter(|d| d != "lo"))
            .unwrap_or_else(|| default_veth(&sandbox));
        let bridges = bridges(r, &sandbox, &[&ingress, &tap]);
        let others = others(r, &[&host, &sandbox]);
        Self {
            host,
            sandbox,
            ingress,
            tap,
            veth,
            bridges,
            others,
        }
    }
}

/// A diagram stays readable: at most this many bridges, namespaces off the path, and devices
/// in each of those (a record from a strange host, or a crafted one, may name many).
const MAX_EXTRA: usize = 4;

/// Devices of the sandbox's namespace that are neither its veth end nor its tap: bridges.
fn bridges(r: &JourneyRecord, sandbox: &str, known: &[&str]) -> Vec<String> {
    let seen = r
        .hops
        .iter()
        .filter(|h| h.netns == sandbox)
        .filter_map(|h| h.device.clone());
    let dropped = r.drop.iter().filter(|d| d.netns.as_deref() == Some(sandbox));
    let dropped = dropped
        .flat_map(|d| [d.device.clone(), d.out_device.clone()])
        .flatten();
    let mut out: Vec<String> = Vec::new();
    for d in seen.chain(dropped) {
        if !known.contains(&d.as_str()) && d != "lo" && !out.contains(&d) && out.len() < MAX_EXTRA {
            out.push(d);
        }
    }
    out
}

/// Namespaces other than `known` that hops were seen in, each with its devices.
fn others(r: &JourneyRecord, known: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for h in r.hops.iter().filter(|h| !known.contains(&h.netns.as_str())) {
        let i = match out.iter().position(|(n, _)| *n == h.netns) {
            Some(i) => i,
            None if out.len() < MAX_EXTRA => {
                out.push((h.netns.clone(), Vec::new()));
                out.len() - 1
            }
            None => continue,
        };
        let dev = h.device.clone().unwrap_or_else(|| "-".into());
        if !out[i].1.contains(&dev) && out[i].1.len() < MAX_EXTRA {
            out[i].1.push(dev);
        }
    }
    out
}

/// The host side is where the client's packets start: the namespace of the first hop outside
/// the sandbox's (the drop's or the route's namespace when no packet was seen).
fn host_name(r: &JourneyRecord, sandbox: &str) -> String {
    let starts = |h: &&HopRecord| matches!(h.point.as_str(), "socket" | "nf/OUTPUT");
    let outside = |h: &&HopRecord| h.netns != sandbox;
    r.hops
        .iter()
        .filter(outside)
        .find(starts)
        .or_else(|| r.hops.iter().find(outside))
        .map(|h| h.netns.clone())
        .or_else(|| {
            let named = [
                r.drop.as_ref().and_then(|d| d.netns.clone()),
                r.unreachable.as_ref().and_then(|u| u.netns.clone()),
            ];
            named.into_iter().flatten().find(|n| n != sandbox)
        })
        .unwrap_or_else(|| "host".into())
}

/// E2B pairs `ns-N` with `veth-N`; elsewhere the name is unknown.
fn default_veth(sandbox: &str) -> String {
    match sandbox.strip_prefix("ns-") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("veth-{n}"),
        _ => "veth".into(),
    }
}

/// Zones, nodes and the expected hooks, nothing reached yet.
fn skeleton(r: &JourneyRecord, n: &Names) -> Places {
    let mut p = Places {
        zones: vec![
            zone("host", ZoneKind::Host, &n.host, "host side"),
            zone("sandbox", ZoneKind::Sandbox, &n.sandbox, "sandbox namespace"),
            zone("guest", ZoneKind::Guest, "microVM", "guest"),
        ],
        nodes: Vec::new(),
        marks: Vec::new(),
        failure: None,
    };
    let sb = r.sandbox.as_ref();
    let port = r
        .target
        .as_deref()
        .and_then(|t| t.rsplit_once(':'))
        .map(|(_, p)| p);
    let guest_ip = sb.map(|s| s.guest_ip.as_str());
    node(
        &mut p,
        "client",
        0,
        NodeKind::Client,
        "orchestrator",
        r.client.clone(),
    );
    node(&mut p, "veth", 0, NodeKind::Device, &n.veth, None);
    node(&mut p, "eth0", 1, NodeKind::Device, &n.ingress, None);
    let nat = sb.map(|s| format!("{}\n→ {}", s.host_ip, s.guest_ip));
    node(&mut p, "nat", 1, NodeKind::Nat, "DNAT", nat);
    for (i, b) in n.bridges.iter().enumerate() {
        node(&mut p, &format!("bridge-{}", i + 1), 1, NodeKind::Bridge, b, None);
    }
    node(&mut p, "tap", 1, NodeKind::Device, &n.tap, None);
    let envd = match (guest_ip, port) {
        (Some(ip), Some(port)) => Some(format!("{ip}\nenvd :{port}")),
        (Some(ip), None) => Some(format!("{ip}\nenvd")),
        (None, _) => Some("envd".into()),
    };
    node(&mut p, "guest", 2, NodeKind::Guest, "eth0", envd);
    for (i, (ns, devices)) in n.others.iter().enumerate() {
        let key = format!("other-{}", i + 1);
        p.zones.push(zone(&key, ZoneKind::Other, ns, "off the path"));
        let z = p.zones.len() - 1;
        for (j, d) in devices.iter().enumerate() {
            node(&mut p, &format!("{key}-{}", j + 1), z, NodeKind::Device, d, None);
        }
    }
    expected_marks(&mut p);
    p
}

fn zone(key: &str, kind: ZoneKind, name: &str, caption: &'static str) -> Zone {
    Zone {
        key: key.into(),
        kind,
        name: name.into(),
        caption,
    }
}

fn node(p: &mut Places, key: &str, zone: usize, kind: NodeKind, label: &str, sub: Option<String>) {
    p.nodes.push(Node {
        key: key.into(),
        zone,
        kind,
        label: label.into(),
        sub,
        request: Reach::Unreached,
        reply: Reach::Unreached,
    });
}

/// The hooks each leg crosses on E2B's path, on the edge where it crosses them: the SYN is
/// DNATed in PREROUTING, the SYN-ACK un-DNATed in POSTROUTING.
fn expected_marks(p: &mut Places) {
    let at = |p: &Places, key: &str| p.nodes.iter().position(|n| n.key == key).expect("skeleton node");
    let (client, eth0, nat) = (at(p, "client"), at(p, "eth0"), at(p, "nat"));
    let host = [
        (Lane::Request, "OUTPUT"),
        (Lane::Request, "POSTROUTING"),
        (Lane::Reply, "PREROUTING"),
        (Lane::Reply, "INPUT"),
    ];
    for (lane, hook) in host {
        mark(p, lane, hook, 0, client, true);
    }
    mark(p, Lane::Request, "PREROUTING", 1, eth0, true);
    mark(p, Lane::Request, "FORWARD", 1, nat, true);
    mark(p, Lane::Request, "POSTROUTING", 1, nat, true);
    mark(p, Lane::Reply, "PREROUTING", 1, nat, true);
    mark(p, Lane::Reply, "FORWARD", 1, nat, true);
    mark(p, Lane::Reply, "POSTROUTING", 1, eth0, true);
}

fn mark(p: &mut Places, lane: Lane, hook: &str, zone: usize, edge: usize, expected: bool) -> usize {
    p.marks.push(Mark {
        lane,
        hook: hook.into(),
        zone,
        edge,
        reach: Reach::Unreached,
        expected,
    });
    p.marks.len() - 1
}

fn zone_of(p: &Places, n: &Names, netns: &str) -> Option<usize> {
    if netns == n.sandbox {
        return Some(1);
    }
    if netns == n.host {
        return Some(0);
    }
    let i = n.others.iter().position(|(o, _)| o == netns)?;
    p.zone(&format!("other-{}", i + 1))
}

/// The node of a device in a zone; the zone's first device when the device is not one of its
/// nodes (the NAT step and the client are not devices).
fn device_node(p: &Places, zone: usize, device: Option<&str>) -> Option<usize> {
    let mut nodes = p.zone_nodes(zone);
    let named = device.and_then(|d| {
        p.zone_nodes(zone)
            .find(|(_, x)| x.label == d && !matches!(x.kind, NodeKind::Nat | NodeKind::Client))
    });
    named
        .or_else(|| nodes.find(|(_, x)| !matches!(x.kind, NodeKind::Nat | NodeKind::Client)))
        .map(|(i, _)| i)
}

/// Where one hop is on the diagram.
fn spot_of(p: &Places, n: &Names, h: &HopRecord) -> Option<(Lane, Spot)> {
    let zone = zone_of(p, n, &h.netns)?;
    let lane = hop_lane(h);
    if let Some(hook) = h.point.strip_prefix("nf/")
        && let Some(m) = hook_mark(p, zone, lane, hook)
    {
        return Some((lane, Spot::Mark(m)));
    }
    if zone == 0 && matches!(h.point.as_str(), "socket" | "recv-reset" | "send-reset") {
        return Some((lane, Spot::Node(0)));
    }
    device_node(p, zone, h.device.as_deref()).map(|i| (lane, Spot::Node(i)))
}

/// The lane of a hop. Socket events are control hops: the one that completes the handshake,
/// and a received RST, are the reply arriving.
fn hop_lane(h: &HopRecord) -> Lane {
    let detail = h.detail.as_deref().unwrap_or_default();
    let arrival = h.point == "recv-reset" || (h.point == "socket" && detail.ends_with("→ ESTABLISHED"));
    if arrival { Lane::Reply } else { Lane::of(h.leg) }
}

fn hook_mark(p: &Places, zone: usize, lane: Lane, hook: &str) -> Option<usize> {
    p.marks
        .iter()
        .position(|m| m.zone == zone && m.lane == lane && m.hook == hook)
}

fn set_reach(p: &mut Places, (lane, spot): (Lane, Spot), reach: Reach) {
    let slot = match spot {
        Spot::Mark(m) => &mut p.marks[m].reach,
        Spot::Node(i) => match lane {
            Lane::Request => &mut p.nodes[i].request,
            Lane::Reply => &mut p.nodes[i].reply,
        },
    };
    *slot = (*slot).max(reach);
}

/// Hooks off the expected path that a hop (or the drop) names get marks of their own.
fn add_unexpected_marks(p: &mut Places, n: &Names, r: &JourneyRecord) {
    let hops = r.hops.iter().filter_map(|h| {
        let hook = h.point.strip_prefix("nf/")?;
        Some((zone_of(p, n, &h.netns)?, hop_lane(h), hook.to_string()))
    });
    let dropped = r.drop.as_ref().and_then(|d| {
        let lane = match d.direction {
            Direction::Request => Lane::Request,
            Direction::Reply => Lane::Reply,
        };
        Some((
            zone_of(p, n, d.netns.as_deref()?)?,
            lane,
            d.hook?.name().to_string(),
        ))
    });
    let wanted: Vec<(usize, Lane, String)> = hops.chain(dropped).collect();
    for (zone, lane, hook) in wanted {
        if hook_mark(p, zone, lane, &hook).is_none() {
            unexpected_mark(p, zone, lane, &hook);
        }
    }
}

/// Unexpected hooks seen on the way become marks of their own: in the sandbox's namespace on
/// the edge after the NAT step, on the host side on the client's edge.
fn unexpected_mark(p: &mut Places, zone: usize, lane: Lane, hook: &str) -> Option<usize> {
    let edge = match p.zones[zone].kind {
        ZoneKind::Host => 0,
        ZoneKind::Sandbox => p.nodes.iter().position(|n| n.kind == NodeKind::Nat)?,
        _ => return None,
    };
    Some(mark(p, lane, hook, zone, edge, false))
}

/// The NAT step has no event of its own: the SYN's new destination shows the DNAT, the
/// SYN-ACK's restored source the reverse.
fn nat_reach(p: &mut Places, r: &JourneyRecord, n: &Names) {
    let Some(sb) = &r.sandbox else { return };
    let nat = p
        .nodes
        .iter()
        .position(|x| x.kind == NodeKind::Nat)
        .expect("nat node");
    let to_guest = format!("→ {}:", sb.guest_ip);
    let from_host = format!("{}:", sb.host_ip);
    let tuple = |h: &HopRecord| h.tuple.clone().unwrap_or_default();
    let dnat = r
        .hops
        .iter()
        .any(|h| h.leg == Leg::Request && h.netns == n.sandbox && tuple(h).contains(&to_guest));
    let undnat = r.hops.iter().any(|h| {
        h.leg == Leg::Reply && (h.netns == n.sandbox || h.netns == n.host) && tuple(h).starts_with(&from_host)
    });
    if dnat {
        p.nodes[nat].request = Reach::Seen;
    }
    if undnat {
        p.nodes[nat].reply = Reach::Seen;
    }
}

/// No event comes from inside the guest: it is reached when the VMM read the SYN or a reply
/// came out of the tap, and it answered when a reply came out of the tap.
fn guest_reach(p: &mut Places, r: &JourneyRecord, spots: &[Option<(Lane, Spot)>]) {
    let guest = p
        .nodes
        .iter()
        .position(|n| n.kind == NodeKind::Guest)
        .expect("guest node");
    let tap = p.nodes.iter().position(|n| n.key == "tap").expect("tap node");
    let from_tap = spots.contains(&Some((Lane::Reply, Spot::Node(tap))));
    let read = r
        .hops
        .iter()
        .zip(spots)
        .any(|(h, s)| h.point == "consumed" && *s == Some((Lane::Request, Spot::Node(tap))));
    let by_guest = r.reset.as_ref().is_some_and(|x| x.by == ResetBy::Guest);
    let answered = from_tap || by_guest || matches!(r.outcome, Outcome::Connected | Outcome::Late);
    if answered || read || r.outcome == Outcome::NoReply {
        p.nodes[guest].request = Reach::Passed;
    }
    if answered {
        p.nodes[guest].reply = Reach::Passed;
    }
}

/// Along each lane, what lies before the furthest place reached was passed. The request
/// lane's order is left to right, the reply lane's right to left; places off the path take
/// no part.
fn infer_passed(p: &mut Places) {
    for lane in [Lane::Request, Lane::Reply] {
        let mut order = lane_order(p, lane);
        if lane == Lane::Reply {
            order.reverse();
        }
        let reach = |p: &Places, s: Spot| match s {
            Spot::Mark(m) => p.marks[m].reach,
            Spot::Node(i) => match lane {
                Lane::Request => p.nodes[i].request,
                Lane::Reply => p.nodes[i].reply,
            },
        };
        let Some(last) = order.iter().rposition(|s| reach(p, *s) > Reach::Unreached) else {
            continue;
        };
        for &s in &order[..last] {
            set_reach(p, (lane, s), Reach::Passed);
        }
    }
}

/// The main path's places on one lane, left to right: nodes, and between them the expected
/// marks in the order this lane meets them.
fn lane_order(p: &Places, lane: Lane) -> Vec<Spot> {
    let main = |i: usize| {
        matches!(
            p.zones[p.nodes[i].zone].kind,
            ZoneKind::Host | ZoneKind::Sandbox | ZoneKind::Guest
        )
    };
    let mut out = Vec::new();
    for i in (0..p.nodes.len()).filter(|&i| main(i)) {
        out.push(Spot::Node(i));
        let mut marks: Vec<usize> = p
            .edge_marks(i, lane)
            .into_iter()
            .filter(|&m| p.marks[m].expected)
            .collect();
        if lane == Lane::Reply {
            marks.reverse();
        }
        out.extend(marks.into_iter().map(Spot::Mark));
    }
    out
}

/// The failure's place: the failing hop's, or where the verdict's own record puts it.
fn failure(p: &Places, n: &Names, r: &JourneyRecord, spots: &[Option<(Lane, Spot)>]) -> Option<Failure> {
    if r.outcome == Outcome::Connected {
        return None;
    }
    let at = verdict_spot(p, n, r).or_else(|| r.failing_hop.and_then(|i| spots.get(i).copied().flatten()));
    let (lane, spot) = at?;
    let zone = match spot {
        Spot::Node(i) => p.nodes[i].zone,
        Spot::Mark(m) => p.marks[m].zone,
    };
    let severity = match r.outcome {
        Outcome::Late | Outcome::Unknown => Severity::Unsure,
        _ => Severity::Bad,
    };
    Some(Failure {
        spot,
        lane,
        zone,
        severity,
        title: title(r),
        lines: failure_lines(r),
    })
}

/// Where the verdict's record (drop, reset, unreachable, queued) puts the failure.
fn verdict_spot(p: &Places, n: &Names, r: &JourneyRecord) -> Option<(Lane, Spot)> {
    let guest = p.nodes.iter().position(|x| x.kind == NodeKind::Guest)?;
    let at = |netns: &Option<String>, device: &Option<String>, lane: Lane| {
        let zone = zone_of(p, n, netns.as_deref()?)?;
        device_node(p, zone, device.as_deref()).map(|i| (lane, Spot::Node(i)))
    };
    match r.outcome {
        Outcome::Dropped => {
            let d = r.drop.as_ref()?;
            let lane = match d.direction {
                Direction::Request => Lane::Request,
                Direction::Reply => Lane::Reply,
            };
            let zone = zone_of(p, n, d.netns.as_deref()?)?;
            let hooked = d.hook.and_then(|h| hook_mark(p, zone, lane, h.name()));
            hooked
                .map(|m| (lane, Spot::Mark(m)))
                .or_else(|| at(&d.netns, &d.device, lane))
        }
        Outcome::Reset => match r.reset.as_ref()? {
            x if x.by == ResetBy::Guest => Some((Lane::Reply, Spot::Node(guest))),
            x => at(&x.netns, &x.device, Lane::Reply),
        },
        Outcome::Unreachable => {
            let u = r.unreachable.as_ref()?;
            at(&u.netns, &u.device, Lane::Request).or(Some((Lane::Request, Spot::Node(0))))
        }
        Outcome::Queued => {
            let q = r.queued.as_ref()?;
            at(&q.netns, &q.device, Lane::Request)
        }
        Outcome::NoReply | Outcome::Late => Some((Lane::Reply, Spot::Node(guest))),
        // It left the host side by another sandbox's veth: the host side is where it went wrong.
        Outcome::Misdirected => Some((Lane::Request, Spot::Node(0))),
        Outcome::Connected | Outcome::Unknown => None,
    }
}

/// The outcome and its reason, one line.
fn title(r: &JourneyRecord) -> String {
    let word = r.outcome.name().replace('_', " ").to_uppercase();
    let why = match r.outcome {
        Outcome::Dropped => r.drop.as_ref().map(|d| d.reason.clone()),
        Outcome::Reset => r
            .reset
            .as_ref()
            .map(|x| format!("RST from the {}", by_name(x.by))),
        Outcome::Unreachable => r.unreachable.as_ref().map(|u| {
            let state = u.state.as_deref().or(u.errno.as_deref()).unwrap_or_default();
            format!("{} {} {state}", unreachable_name(u), u.address)
                .trim_end()
                .to_string()
        }),
        Outcome::Queued => r.queued.as_ref().map(|q| {
            let reader = q.reader.as_ref().map_or("no reader".to_string(), |x| {
                format!("reader {} pid {} state {}", x.comm, x.pid, x.state)
            });
            format!("waits in the {} queue, {reader}", queue_name(q))
        }),
        Outcome::NoReply => Some("the guest never answered".into()),
        Outcome::Late => r.late.as_ref().map(|l| {
            format!(
                "reply after {:.1} ms, {:.1} ms after the client gave up",
                l.reply_ms, l.after_timeout_ms
            )
        }),
        Outcome::Misdirected => r.misdirected.as_ref().map(|m| {
            format!(
                "went to {} instead",
                m.netns.as_deref().unwrap_or("another sandbox's namespace")
            )
        }),
        Outcome::Connected | Outcome::Unknown => None,
    };
    match why {
        Some(w) => format!("{word} · {w}"),
        None => word,
    }
}

fn by_name(by: ResetBy) -> &'static str {
    match by {
        ResetBy::Guest => "guest",
        ResetBy::Stack => "kernel stack",
        ResetBy::Peer => "peer",
    }
}

fn unreachable_name(u: &super::record::UnreachableRecord) -> &'static str {
    use tracer_model::verdict::UnreachableKind as K;
    match u.kind {
        K::NoRoute => "no route to",
        K::Neighbour => "neighbour",
        K::Prohibited => "prohibited:",
        K::Blackhole => "blackhole route to",
        K::RoutedElsewhere => "routed off the host side:",
        K::HostSideUnknown => "host side not known for",
    }
}

fn queue_name(q: &super::record::QueuedRecord) -> &'static str {
    use tracer_model::verdict::QueueKind as K;
    match q.queue {
        K::Tap => "tap",
        K::Qdisc => "qdisc",
    }
}

/// Where it failed, the rule and its chain, the actors and the divergence: one line each.
fn failure_lines(r: &JourneyRecord) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = &r.drop {
        let place = [
            d.netns.clone(),
            match (&d.device, &d.out_device) {
                (Some(i), Some(o)) => Some(format!("{i} → {o}")),
                (i, o) => i.clone().or(o.clone()),
            },
            d.hook.map(|h| h.name().to_string()),
            match (&d.table, &d.chain) {
                (Some(t), Some(c)) => Some(format!("table {t}, chain {c}")),
                (Some(t), None) => Some(format!("table {t}")),
                (None, c) => c.as_ref().map(|c| format!("chain {c}")),
            },
            d.function.as_ref().map(|f| format!("in {f}")),
        ];
        out.push(place.into_iter().flatten().collect::<Vec<_>>().join(" · "));
        match (&d.rule, &d.rule_note) {
            (Some(rule), _) => out.push(format!("rule: {rule}")),
            (None, Some(note)) => out.push(format!("rule: {note}")),
            _ => {}
        }
    }
    let place = |netns: &Option<String>, device: &Option<String>| {
        let parts: Vec<&str> = [netns.as_deref(), device.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        parts.join(" · ")
    };
    if let Some(x) = &r.reset {
        out.push(place(&x.netns, &x.device));
    }
    if let Some(u) = &r.unreachable {
        out.push(place(&u.netns, &u.device));
    }
    if let Some(q) = &r.queued {
        out.push(place(&q.netns, &q.device));
    }
    for a in &r.actors {
        out.push(actor_line(a));
    }
    if let Some(d) = &r.divergence {
        out.push(divergence_line(d));
    }
    out.retain(|l| !l.is_empty());
    out
}

/// `rule in ns-1 · eth0: <text>`.
pub fn actor_line(a: &super::record::ActorRecord) -> String {
    let place: Vec<&str> = [a.netns.as_deref(), a.device.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let kind = a.kind.as_deref().unwrap_or("actor");
    let at = if place.is_empty() {
        String::new()
    } else {
        format!(" in {}", place.join(" · "))
    };
    format!("{kind}{at}: {}", a.text.as_deref().unwrap_or("?"))
}

/// `diverged at hop #3: device expected tap0, observed br0`.
pub fn divergence_line(d: &super::record::DivergenceRecord) -> String {
    let v = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "?".into(),
        other => other.to_string(),
    };
    let hop = d.hop.map(|h| format!(" at hop #{h}")).unwrap_or_default();
    format!(
        "diverged{hop}: {} expected {}, observed {}",
        d.field.as_deref().unwrap_or("?"),
        v(&d.expected),
        v(&d.observed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn mark_of(p: &Places, zone: &str, lane: Lane, hook: &str) -> usize {
        let z = p.zone(zone).unwrap();
        hook_mark(p, z, lane, hook).unwrap_or_else(|| panic!("no {hook} mark in {zone}"))
    }

    fn keys(p: &Places) -> Vec<&str> {
        p.nodes.iter().map(|n| n.key.as_str()).collect()
    }

    #[test]
    fn a_forward_drop_reaches_forward_and_no_further() {
        let p = places(&fixtures::record("forward-drop"));
        let zones: Vec<(&str, &str)> = p
            .zones
            .iter()
            .map(|z| (z.key.as_str(), z.name.as_str()))
            .collect();
        assert_eq!(
            zones,
            [("host", "e2b-host"), ("sandbox", "ns-1"), ("guest", "microVM")]
        );
        assert_eq!(keys(&p), ["client", "veth", "eth0", "nat", "tap", "guest"]);
        assert_eq!(p.node("veth").unwrap().label, "veth-1");
        let fwd = mark_of(&p, "sandbox", Lane::Request, "FORWARD");
        let f = p.failure.as_ref().expect("a failure");
        assert_eq!(
            (f.spot, f.lane, f.zone, f.severity),
            (Spot::Mark(fwd), Lane::Request, 1, Severity::Bad)
        );
        assert_eq!(f.title, "DROPPED · NETFILTER_DROP");
        assert!(
            f.lines
                .iter()
                .any(|l| l == "rule: -A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP"),
            "{:?}",
            f.lines
        );
        assert_eq!(p.marks[fwd].reach, Reach::Seen);
        assert_eq!(
            p.marks[mark_of(&p, "sandbox", Lane::Request, "PREROUTING")].reach,
            Reach::Seen
        );
        assert_eq!(
            p.marks[mark_of(&p, "sandbox", Lane::Request, "POSTROUTING")].reach,
            Reach::Unreached
        );
        assert_eq!(
            p.node("nat").unwrap().request,
            Reach::Seen,
            "the DNATed tuple shows the NAT step"
        );
        // The route lookup named tap0, but the SYN never got there.
        assert_eq!(p.node("tap").unwrap().request, Reach::Unreached);
        assert_eq!(p.node("guest").unwrap().request, Reach::Unreached);
        assert!(
            p.nodes.iter().all(|n| n.reply == Reach::Unreached),
            "no reply: {:?}",
            p.nodes
        );
    }

    #[test]
    fn a_reply_drop_shows_the_whole_request_and_half_the_reply() {
        let p = places(&fixtures::record("reply-drop"));
        let fwd = mark_of(&p, "sandbox", Lane::Reply, "FORWARD");
        let f = p.failure.as_ref().unwrap();
        assert_eq!((f.spot, f.lane, f.zone), (Spot::Mark(fwd), Lane::Reply, 1));
        assert!(
            p.nodes.iter().all(|n| n.request >= Reach::Passed),
            "{:?}",
            p.nodes
        );
        assert_eq!(
            p.node("guest").unwrap().reply,
            Reach::Passed,
            "the guest answered"
        );
        assert_eq!(p.node("tap").unwrap().reply, Reach::Seen);
        assert_eq!(
            p.marks[mark_of(&p, "sandbox", Lane::Reply, "PREROUTING")].reach,
            Reach::Seen
        );
        assert_eq!(
            p.marks[mark_of(&p, "sandbox", Lane::Reply, "POSTROUTING")].reach,
            Reach::Unreached
        );
        assert_eq!(p.node("eth0").unwrap().reply, Reach::Unreached);
        assert_eq!(p.node("client").unwrap().reply, Reach::Unreached);
    }

    #[test]
    fn every_outcome_has_its_place() {
        type Case = (
            &'static str,
            JourneyRecord,
            Option<(&'static str, Lane)>,
            Severity,
        );
        let cases: [Case; 11] = [
            ("connected", fixtures::record("connected"), None, Severity::Bad),
            (
                "reset",
                fixtures::record("guest-no-listener"),
                Some(("node-guest", Lane::Reply)),
                Severity::Bad,
            ),
            (
                "unreachable",
                fixtures::record("no-reader"),
                Some(("node-tap", Lane::Request)),
                Severity::Bad,
            ),
            (
                "queued",
                fixtures::record("vmm-stopped"),
                Some(("node-tap", Lane::Request)),
                Severity::Bad,
            ),
            (
                "late",
                fixtures::record("slow-guest"),
                Some(("node-guest", Lane::Reply)),
                Severity::Unsure,
            ),
            (
                "drop at a device",
                fixtures::record("tap-queue-full"),
                Some(("node-tap", Lane::Request)),
                Severity::Bad,
            ),
            (
                "host INPUT",
                fixtures::record("host-input-drop"),
                Some(("hook-INPUT", Lane::Reply)),
                Severity::Bad,
            ),
            (
                "bridge",
                fixtures::record("bridge-tap-down"),
                Some(("node-bridge-1", Lane::Request)),
                Severity::Bad,
            ),
            (
                "wrong slot",
                fixtures::record("wrong-slot-route"),
                Some(("node-veth", Lane::Request)),
                Severity::Bad,
            ),
            (
                "no reply",
                fixtures::no_reply(),
                Some(("node-guest", Lane::Reply)),
                Severity::Bad,
            ),
            ("unknown", fixtures::old_unknown(), None, Severity::Bad),
        ];
        for (name, r, want, severity) in cases {
            let p = places(&r);
            let got = p.failure.as_ref().map(|f| {
                let spot = match f.spot {
                    Spot::Node(i) => format!("node-{}", p.nodes[i].key),
                    Spot::Mark(m) => format!("hook-{}", p.marks[m].hook),
                };
                (spot, f.lane)
            });
            assert_eq!(got, want.map(|(s, l)| (s.to_string(), l)), "{name}");
            if let Some(f) = &p.failure {
                assert_eq!(f.severity, severity, "{name}");
                assert!(
                    f.title
                        .starts_with(&r.outcome.name().replace('_', " ").to_uppercase()),
                    "{name}: {}",
                    f.title
                );
            }
        }
    }

    #[test]
    fn the_guest_is_reached_when_the_vmm_read_the_syn() {
        let p = places(&fixtures::no_reply());
        let guest = p.node("guest").unwrap();
        assert_eq!((guest.request, guest.reply), (Reach::Passed, Reach::Unreached));
        let p = places(&fixtures::record("connected"));
        assert!(
            p.nodes
                .iter()
                .all(|n| n.request >= Reach::Passed && n.reply >= Reach::Passed),
            "{:?}",
            p.nodes
        );
        assert!(
            p.marks.iter().all(|m| m.reach == Reach::Seen),
            "every hook seen: {:?}",
            p.marks
        );
    }

    #[test]
    fn a_bridge_and_a_namespace_off_the_path_get_places() {
        let p = places(&fixtures::record("bridge-tap-down"));
        assert_eq!(
            keys(&p),
            ["client", "veth", "eth0", "nat", "bridge-1", "tap", "guest"]
        );
        assert_eq!(p.node("bridge-1").unwrap().label, "br0");
        let p = places(&fixtures::record("wrong-slot-route"));
        let other = p.zone("other-1").expect("ns-2 has a box");
        assert_eq!(
            (p.zones[other].name.as_str(), p.zones[other].kind),
            ("ns-2", ZoneKind::Other)
        );
        assert_eq!(p.node("other-1-1").unwrap().request, Reach::Seen);
        assert_eq!(
            p.node("veth").unwrap().label,
            "veth-2",
            "the SYN left by the wrong veth"
        );
        assert_eq!(
            p.node("eth0").unwrap().request,
            Reach::Unreached,
            "and never reached ns-1"
        );
        assert!(
            p.marks
                .iter()
                .any(|m| !m.expected && m.hook == "PREROUTING" && m.zone == 0 && m.reach == Reach::Seen),
            "the SYN came back into the host: {:?}",
            p.marks
        );
    }

    #[test]
    fn old_records_without_newer_fields_still_have_places() {
        let p = places(&fixtures::old_unknown());
        assert_eq!(p.zones[0].name, "host");
        assert_eq!(p.zones[1].name, "sandbox");
        assert_eq!(p.node("veth").unwrap().label, "veth");
        assert!(p.failure.is_none());
        assert!(p.nodes.iter().all(|n| n.request == Reach::Unreached));
    }

    #[test]
    fn actors_and_divergence_join_the_failure() {
        let f = places(&fixtures::hostile()).failure.unwrap();
        assert!(
            f.lines.iter().any(|l| l.starts_with("rule in ns-1 · <script>")),
            "{:?}",
            f.lines
        );
        assert!(
            f.lines
                .iter()
                .any(|l| l.starts_with("diverged at hop #15: device expected tap0, observed <script>")),
            "{:?}",
            f.lines
        );
        // A malformed newer field is dropped, not the record.
        let mut v = fixtures::json("forward-drop");
        v["actors"] = serde_json::json!("not a list");
        v["divergence"] = serde_json::json!([1, 2]);
        let r = fixtures::from(v);
        assert!(r.actors.is_empty() && r.divergence.is_none());
        // Absent, they are not written either: old readers see the records they know.
        let out = serde_json::to_value(&r).unwrap();
        assert!(
            out.get("actors").is_none() && out.get("divergence").is_none(),
            "{out}"
        );
    }

    #[test]
    fn many_strange_devices_and_namespaces_are_capped() {
        let mut v = fixtures::json("forward-drop");
        let hops = v["hops"].as_array_mut().unwrap();
        let template = hops[8].clone();
        for i in 0..10 {
            let mut h = template.clone();
            h["device"] = serde_json::json!(format!("br{i}"));
            hops.push(h.clone());
            h["netns"] = serde_json::json!(format!("ns-{}", 100 + i));
            hops.push(h);
        }
        let p = places(&fixtures::from(v));
        assert_eq!(
            p.nodes.iter().filter(|n| n.kind == NodeKind::Bridge).count(),
            MAX_EXTRA
        );
        assert_eq!(
            p.zones.iter().filter(|z| z.kind == ZoneKind::Other).count(),
            MAX_EXTRA
        );
    }

    #[test]
    fn places_are_deterministic() {
        for name in ["forward-drop", "reply-drop", "wrong-slot-route"] {
            let r = fixtures::record(name);
            assert_eq!(places(&r), places(&r), "{name}");
        }
    }
}
