//! Faults from a grammar, not a list: an actor family × a place × a leg, with parameters drawn
//! at random — which table, hook, priority, match, verdict, route type, selector, address,
//! device, value. Each fault says how to inject and revert it, whether it is meant to break
//! envd's connections (an inert variant acts where they do not pass), and how the injected
//! actor is identified, for grading.
//!
//! One module per actor family: `iptables`, `nft`, `routes` (routes and policy rules),
//! `devices` (neighbours, links, addresses), `sysctl`, `tc`, `bpf`, `vmm`.
mod bpf;
mod devices;
mod iptables;
mod nft;
mod routes;
mod sysctl;
mod tc;
mod vmm;

use std::path::PathBuf;

use serde::Serialize;

use super::rng::Rng;
use crate::{Datapath, IptablesBackend, agent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Iptables,
    Nft,
    Route,
    PolicyRule,
    Neighbour,
    Link,
    Address,
    Sysctl,
    Tc,
    Bpf,
    Vmm,
}

impl Family {
    pub const ALL: &[Family] = &[
        Family::Iptables,
        Family::Nft,
        Family::Route,
        Family::PolicyRule,
        Family::Neighbour,
        Family::Link,
        Family::Address,
        Family::Sysctl,
        Family::Tc,
        Family::Bpf,
        Family::Vmm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nft => "nft",
            Self::Route => "route",
            Self::PolicyRule => "policy_rule",
            Self::Neighbour => "neighbour",
            Self::Link => "link",
            Self::Address => "address",
            Self::Sysctl => "sysctl",
            Self::Tc => "tc",
            Self::Bpf => "bpf",
            Self::Vmm => "vmm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Leg {
    Request,
    Reply,
}

/// What the fault is meant to do to envd's connections (the client decides what it did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Break,
    /// Acts where envd's packets do not pass: the verdict must be `connected`.
    Inert,
    /// Depends on the kernel's details (an MTU, a sysctl that needs another condition): the
    /// client decides, and it is graded as what it turned out to be.
    Unsure,
}

/// One step of injecting or reverting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Step {
    /// A tool run inside a namespace (None: this one).
    Cmd {
        netns: Option<String>,
        argv: Vec<String>,
    },
    /// A tool run with input (nft -f -).
    Input {
        netns: Option<String>,
        argv: Vec<String>,
        stdin: String,
    },
    /// Another agent's BPF program, held from here until the fault is reverted.
    Agent(agent::Spec),
    /// A command to the target sandbox's guest (`listener off`, `delay 80`).
    Guest(String),
    /// A signal to the target sandbox's VMM.
    Signal(i32),
    /// Restore the sandbox as the lab built it (the VMM and its tap).
    HealSandbox,
}

/// How the injected actor is identified in a verdict's `actors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ident {
    /// An iptables rule, found by the comment it carries.
    IptablesRule {
        table: String,
        chain: String,
        comment: String,
    },
    /// An nft rule, found by its comment (its handle is read after injection).
    NftRule {
        family: String,
        table: String,
        chain: String,
        comment: String,
        handle: Option<u64>,
    },
    Route {
        table: u32,
        dst: String,
    },
    PolicyRule {
        priority: u32,
    },
    Neighbour {
        device: String,
        address: String,
    },
    Link {
        device: String,
    },
    Address {
        device: String,
        address: String,
    },
    /// Any of these names (the kernel takes the larger of `all` and the device's).
    Sysctl {
        names: Vec<String>,
    },
    Qdisc {
        device: String,
    },
    TcFilter {
        device: String,
    },
    Bpf {
        name: String,
    },
    Vmm,
    Guest,
}

/// One fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub seed: u64,
    pub index: u32,
    pub family: Family,
    pub leg: Option<Leg>,
    /// Where the injected actor sits: namespace, and device when it has one.
    pub netns: String,
    pub device: Option<String>,
    pub what: String,
    pub intent: Intent,
    pub actor: Ident,
    pub apply: Vec<Step>,
    pub revert: Vec<Step>,
}

impl Fault {
    pub fn key(&self) -> String {
        format!("{}:{}", self.seed, self.index)
    }
}

/// The lab the faults are made for: the target sandbox (slot 1), a second one, their names
/// and addresses, and what this kernel and these tools can do.
#[derive(Debug, Clone)]
pub struct Topo {
    pub host_ns: String,
    pub ns: String,
    pub other_ns: String,
    pub host_veth: String,
    pub ns_veth: String,
    pub tap: String,
    pub other_veth: String,
    pub host_ip: String,
    pub guest_ip: String,
    pub client_ip: String,
    pub ns_veth_ip: String,
    pub other_ns_veth_ip: String,
    pub tap_ip: String,
    pub port: u16,
    pub datapath: Datapath,
    pub backend: IptablesBackend,
    /// The campaign's cgroup (the client and the tracer run in it).
    pub cgroup: PathBuf,
    pub can: Can,
}

/// What this machine offers; families it lacks are skipped (and reported).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Can {
    pub nft_netdev_ingress: bool,
    pub nft_netdev_egress: bool,
    pub tc_u32_mirred: bool,
    pub bpf: Vec<agent::Kind>,
    /// The guest can be told to answer late (the userspace guest; not the QEMU one).
    pub guest_delay: bool,
}

fn cmd(netns: &str, argv: &[&str]) -> Step {
    Step::Cmd {
        netns: Some(netns.to_string()),
        argv: argv.iter().map(|s| s.to_string()).collect(),
    }
}

fn words(netns: &str, line: &str) -> Step {
    let argv: Vec<&str> = line.split_whitespace().collect();
    cmd(netns, &argv)
}

/// Fault `k` of the campaign `seed`, of a family drawn from `families`.
pub fn generate(seed: u64, k: u32, t: &Topo, families: &[Family]) -> Fault {
    let mut r = Rng::for_fault(seed, k);
    let family = *r.pick(families);
    let mut f = match family {
        Family::Iptables => iptables::iptables(&mut r, t),
        Family::Nft => nft::nft(&mut r, t),
        Family::Route => routes::route(&mut r, t),
        Family::PolicyRule => routes::policy_rule(&mut r, t),
        Family::Neighbour => devices::neighbour(&mut r, t),
        Family::Link => devices::link(&mut r, t),
        Family::Address => devices::address(&mut r, t),
        Family::Sysctl => sysctl::sysctl(&mut r, t),
        Family::Tc => tc::tc(&mut r, t),
        Family::Bpf => bpf::bpf(&mut r, t),
        Family::Vmm => vmm::vmm(&mut r, t),
    };
    f.seed = seed;
    f.index = k;
    f.family = family;
    // Identities carry the fault's key, so a rule is found by it whatever the tool prints.
    let tag = format!("campaign-{seed}-{k}");
    let fill = |s: &mut String| *s = s.replace("@TAG@", &tag);
    for step in f.apply.iter_mut().chain(f.revert.iter_mut()) {
        match step {
            Step::Cmd { argv, .. } | Step::Input { argv, .. } => argv.iter_mut().for_each(fill),
            _ => {}
        }
        if let Step::Input { stdin, .. } = step {
            fill(stdin);
        }
    }
    match &mut f.actor {
        Ident::IptablesRule { comment, .. } | Ident::NftRule { comment, .. } => fill(comment),
        _ => {}
    }
    fill(&mut f.what);
    f
}

fn blank(family: Family, netns: &str) -> Fault {
    Fault {
        seed: 0,
        index: 0,
        family,
        leg: None,
        netns: netns.into(),
        device: None,
        what: String::new(),
        intent: Intent::Break,
        actor: Ident::Vmm,
        apply: Vec::new(),
        revert: Vec::new(),
    }
}

/// A place for a packet-path actor: (namespace, leg, the hooks the leg crosses there).
fn place(r: &mut Rng, t: &Topo) -> (String, Leg) {
    let ns = if r.chance(60) {
        t.ns.clone()
    } else {
        t.host_ns.clone()
    };
    let leg = if r.chance(60) { Leg::Request } else { Leg::Reply };
    (ns, leg)
}
