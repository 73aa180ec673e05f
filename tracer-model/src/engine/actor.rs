//! Who acted: a rule, a route, a neighbour entry, a sysctl, a queue discipline, a filter, a BPF
//! program, the VMM or the guest, as read — typed, so that scripts and the fault campaign
//! compare identities, and sentences are rendered from them.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::inventory::Attach;

/// How sure the engine is that this actor acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It made the difference (or the drop) the verdict names.
    Cause,
    /// One of several that could have; the events cannot tell them apart.
    Candidate,
    /// It acted after the cause, on a packet that was already wrong (the drop of a packet
    /// rewritten upstream).
    Effect,
}

/// How it was singled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// Its counter rose while the attempt ran.
    Counter,
    /// The rule or route evaluator, given the packet as the events show it there, picks it.
    Evaluated,
    /// A kernel event shows it (a drop reason, a device, a frame's bytes).
    Event,
    /// The state read at the verdict explains the event (a link down, a sysctl, a process).
    State,
}

/// What an actor is. Each variant carries what identifies it where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActorId {
    FirewallRule {
        /// iptables-nft, iptables-legacy, nft.
        source: String,
        family: String,
        table: String,
        chain: String,
        handle: Option<u64>,
        rule: String,
    },
    ChainPolicy {
        source: String,
        family: String,
        table: String,
        chain: String,
    },
    /// A rule the path needs and the namespace lacks (E2B's DNAT).
    MissingRule {
        family: String,
        table: String,
        chain: String,
        want: String,
    },
    Route {
        table: u32,
        /// `a.b.c.d/p`.
        dst: String,
        /// unicast, local, blackhole, unreachable, prohibit, throw.
        route_type: String,
        via: Option<Ipv4Addr>,
        device: Option<String>,
    },
    /// A route the path needs and the namespace lacks.
    MissingRoute {
        dst: String,
        device: Option<String>,
    },
    PolicyRule {
        priority: u32,
        rule: String,
    },
    /// An address of the namespace (local delivery), or one the path needs and lacks.
    Address {
        device: String,
        address: String,
        missing: bool,
    },
    Neighbour {
        device: String,
        address: Ipv4Addr,
        mac: Option<String>,
        state: String,
    },
    Link {
        device: String,
        state: String,
    },
    Sysctl {
        name: String,
        value: String,
    },
    Qdisc {
        device: String,
        qdisc: String,
        parent: String,
    },
    TcFilter {
        device: String,
        direction: String,
        filter: String,
        priority: u16,
        handle: u32,
    },
    BpfProgram {
        id: u32,
        name: String,
        tag: String,
        attach: Attach,
        device: Option<String>,
        cgroup: Option<String>,
        holder_pid: Option<u32>,
        holder: Option<String>,
    },
    Vmm {
        pid: Option<u32>,
        state: String,
    },
    /// Inside the VM (what the tracer cannot read: envd, the guest's own ARP cache).
    Guest {
        what: String,
    },
    Conntrack {
        what: String,
    },
}

/// One actor of a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub role: Role,
    pub how: How,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// Where it acts on the path: "PREROUTING, priority -100", "tcx ingress", "route lookup".
    pub place: String,
    pub id: ActorId,
    /// What it does to this packet, as read: "DNAT to 169.254.0.23", "drop".
    pub does: String,
}

impl ActorId {
    /// The name people know it by, one clause: `rule \`-A ...\``, `route 10.11.0.1/32 via ...`.
    pub fn name(&self) -> String {
        match self {
            Self::FirewallRule {
                source,
                family,
                table,
                chain,
                handle,
                rule,
            } => match handle {
                Some(h) if source == "nft" => {
                    format!("rule `{rule}` (nft {family} {table} chain {chain}, handle {h})")
                }
                _ => format!("rule `{rule}` ({source} table {table})"),
            },
            Self::ChainPolicy {
                source, table, chain, ..
            } => format!("the DROP policy of chain {chain} ({source} table {table})"),
            Self::MissingRule {
                table, chain, want, ..
            } => format!("no rule in {table} {chain} does {want}"),
            Self::Route {
                table,
                dst,
                route_type,
                via,
                device,
            } => {
                let mut s = String::from("route ");
                if route_type != "unicast" {
                    s += route_type;
                    s += " ";
                }
                s += dst;
                if let Some(v) = via {
                    s += &format!(" via {v}");
                }
                if let Some(d) = device {
                    s += &format!(" dev {d}");
                }
                s + &format!(" (table {})", crate::facts::table_name(*table))
            }
            Self::MissingRoute { dst, device } => match device {
                Some(d) => format!("no route to {dst} via {d}"),
                None => format!("no route to {dst}"),
            },
            Self::PolicyRule { rule, .. } => format!("policy rule `{rule}`"),
            Self::Address {
                device,
                address,
                missing: false,
            } => format!("the local address {address} on {device}"),
            Self::Address { device, address, .. } => format!("the missing address {address} of {device}"),
            Self::Neighbour {
                device,
                address,
                mac,
                state,
            } => format!(
                "the neighbour entry {address} lladdr {} {state} on {device}",
                mac.as_deref().unwrap_or("none")
            ),
            Self::Link { device, state } => format!("{device} ({state})"),
            Self::Sysctl { name, value } => format!("{name} = {value}"),
            Self::Qdisc { device, qdisc, .. } => format!("the {qdisc} queue discipline of {device}"),
            Self::TcFilter {
                device,
                direction,
                filter,
                priority,
                ..
            } => format!("the tc {filter} filter (pref {priority}) on {device} {direction}"),
            Self::BpfProgram {
                id,
                name,
                attach,
                holder_pid,
                holder,
                ..
            } => {
                let mut s = format!("BPF program {name} (id {id}, {})", attach_name(*attach));
                if let (Some(pid), Some(comm)) = (holder_pid, holder) {
                    s += &format!(", held by pid {pid} ({comm})");
                }
                s
            }
            Self::Vmm { pid, state } => match pid {
                Some(p) => format!("the VMM (pid {p}, {state})"),
                None => format!("the VMM ({state})"),
            },
            Self::Guest { what } => format!("the guest: {what}"),
            Self::Conntrack { what } => format!("conntrack: {what}"),
        }
    }
}

pub fn attach_name(a: Attach) -> &'static str {
    match a {
        Attach::Xdp => "XDP",
        Attach::TcxIngress => "tcx ingress",
        Attach::TcxEgress => "tcx egress",
        Attach::TcIngress => "tc ingress",
        Attach::TcEgress => "tc egress",
        Attach::CgroupConnect4 => "cgroup connect4",
        Attach::CgroupSendmsg4 => "cgroup sendmsg4",
        Attach::CgroupSock => "cgroup sock",
        Attach::Other => "other",
    }
}
