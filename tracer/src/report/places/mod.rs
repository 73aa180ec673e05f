//! The places of a journey's path, for the diagrams: the namespaces (host side, the sandbox's,
//! the guest), the devices on the way, and the netfilter hooks of each leg between them, each
//! marked observed, passed or never reached, and the place where it failed. Computed once from
//! a record; the SVG (`svg.rs`) and Mermaid (`mermaid.rs`) renderers only draw it, so both
//! show the same thing.
//!
//! Built in three steps: `skeleton` (the names a record gives and the expected places),
//! `reach` (how far each lane got), `failure` (where and why it failed).
mod failure;
mod reach;
mod skeleton;

use tracer_model::journey::Leg;

use super::record::{HopRecord, JourneyRecord};
use failure::failure;
pub use failure::{actor_line, divergence_line};
use reach::{add_unexpected_marks, guest_reach, infer_passed, nat_reach, set_reach, spot_of};
use skeleton::{Names, skeleton};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;
    use reach::hook_mark;
    use skeleton::MAX_EXTRA;

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
