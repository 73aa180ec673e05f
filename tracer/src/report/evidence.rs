//! What a verdict rests on, typed: the kernel events that decided it and the facts read, each
//! an item with an id. Every clause of the summary and the fix names the items it is written
//! from; a clause whose facts are missing says what is unknown instead.
use serde::{Deserialize, Serialize};
use tracer_model::{
    engine::{Actor, ActorId},
    facts::FactUsed,
    journey::Journey,
    path::ExpectedPath,
    tcp::nud_name,
    verdict::Verdict,
};

use super::hops::hop_record;

/// One item of evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRecord {
    /// Its index in `evidence` (clauses refer to it).
    pub id: usize,
    /// `event` (a kernel event of the journey) or `read` (a fact read at decision time).
    pub kind: String,
    /// What it is about: `hop`, `divergence`, a fact's or an actor's kind (`firewall_rule`,
    /// `route`, `neighbour`, `sysctl`, `bpf_program`, `link`, `process`, ...).
    pub about: String,
    /// The hop of an event (index in `hops`).
    #[serde(default)]
    pub hop: Option<usize>,
    /// Where it was read: `netlink`, `iptables-save`, `nft`, `bpf`, `/proc`, `route get`.
    #[serde(default)]
    pub source: Option<String>,
    /// The item, one line, rendered from its fields.
    pub text: String,
}

impl EvidenceRecord {
    /// One line for people: `event: ...` or `read (source): ...`.
    pub fn line(&self) -> String {
        match (self.kind.as_str(), &self.source) {
            // Written by an older tracer: already one line.
            _ if self.about == "text" => self.text.clone(),
            ("event", _) => format!("event: {}", self.text),
            (_, Some(src)) => format!("read ({src}, at decision time): {}", self.text),
            _ => self.text.clone(),
        }
    }
}

/// Reads `evidence` as this version writes it, or as older versions did (one string each).
pub fn compat<'de, D>(d: D) -> Result<Vec<EvidenceRecord>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Typed(EvidenceRecord),
        Text(String),
    }
    let items = Vec::<Item>::deserialize(d)?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, it)| match it {
            Item::Typed(r) => r,
            Item::Text(text) => EvidenceRecord {
                id: i,
                kind: if text.starts_with("event") {
                    "event"
                } else {
                    "read"
                }
                .into(),
                about: "text".into(),
                hop: None,
                source: None,
                text,
            },
        })
        .collect())
}

/// The evidence of a verdict, with the ids clauses refer to.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub items: Vec<EvidenceRecord>,
    /// The event that decided the outcome (the failing hop).
    pub effect: Option<usize>,
    /// The hop where the packet first differed from its path.
    pub divergence: Option<usize>,
    /// One per actor, in the verdict's order.
    pub actors: Vec<usize>,
    /// One per read fact, in the verdict's order.
    pub facts: Vec<usize>,
}

impl Evidence {
    fn push(
        &mut self,
        kind: &str,
        about: &str,
        hop: Option<usize>,
        source: Option<&str>,
        text: String,
    ) -> usize {
        let id = self.items.len();
        self.items.push(EvidenceRecord {
            id,
            kind: kind.into(),
            about: about.into(),
            hop,
            source: source.map(String::from),
            text,
        });
        id
    }

    /// Collects the items of a verdict: its deciding event, its divergence, its actors and
    /// its facts.
    pub fn of(j: &Journey, v: &Verdict, path: Option<&ExpectedPath>) -> Self {
        let mut e = Self::default();
        if let Some(i) = v.failing_hop.filter(|i| *i < j.hops.len()) {
            e.effect = Some(e.push("event", "hop", Some(i), None, event_text(j, i)));
        }
        if let Some(d) = &v.divergence
            && d.hop < j.hops.len()
        {
            let text = format!(
                "{}: {} {}, expected {}",
                event_text(j, d.hop),
                field_name(d.field),
                d.observed,
                d.expected
            );
            e.divergence = Some(e.push("event", "divergence", Some(d.hop), None, text));
        }
        for a in &v.actors {
            let id = e.push("read", id_kind(&a.id), None, Some(actor_source(a)), actor_text(a));
            e.actors.push(id);
        }
        let label = |inode: u32| label_of(path, inode);
        for f in &v.facts {
            let (about, source, text) = fact_text(f, &label);
            let id = e.push("read", about, None, Some(source), text);
            e.facts.push(id);
        }
        e
    }
}

fn label_of(path: Option<&ExpectedPath>, inode: u32) -> String {
    match path {
        Some(p) if p.is_host(inode) => p
            .host_ns
            .as_ref()
            .map_or_else(|| format!("netns:{inode}"), |h| h.label()),
        Some(p) if p.sandbox_ns.inode == inode => p.sandbox_ns.label(),
        _ => format!("netns:{inode}"),
    }
}

fn event_text(j: &Journey, i: usize) -> String {
    let (leg, h) = &j.hops[i];
    let r = hop_record(*leg, h, j.first_ns, false);
    format!(
        "{} in {}{} at +{:.1} µs{}",
        r.point,
        r.netns,
        r.device.map(|d| format!(", device {d}")).unwrap_or_default(),
        r.t_us,
        r.detail.map(|d| format!(" ({d})")).unwrap_or_default()
    )
}

pub fn field_name(f: tracer_model::engine::Field) -> &'static str {
    use tracer_model::engine::Field;
    match f {
        Field::Namespace => "in namespace",
        Field::Point => "at",
        Field::Device => "device",
        Field::Destination => "destination",
        Field::Source => "source",
        Field::Conntrack => "conntrack",
        Field::Ttl => "TTL",
        Field::Mark => "mark",
        Field::L2Destination => "L2 destination",
    }
}

/// The `kind` tag of an actor's identity.
pub fn id_kind(id: &ActorId) -> &'static str {
    match id {
        ActorId::FirewallRule { .. } => "firewall_rule",
        ActorId::ChainPolicy { .. } => "chain_policy",
        ActorId::MissingRule { .. } => "missing_rule",
        ActorId::Route { .. } => "route",
        ActorId::MissingRoute { .. } => "missing_route",
        ActorId::PolicyRule { .. } => "policy_rule",
        ActorId::Address { .. } => "address",
        ActorId::Neighbour { .. } => "neighbour",
        ActorId::Link { .. } => "link",
        ActorId::Sysctl { .. } => "sysctl",
        ActorId::Qdisc { .. } => "qdisc",
        ActorId::TcFilter { .. } => "tc_filter",
        ActorId::BpfProgram { .. } => "bpf_program",
        ActorId::Vmm { .. } => "vmm",
        ActorId::Guest { .. } => "guest",
        ActorId::Conntrack { .. } => "conntrack",
    }
}

fn actor_source(a: &Actor) -> &'static str {
    match &a.id {
        ActorId::FirewallRule { source, .. } | ActorId::ChainPolicy { source, .. } => match source.as_str() {
            "nft" => "nft -j list ruleset",
            "iptables-legacy" => "iptables-legacy-save -c",
            _ => "iptables-nft-save -c",
        },
        ActorId::MissingRule { .. } => "iptables-save, nft",
        ActorId::BpfProgram { .. } => "bpf (prog query, link info), /proc/PID/fdinfo",
        ActorId::Sysctl { .. } => "/proc/sys",
        ActorId::Vmm { .. } => "/proc/PID/stat",
        ActorId::Guest { .. } => "the journey's events",
        _ => "netlink",
    }
}

fn actor_text(a: &Actor) -> String {
    let at = match (&a.netns, &a.device) {
        (Some(n), Some(d)) => format!(" in {n} ({d})"),
        (Some(n), None) => format!(" in {n}"),
        _ => String::new(),
    };
    format!("{}{at}, {}: {}", a.id.name(), a.place, a.does)
}

fn fact_text(f: &FactUsed, label: &dyn Fn(u32) -> String) -> (&'static str, &'static str, String) {
    match f {
        FactUsed::Neighbour(n) => (
            "neighbour",
            "netlink",
            format!(
                "neighbour {} on {} in {} is {}",
                n.address,
                n.device,
                label(n.netns),
                nud_name(n.state)
            ),
        ),
        FactUsed::Link(l) => (
            "link",
            "netlink",
            format!(
                "{} in {} is {}, {}",
                l.name,
                label(l.netns),
                if l.up { "up" } else { "down" },
                if l.carrier {
                    "with carrier"
                } else {
                    "without carrier"
                }
            ),
        ),
        FactUsed::Reader(r) => (
            "process",
            "/proc/PID/stat",
            format!(
                "pid {} ({}) is in state {}{}",
                r.pid,
                r.comm,
                r.state,
                if r.holds_tap {
                    ", holding the tap"
                } else {
                    ", not holding the tap"
                }
            ),
        ),
        FactUsed::NoReader => (
            "process",
            "/proc",
            "no process of the sandbox holds the tap".into(),
        ),
        FactUsed::RouteBlocker(b) => (
            "route",
            "netlink",
            format!("{} in {} applies to {}", b.what, label(b.netns), b.dst),
        ),
        FactUsed::ProbeRoute(r) => (
            "route_get",
            "route get",
            format!(
                "in {} the route to {} is {}",
                r.netns_label,
                r.dst,
                match &r.answer {
                    Ok(a) => a.text(),
                    Err(e) => format!("an error ({})", tracer_model::verdict::errno_name(*e)),
                }
            ),
        ),
        FactUsed::HostSideProblem(p) => ("host_side", "netlink", p.clone()),
        FactUsed::RequestUnanswered => (
            "client",
            "the probe",
            "the probe's request after the handshake got no answer within its timeout".into(),
        ),
        FactUsed::NotFollowed(why) => (
            "watcher",
            "the watcher",
            format!("the attempts were not followed: {why}"),
        ),
    }
}
