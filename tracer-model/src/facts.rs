//! Facts read when a journey is judged, not seen as events: the state the packet found where
//! it stopped. The tracer reads them (netlink, /proc) and hands them in; the verdict engine
//! only looks at them, and names the ones it rests on.
use std::net::Ipv4Addr;

use crate::tcp::{NUD_FAILED, NUD_INCOMPLETE};

/// What was read about the path's namespaces and its VMM.
#[derive(Debug, Clone, Default)]
pub struct ReadFacts {
    /// Everything that can act on a packet, per namespace of the path (see
    /// [`crate::engine::inventory`]).
    pub namespaces: Vec<crate::engine::inventory::NsInventory>,
    /// What can act on the client's connect() (its cgroup's BPF programs).
    pub client: Option<crate::engine::inventory::ClientInventory>,
    pub neighbours: Vec<NeighFact>,
    pub links: Vec<LinkFact>,
    /// The VMM that should read the tap; None when no process does.
    pub reader: Option<ReaderFact>,
    /// Destinations a namespace cannot route to, and the policy rule or the
    /// blackhole/prohibit/unreachable route that says so (read for the addresses of the path).
    pub route_blocks: Vec<RouteBlock>,
    /// What the kernel answered when a probe asked where it would go (a route get in the
    /// namespace it connects from), when that answer kept it from being sent.
    pub probe_route: Option<ProbeRoute>,
    /// Why the host side of the sandbox could not be verified (plain words), when it could not.
    pub host_side_problem: Option<String>,
    /// The client's request after a completed handshake got no answer (a probe attempt).
    pub request_unanswered: bool,
    /// Why the attempts could not be followed (the watcher could not zoom in, or no attempt
    /// came while it did): the verdict rests on what detection alone saw.
    pub not_followed: Option<String>,
}

/// A route get made before a probe connect, and where its answer leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeRoute {
    /// Where it was asked (the host side).
    pub netns: u32,
    pub netns_label: String,
    pub dst: Ipv4Addr,
    /// The route, or the errno the lookup failed with.
    pub answer: Result<RouteAnswer, i32>,
    /// The device the path expects the probe to leave by.
    pub expected_device: String,
    /// Where the route's device leads, when it is a veth into another namespace.
    pub leads_to: Option<PeerSide>,
}

/// A route as the kernel answered a route get.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteAnswer {
    /// unicast, local, broadcast, ...
    pub kind: String,
    pub table: u32,
    pub device: Option<String>,
    pub via: Option<Ipv4Addr>,
}

impl RouteAnswer {
    /// As `ip route get` would say it: "via 192.0.2.1 dev eth0 (table main)".
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.kind != "unicast" {
            s += &self.kind;
        }
        if let Some(v) = self.via {
            s += &format!(" via {v}");
        }
        if let Some(d) = &self.device {
            s += &format!(" dev {d}");
        }
        s += &format!(" (table {})", table_name(self.table));
        s.trim_start().to_string()
    }
}

/// The name `ip route` gives a table.
pub fn table_name(t: u32) -> String {
    match t {
        253 => "default".into(),
        254 => "main".into(),
        255 => "local".into(),
        n => n.to_string(),
    }
}

/// The far end of a veth: its namespace and device, and the sandbox that runs there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSide {
    pub netns: u32,
    pub netns_label: String,
    pub device: Option<String>,
    /// It is a sandbox's namespace (a VMM runs there, or it is named like an E2B slot).
    pub sandbox: bool,
    /// That sandbox's id, when known.
    pub sandbox_id: Option<String>,
}

/// A policy rule or a blackhole/prohibit/unreachable route that applies to `dst` in `netns`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteBlock {
    pub netns: u32,
    pub dst: Ipv4Addr,
    /// As `ip rule`/`ip route` would say it ("route unreachable 10.12.0.2/32 in table main").
    pub what: String,
}

/// A neighbour (ARP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NeighFact {
    pub netns: u32,
    pub device: String,
    pub address: Ipv4Addr,
    /// NUD bits.
    pub state: u32,
    pub mac: Option<String>,
}

impl NeighFact {
    /// ARP was never answered (INCOMPLETE) or gave up (FAILED).
    pub fn unresolved(&self) -> bool {
        self.state & (NUD_INCOMPLETE | NUD_FAILED) != 0
    }
}

/// A device's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkFact {
    pub netns: u32,
    pub name: String,
    /// Administratively up.
    pub up: bool,
    /// Carrier: for a veth, its peer is up; for a tap, a process has it open.
    pub carrier: bool,
    pub mac: Option<String>,
}

/// The VMM process, as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReaderFact {
    pub pid: u32,
    pub comm: String,
    /// `/proc/PID/stat` state: R running, S sleeping, D disk wait, T stopped, Z zombie.
    pub state: char,
    /// It holds the tap open.
    pub holds_tap: bool,
}

impl ReadFacts {
    pub fn link(&self, netns: u32, name: &str) -> Option<&LinkFact> {
        self.links.iter().find(|l| l.netns == netns && l.name == name)
    }

    /// Unresolved neighbour entries on a device, the one for `prefer` first.
    pub fn unresolved_on(&self, netns: u32, device: &str, prefer: Option<Ipv4Addr>) -> Option<&NeighFact> {
        let mut on_dev = self
            .neighbours
            .iter()
            .filter(|n| n.netns == netns && n.device == device && n.unresolved());
        let first = on_dev.clone().find(|n| Some(n.address) == prefer);
        first.or_else(|| on_dev.next())
    }

    pub fn route_block(&self, netns: u32, dst: Ipv4Addr) -> Option<&RouteBlock> {
        self.route_blocks
            .iter()
            .find(|b| b.netns == netns && b.dst == dst)
    }

    pub fn neighbour(&self, netns: u32, address: Ipv4Addr) -> Option<&NeighFact> {
        self.neighbours
            .iter()
            .find(|n| n.netns == netns && n.address == address)
    }
}

/// A fact a verdict rests on (reports say which were read, and where).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FactUsed {
    Neighbour(NeighFact),
    Link(LinkFact),
    Reader(ReaderFact),
    /// No process holds the tap.
    NoReader,
    /// The rule or route that keeps a namespace from routing to an address.
    RouteBlocker(RouteBlock),
    /// The route a probe would have taken, read before it was (not) sent.
    ProbeRoute(ProbeRoute),
    /// Why the host side could not be verified.
    HostSideProblem(String),
    /// The handshake completed, the request after it got no answer (the tracer follows
    /// handshakes only).
    RequestUnanswered,
    /// The attempts were not followed, and why: only detection's events are known.
    NotFollowed(String),
}
