//! Deep mode's parts of a record: per hop (length, mark, L2, conntrack reference, IP and TCP
//! header fields, the kernel stack at a drop) and per journey (the flow's conntrack entries,
//! and the route and neighbour at each routing point, read at decision time).
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use tracer_model::deep::{HopDeep, L2};

use crate::system::conntrack::CtEntry;

/// Deep facts of one hop (JSON `hops[].deep`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepRecord {
    /// `skb->len` at this hop.
    pub len: u32,
    pub mark: u32,
    /// Ethernet source, destination and type, where the packet had an L2 header.
    pub l2: Option<L2>,
    pub ttl: Option<u8>,
    pub ip_id: Option<u16>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub window: Option<u16>,
    /// The skb's conntrack reference: null when it has none (before conntrack, or untracked).
    pub conntrack: Option<CtRefRecord>,
    /// The kernel stack at a drop, innermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    /// Bytes of the packet captured at this hop (0: none, or over a cap).
    pub captured: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtRefRecord {
    /// `ip_conntrack_info`: NEW, ESTABLISHED, ESTABLISHED_REPLY, RELATED, UNTRACKED ...
    pub state: String,
    pub status: Vec<String>,
    pub zone: Option<u16>,
    pub mark: u32,
}

impl DeepRecord {
    pub fn from_hop(d: &HopDeep) -> Self {
        let h = d.headers();
        Self {
            len: d.len,
            mark: d.mark,
            l2: h.as_ref().and_then(|h| h.l2.clone()),
            ttl: h.as_ref().map(|h| h.ttl),
            ip_id: h.as_ref().map(|h| h.ip_id),
            seq: h.as_ref().map(|h| h.seq),
            ack: h.as_ref().map(|h| h.ack),
            window: h.as_ref().map(|h| h.window),
            conntrack: d.ct.map(|c| CtRefRecord {
                state: c.state().into(),
                status: c.status_names().into_iter().map(String::from).collect(),
                zone: c.zone,
                mark: c.mark,
            }),
            stack: d.stack.clone(),
            captured: d.snap.len(),
        }
    }

    /// One line: `len 60 mark 0x0 ttl 64 id 0x1a2b seq 1 ack 0 win 64240 | ct NEW [..] zone 0 | l2 a → b`.
    pub fn line(&self) -> String {
        let mut s = format!("len {} mark {:#x}", self.len, self.mark);
        if let (Some(ttl), Some(id)) = (self.ttl, self.ip_id) {
            let _ = write!(s, " ttl {ttl} id {id:#06x}");
        }
        if let (Some(seq), Some(ack), Some(win)) = (self.seq, self.ack, self.window) {
            let _ = write!(s, " seq {seq} ack {ack} win {win}");
        }
        match &self.conntrack {
            Some(c) => {
                let _ = write!(s, " | ct {}", c.state);
                if !c.status.is_empty() {
                    let _ = write!(s, " [{}]", c.status.join(","));
                }
                if let Some(z) = c.zone {
                    let _ = write!(s, " zone {z}");
                }
                if c.mark != 0 {
                    let _ = write!(s, " ctmark {:#x}", c.mark);
                }
            }
            None => s.push_str(" | no ct"),
        }
        if let Some(l2) = &self.l2 {
            let _ = write!(s, " | {} → {}", l2.src, l2.dst);
        }
        s
    }
}

/// What deep mode reads at the verdict (JSON `deep`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeepContext {
    /// Where the conntrack table was read (the namespace of the drop, else the sandbox's).
    pub conntrack_netns: String,
    /// The flow's conntrack entries there (empty: none; a packet dropped before POSTROUTING
    /// or INPUT never confirms its entry, so it is not in the table).
    pub conntrack: Vec<CtEntry>,
    /// Why the conntrack table could not be read, when it could not.
    pub conntrack_error: Option<String>,
    /// The route and the neighbour entry of each routing point of the path.
    pub routing: Vec<RoutingPoint>,
    /// Packet copies of this journey in the capture, and those left out by a cap.
    pub captured_packets: usize,
    pub capped_packets: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingPoint {
    pub netns: String,
    /// What is routed here: `request` (toward the guest) or `reply` (back to the client).
    pub direction: String,
    pub destination: String,
    /// The route the namespace's main table has for it (`10.11.0.1 via 10.12.0.3 dev veth-1`),
    /// null when none.
    pub route: Option<String>,
    /// The neighbour entry of the next hop on that route (`10.12.0.3 lladdr .. REACHABLE`).
    pub neighbour: Option<String>,
}

impl DeepContext {
    /// Text lines for the verdict paragraph.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.conntrack_error {
            out.push(format!("conntrack in {}: not read ({e})", self.conntrack_netns));
        } else if self.conntrack.is_empty() {
            out.push(format!(
                "conntrack in {}: no entry for this flow (never confirmed, or expired)",
                self.conntrack_netns
            ));
        }
        for e in &self.conntrack {
            out.push(format!("conntrack in {}: {}", self.conntrack_netns, e.text()));
        }
        for r in &self.routing {
            out.push(format!(
                "route in {} ({} to {}): {}; neighbour: {}",
                r.netns,
                r.direction,
                r.destination,
                r.route.as_deref().unwrap_or("none"),
                r.neighbour.as_deref().unwrap_or("none")
            ));
        }
        if self.capped_packets > 0 {
            out.push(format!(
                "capture: {} packet copies kept, {} left out by a cap",
                self.captured_packets, self.capped_packets
            ));
        }
        out
    }
}
