//! Faults from a grammar, not a list: an actor family × a place × a leg, with parameters drawn
//! at random — which table, hook, priority, match, verdict, route type, selector, address,
//! device, value. Each fault says how to inject and revert it, whether it is meant to break
//! envd's connections (an inert variant acts where they do not pass), and how the injected
//! actor is identified, for grading.
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
        Family::Iptables => iptables(&mut r, t),
        Family::Nft => nft(&mut r, t),
        Family::Route => route(&mut r, t),
        Family::PolicyRule => policy_rule(&mut r, t),
        Family::Neighbour => neighbour(&mut r, t),
        Family::Link => link(&mut r, t),
        Family::Address => address(&mut r, t),
        Family::Sysctl => sysctl(&mut r, t),
        Family::Tc => tc(&mut r, t),
        Family::Bpf => bpf(&mut r, t),
        Family::Vmm => vmm(&mut r, t),
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

/// (iptables table, chain) a leg crosses in a namespace.
fn ipt_hooks(t: &Topo, ns: &str, leg: Leg) -> Vec<(&'static str, &'static str)> {
    let sandbox = ns == t.ns;
    match (sandbox, leg) {
        (true, Leg::Request) => vec![
            ("raw", "PREROUTING"),
            ("mangle", "PREROUTING"),
            ("nat", "PREROUTING"),
            ("mangle", "FORWARD"),
            ("filter", "FORWARD"),
            ("mangle", "POSTROUTING"),
            ("nat", "POSTROUTING"),
        ],
        (true, Leg::Reply) => vec![
            ("raw", "PREROUTING"),
            ("mangle", "PREROUTING"),
            ("mangle", "FORWARD"),
            ("filter", "FORWARD"),
            ("mangle", "POSTROUTING"),
        ],
        (false, Leg::Request) => vec![
            ("raw", "OUTPUT"),
            ("mangle", "OUTPUT"),
            ("nat", "OUTPUT"),
            ("filter", "OUTPUT"),
            ("mangle", "POSTROUTING"),
            ("nat", "POSTROUTING"),
        ],
        (false, Leg::Reply) => vec![
            ("raw", "PREROUTING"),
            ("mangle", "PREROUTING"),
            ("mangle", "INPUT"),
            ("filter", "INPUT"),
        ],
    }
}

/// The match of a rule for the leg: envd's port on the right side, sometimes narrowed by an
/// address, a device, TCP flags or conntrack state; `inert`: a variant that misses envd.
fn ipt_match(r: &mut Rng, t: &Topo, ns: &str, leg: Leg, (table, chain): (&str, &str), inert: bool) -> String {
    let port = if inert { t.port + 1 } else { t.port };
    let mut m = match leg {
        Leg::Request => format!("-p tcp --dport {port}"),
        Leg::Reply => format!("-p tcp --sport {port}"),
    };
    let sandbox = ns == t.ns;
    match r.below(5) {
        0 if leg == Leg::Request && sandbox && chain == "PREROUTING" => m += &format!(" -d {}", t.host_ip),
        0 if leg == Leg::Request && sandbox => m += &format!(" -d {}", t.guest_ip),
        1 if chain == "PREROUTING" || chain == "FORWARD" || chain == "INPUT" => {
            let dev = match (sandbox, leg) {
                (true, Leg::Request) => &t.ns_veth,
                (true, Leg::Reply) => &t.tap,
                (false, _) => &t.host_veth,
            };
            m += &format!(" -i {dev}");
        }
        2 if leg == Leg::Request => m += " --tcp-flags SYN,ACK SYN",
        2 => m += " --tcp-flags SYN,ACK SYN,ACK",
        // Conntrack has not run yet in the raw table: a state match there never matches.
        3 if table != "raw" && chain != "OUTPUT" && !(chain == "PREROUTING" && leg == Leg::Request) => {
            m += if leg == Leg::Request {
                " -m conntrack --ctstate NEW"
            } else {
                " -m conntrack --ctstate ESTABLISHED"
            }
        }
        _ => {}
    }
    m
}

/// A target that fits the table (and what it does to envd).
fn ipt_target(r: &mut Rng, t: &Topo, (ns, table, chain): (&str, &str, &str), leg: Leg) -> (String, Intent) {
    let reject = [
        "tcp-reset",
        "icmp-port-unreachable",
        "icmp-host-unreachable",
        "icmp-admin-prohibited",
    ];
    match table {
        "filter" if r.chance(40) => (
            format!("-j REJECT --reject-with {}", r.pick(&reject)),
            Intent::Break,
        ),
        "filter" => ("-j DROP".into(), Intent::Break),
        // Untracked or zoned, a locally made SYN still reaches the guest and its reply the
        // socket; in the sandbox's namespace the DNAT needs conntrack.
        "raw" => {
            // Only the sandbox's namespace NATs envd's packets; the host side's socket takes
            // an untracked or zoned reply all the same.
            let nat_needs_it = if chain == "OUTPUT" || ns != t.ns {
                Intent::Unsure
            } else {
                Intent::Break
            };
            match r.below(3) {
                0 => ("-j DROP".into(), Intent::Break),
                1 => ("-j NOTRACK".into(), nat_needs_it),
                _ => (format!("-j CT --zone {}", 1 + r.below(9)), nat_needs_it),
            }
        }
        "mangle" => match r.below(3) {
            0 => ("-j DROP".into(), Intent::Break),
            1 => (
                format!("-j MARK --set-mark {:#x}", 0x10 + r.below(0xe0)),
                Intent::Inert,
            ),
            // The SYN must be forwarded once more in the sandbox: TTL 1 dies there.
            _ if leg == Leg::Request && chain != "POSTROUTING" && chain != "FORWARD" => {
                ("-j TTL --ttl-set 1".into(), Intent::Break)
            }
            _ => (format!("-j TTL --ttl-set {}", 20 + r.below(100)), Intent::Inert),
        },
        _ => nat_target(r, t, chain),
    }
}

fn nat_target(r: &mut Rng, t: &Topo, chain: &str) -> (String, Intent) {
    let wrong_guest = format!("169.254.0.{}", 23 + r.below(6));
    match chain {
        "PREROUTING" | "OUTPUT" => match r.below(3) {
            0 => (format!("-j DNAT --to-destination {wrong_guest}"), Intent::Break),
            1 => (
                format!("-j DNAT --to-destination {}:{}", t.guest_ip, t.port + 1),
                Intent::Break,
            ),
            _ => ("-j REDIRECT --to-ports 1".into(), Intent::Break),
        },
        // conntrack un-NATs the reply of a source NAT toward the guest: it may well work.
        _ => match r.below(2) {
            0 => ("-j SNAT --to-source 10.99.0.1".into(), Intent::Unsure),
            _ => ("-j MASQUERADE".into(), Intent::Unsure),
        },
    }
}

fn iptables(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, leg) = place(r, t);
    let hooks = ipt_hooks(t, &ns, leg);
    let (table, chain) = *r.pick(&hooks);
    let inert = r.chance(20);
    let (target, mut intent) = ipt_target(r, t, (&ns, table, chain), leg);
    let m = ipt_match(r, t, &ns, leg, (table, chain), inert);
    if inert {
        intent = Intent::Inert;
    }
    let ipt = t.backend.iptables();
    let comment = "@TAG@".to_string();
    let user_chain = r.chance(30).then(|| format!("CAMP{}", r.below(1000)));
    let rule_chain = user_chain.clone().unwrap_or_else(|| chain.to_string());
    let rule = format!("{m} -m comment --comment {comment} {target}");
    let mut f = blank(Family::Iptables, &ns);
    f.leg = Some(leg);
    f.intent = intent;
    match &user_chain {
        Some(uc) => {
            // A chain nobody jumps to is inert whatever it holds.
            let jumped = !r.chance(15);
            if !jumped {
                f.intent = Intent::Inert;
            }
            f.apply.push(words(&ns, &format!("{ipt} -t {table} -N {uc}")));
            f.apply
                .push(words(&ns, &format!("{ipt} -t {table} -A {uc} {rule}")));
            if jumped {
                f.apply
                    .push(words(&ns, &format!("{ipt} -t {table} -I {chain} 1 -j {uc}")));
                f.revert
                    .push(words(&ns, &format!("{ipt} -t {table} -D {chain} -j {uc}")));
            }
            f.revert.push(words(&ns, &format!("{ipt} -t {table} -F {uc}")));
            f.revert.push(words(&ns, &format!("{ipt} -t {table} -X {uc}")));
        }
        None => {
            f.apply
                .push(words(&ns, &format!("{ipt} -t {table} -I {chain} 1 {rule}")));
            f.revert
                .push(words(&ns, &format!("{ipt} -t {table} -D {chain} {rule}")));
        }
    }
    f.what = format!("{ipt} in {ns}: -t {table} -A {rule_chain} {rule} ({leg:?})");
    f.actor = Ident::IptablesRule {
        table: table.into(),
        chain: rule_chain,
        comment,
    };
    f
}

/// nft base chains a leg crosses: (family, hook, netdev device).
fn nft_hooks(t: &Topo, ns: &str, leg: Leg) -> Vec<(&'static str, &'static str, Option<String>)> {
    let sandbox = ns == t.ns;
    let mut v: Vec<(&str, &str, Option<String>)> = match (sandbox, leg) {
        (true, Leg::Request) => vec![
            ("ip", "prerouting", None),
            ("inet", "forward", None),
            ("ip", "postrouting", None),
        ],
        (true, Leg::Reply) => vec![
            ("inet", "prerouting", None),
            ("ip", "forward", None),
            ("inet", "postrouting", None),
        ],
        (false, Leg::Request) => vec![("ip", "output", None), ("inet", "postrouting", None)],
        (false, Leg::Reply) => vec![("ip", "prerouting", None), ("inet", "input", None)],
    };
    let ingress = match (sandbox, leg) {
        (true, Leg::Request) => Some(t.ns_veth.clone()),
        (true, Leg::Reply) => Some(t.tap.clone()),
        (false, Leg::Reply) => Some(t.host_veth.clone()),
        (false, Leg::Request) => None,
    };
    if let Some(d) = ingress.filter(|_| t.can.nft_netdev_ingress) {
        v.push(("netdev", "ingress", Some(d)));
    }
    let egress = match (sandbox, leg) {
        (true, Leg::Request) => Some(t.tap.clone()),
        (true, Leg::Reply) => Some(t.ns_veth.clone()),
        (false, Leg::Request) => Some(t.host_veth.clone()),
        (false, Leg::Reply) => None,
    };
    if let Some(d) = egress.filter(|_| t.can.nft_netdev_egress) {
        v.push(("netdev", "egress", Some(d)));
    }
    v
}

fn nft(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, leg) = place(r, t);
    let hooks = nft_hooks(t, &ns, leg);
    let (family, hook, device) = r.pick(&hooks).clone();
    let inert = r.chance(20);
    let port = if inert { t.port + 1 } else { t.port };
    let dir = if leg == Leg::Request { "dport" } else { "sport" };
    let prio = *r.pick(&[-350i32, -250, -160, -77, -30, 0, 7, 13, 60, 120, 250]);
    let (stmt, intent, kind) = nft_statement(r, hook, prio, leg, (family, ns == t.ns));
    let table = format!("camp{}", r.below(100_000));
    let chain = "c".to_string();
    let dev = device
        .as_ref()
        .map(|d| format!(" device \"{d}\""))
        .unwrap_or_default();
    let m = if family == "netdev" {
        format!("ip protocol tcp tcp {dir} {port}")
    } else {
        format!("tcp {dir} {port}")
    };
    let script = format!(
        "table {family} {table} {{\n  chain {chain} {{\n    type {kind} hook {hook}{dev} priority {prio};\n    {m} {stmt} comment \"@TAG@\"\n  }}\n}}\n"
    );
    let mut f = blank(Family::Nft, &ns);
    f.leg = Some(leg);
    f.device = device;
    f.intent = if inert { Intent::Inert } else { intent };
    f.apply.push(Step::Input {
        netns: Some(ns.clone()),
        argv: vec!["nft".into(), "-f".into(), "-".into()],
        stdin: script,
    });
    f.revert
        .push(words(&ns, &format!("nft delete table {family} {table}")));
    f.what = format!("nft in {ns}: {family} {table} {hook} prio {prio}: {m} {stmt} ({leg:?})");
    f.actor = Ident::NftRule {
        family: family.into(),
        table,
        chain,
        comment: "@TAG@".into(),
        handle: None,
    };
    f
}

fn ct_intent(sandbox: bool) -> Intent {
    if sandbox { Intent::Break } else { Intent::Unsure }
}

/// A statement for an nft rule at `hook`/`prio`, what it is meant to do, and the chain type.
fn nft_statement(
    r: &mut Rng,
    hook: &str,
    prio: i32,
    leg: Leg,
    (family, sandbox): (&str, bool),
) -> (String, Intent, &'static str) {
    let reject = [
        "reject",
        "reject with tcp reset",
        "reject with icmp type host-unreachable",
    ];
    let before_ct = prio < -200 && (hook == "prerouting" || hook == "output");
    let nat_hook = family != "netdev" && hook != "forward" && hook != "input" && leg == Leg::Request;
    match r.below(6) {
        0 | 1 => ("drop".into(), Intent::Break, "filter"),
        // reject is refused at postrouting.
        2 if family != "netdev" && hook != "postrouting" => {
            (r.pick(&reject).to_string(), Intent::Break, "filter")
        }
        // Only the sandbox's DNAT needs conntrack: elsewhere untracked or zoned may well work.
        3 if before_ct => ("notrack".into(), ct_intent(sandbox), "filter"),
        3 if family != "netdev" => (
            format!("meta mark set {:#x}", 0x20 + r.below(0x80)),
            Intent::Inert,
            "filter",
        ),
        4 if nat_hook && (hook == "prerouting" || hook == "output") => (
            format!("dnat ip to 169.254.0.{}", 23 + r.below(6)),
            Intent::Break,
            "nat",
        ),
        4 if nat_hook && hook == "postrouting" => ("snat ip to 10.99.0.1".into(), Intent::Break, "nat"),
        5 if before_ct => (
            format!("ct zone set {}", 1 + r.below(9)),
            ct_intent(sandbox),
            "filter",
        ),
        _ => ("drop".into(), Intent::Break, "filter"),
    }
}

fn route(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, leg) = place(r, t);
    let sandbox = ns == t.ns;
    // The destination the leg's packet is routed to in that namespace.
    let (dst, leg) = match (sandbox, leg) {
        (true, Leg::Request) => (t.guest_ip.clone(), Leg::Request),
        (true, Leg::Reply) => (t.client_ip.clone(), Leg::Reply),
        (false, _) => (t.host_ip.clone(), Leg::Request),
    };
    let inert = r.chance(15);
    let dst = if inert { "203.0.113.7".to_string() } else { dst };
    let kind = match r.below(5) {
        0 => "blackhole".to_string(),
        1 => "unreachable".into(),
        2 => "prohibit".into(),
        3 if !sandbox => format!("via {} dev {}", t.other_ns_veth_ip, t.other_veth),
        3 if leg == Leg::Request => format!("via {} dev {}", t.client_ip, t.ns_veth),
        _ if sandbox && leg == Leg::Reply => format!("dev {}", t.tap),
        _ => "blackhole".into(),
    };
    let table = 254;
    let mut f = blank(Family::Route, &ns);
    f.leg = Some(leg);
    f.intent = if inert { Intent::Inert } else { Intent::Break };
    let (pre, post) = match kind.split_once(' ') {
        Some(("via" | "dev", _)) => (String::new(), kind.clone()),
        _ => (kind.clone(), String::new()),
    };
    let route = format!("{pre} {dst}/32 {post}").trim().to_string();
    // The host route exists (E2B's); a replacement is restored by putting E2B's back.
    let restore = if !sandbox && !inert {
        Some(format!(
            "ip route replace {}/32 via {} dev {}",
            t.host_ip, t.ns_veth_ip, t.host_veth
        ))
    } else {
        None
    };
    f.apply.push(words(&ns, &format!("ip route replace {route}")));
    match restore {
        Some(back) => f.revert.push(words(&ns, &back)),
        None => f.revert.push(words(&ns, &format!("ip route del {dst}/32"))),
    }
    f.what = format!("route in {ns}: {route} ({leg:?})");
    f.actor = Ident::Route {
        table,
        dst: format!("{dst}/32"),
    };
    f
}

fn policy_rule(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, leg) = place(r, t);
    let sandbox = ns == t.ns;
    let leg = if sandbox { leg } else { Leg::Request };
    let inert = r.chance(20);
    let prio = 100 + r.below(800) as u32;
    let table = 100 + r.below(100) as u32;
    let (dst, iif, port_word) = match (sandbox, leg) {
        (true, Leg::Request) => (&t.guest_ip, Some(&t.ns_veth), "dport"),
        (true, Leg::Reply) => (&t.client_ip, Some(&t.tap), "sport"),
        (false, _) => (&t.host_ip, None, "dport"),
    };
    let port = if inert { t.port + 1 } else { t.port };
    let selector = match r.below(5) {
        0 => format!("to {}/32", if inert { "203.0.113.9" } else { dst }),
        1 => format!("ipproto tcp {port_word} {port}"),
        2 if iif.is_some() => format!("iif {}", if inert { "lo" } else { iif.expect("some") }),
        2 => format!("uidrange {}", if inert { "4000-4100" } else { "0-0" }),
        // No packet of the path carries a mark: a mark selector is inert by itself.
        3 => format!("fwmark {:#x}", 0x40 + r.below(0x40)),
        _ => format!("to {}/32", if inert { "203.0.113.9" } else { dst }),
    };
    let selector_inert = inert || selector.starts_with("fwmark");
    let action = match r.below(4) {
        0 => "prohibit".to_string(),
        1 => "blackhole".into(),
        2 => "unreachable".into(),
        _ => format!("lookup {table}"),
    };
    let mut f = blank(Family::PolicyRule, &ns);
    f.leg = Some(leg);
    f.intent = if selector_inert {
        Intent::Inert
    } else {
        Intent::Break
    };
    if action.starts_with("lookup") {
        f.apply.push(words(
            &ns,
            &format!("ip route add blackhole {dst}/32 table {table}"),
        ));
    }
    f.apply.push(words(
        &ns,
        &format!("ip rule add priority {prio} {selector} {action}"),
    ));
    f.revert.push(words(&ns, &format!("ip rule del priority {prio}")));
    if action.starts_with("lookup") {
        f.revert
            .push(words(&ns, &format!("ip route flush table {table}")));
    }
    f.what = format!("policy rule in {ns}: {prio}: {selector} {action} ({leg:?})");
    f.actor = Ident::PolicyRule { priority: prio };
    f
}

fn neighbour(r: &mut Rng, t: &Topo) -> Fault {
    let mac = format!(
        "02:00:5e:{:02x}:{:02x}:{:02x}",
        r.below(256),
        r.below(256),
        r.below(256)
    );
    let inert = r.chance(15);
    let (ns, dev, addr, leg) = match r.below(3) {
        0 => (t.ns.clone(), t.tap.clone(), t.guest_ip.clone(), Leg::Request),
        1 => (
            t.host_ns.clone(),
            t.host_veth.clone(),
            t.ns_veth_ip.clone(),
            Leg::Request,
        ),
        _ => (t.ns.clone(), t.ns_veth.clone(), t.client_ip.clone(), Leg::Reply),
    };
    let addr = if inert { "169.254.0.29".to_string() } else { addr };
    let dev = if inert { t.tap.clone() } else { dev };
    let ns = if inert { t.ns.clone() } else { ns };
    let mut f = blank(Family::Neighbour, &ns);
    f.leg = Some(leg);
    f.device = Some(dev.clone());
    f.intent = if inert { Intent::Inert } else { Intent::Break };
    f.apply.push(words(
        &ns,
        &format!("ip neigh replace {addr} lladdr {mac} nud permanent dev {dev}"),
    ));
    f.revert
        .push(words(&ns, &format!("ip neigh del {addr} dev {dev}")));
    f.what = format!("static neighbour in {ns}: {addr} lladdr {mac} on {dev} ({leg:?})");
    f.actor = Ident::Neighbour {
        device: dev,
        address: addr,
    };
    f
}

fn link(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, dev) = match r.below(3) {
        0 => (t.ns.clone(), t.tap.clone()),
        1 => (t.ns.clone(), t.ns_veth.clone()),
        _ => (t.host_ns.clone(), t.host_veth.clone()),
    };
    let mut f = blank(Family::Link, &ns);
    f.device = Some(dev.clone());
    if r.chance(70) {
        f.intent = Intent::Break;
        f.apply.push(words(&ns, &format!("ip link set {dev} down")));
        f.revert.push(words(&ns, &format!("ip link set {dev} up")));
        // A down host veth takes E2B's host route with it.
        if dev == t.host_veth {
            f.revert.push(words(
                &ns,
                &format!(
                    "ip route replace {}/32 via {} dev {}",
                    t.host_ip, t.ns_veth_ip, t.host_veth
                ),
            ));
        }
        f.what = format!("{dev} in {ns} set down");
    } else {
        let mtu = *r.pick(&[68u32, 128, 576, 1280]);
        f.intent = Intent::Unsure;
        f.apply.push(words(&ns, &format!("ip link set {dev} mtu {mtu}")));
        f.revert.push(words(&ns, &format!("ip link set {dev} mtu 1500")));
        // The path MTU the small one taught the stack stays cached: forget it too.
        f.revert.push(words(&ns, "ip route flush cache"));
        f.what = format!("{dev} in {ns}: MTU {mtu}");
    }
    f.actor = Ident::Link { device: dev };
    f
}

fn address(r: &mut Rng, t: &Topo) -> Fault {
    let mut f = blank(Family::Address, &t.ns);
    f.intent = Intent::Break;
    match r.below(4) {
        0 => {
            let a = format!("{}/30", t.tap_ip);
            f.apply
                .push(words(&t.ns, &format!("ip addr del {a} dev {}", t.tap)));
            f.revert
                .push(words(&t.ns, &format!("ip addr add {a} dev {}", t.tap)));
            f.device = Some(t.tap.clone());
            f.what = format!("address {a} removed from {} in {}", t.tap, t.ns);
            f.actor = Ident::Address {
                device: t.tap.clone(),
                address: t.tap_ip.clone(),
            };
        }
        1 => {
            let a = format!("{}/31", t.ns_veth_ip);
            f.apply
                .push(words(&t.ns, &format!("ip addr del {a} dev {}", t.ns_veth)));
            f.revert
                .push(words(&t.ns, &format!("ip addr add {a} dev {}", t.ns_veth)));
            f.revert.push(words(
                &t.ns,
                &format!("ip route replace default via {} dev {}", t.client_ip, t.ns_veth),
            ));
            // The host's neighbour entry would hide the loss for a while.
            f.apply
                .push(words(&t.host_ns, &format!("ip neigh flush dev {}", t.host_veth)));
            f.device = Some(t.ns_veth.clone());
            f.what = format!("address {a} removed from {} in {}", t.ns_veth, t.ns);
            f.actor = Ident::Address {
                device: t.ns_veth.clone(),
                address: t.ns_veth_ip.clone(),
            };
        }
        2 => {
            // The guest's address made local in the sandbox namespace: delivered there.
            let dev = r.pick(&["lo", "eth0"]).to_string();
            let a = format!("{}/32", t.guest_ip);
            f.apply.push(words(&t.ns, &format!("ip addr add {a} dev {dev}")));
            f.revert.push(words(&t.ns, &format!("ip addr del {a} dev {dev}")));
            f.device = Some(dev.clone());
            f.what = format!("the guest's address {a} added to {dev} in {}", t.ns);
            f.actor = Ident::Address {
                device: dev,
                address: t.guest_ip.clone(),
            };
        }
        _ => {
            // The host IP made local on the host side.
            let a = format!("{}/32", t.host_ip);
            f.netns = t.host_ns.clone();
            f.apply
                .push(words(&t.host_ns, &format!("ip addr add {a} dev lo")));
            f.revert
                .push(words(&t.host_ns, &format!("ip addr del {a} dev lo")));
            f.device = Some("lo".into());
            f.what = format!("the host IP {a} added to lo in {}", t.host_ns);
            f.actor = Ident::Address {
                device: "lo".into(),
                address: t.host_ip.clone(),
            };
        }
    }
    f.leg = Some(Leg::Request);
    f
}

fn sysctl(r: &mut Rng, t: &Topo) -> Fault {
    let mut f = blank(Family::Sysctl, &t.ns);
    let set = |f: &mut Fault, ns: &str, key: &str, bad: &str, good: &str| {
        f.apply.push(words(ns, &format!("sysctl -qw {key}={bad}")));
        f.revert.push(words(ns, &format!("sysctl -qw {key}={good}")));
    };
    match r.below(6) {
        0 => {
            set(&mut f, &t.ns.clone(), "net.ipv4.ip_forward", "0", "1");
            f.intent = Intent::Break;
            f.actor = Ident::Sysctl {
                names: vec![
                    "net.ipv4.ip_forward".into(),
                    "net.ipv4.conf.all.forwarding".into(),
                ],
            };
            f.what = format!("net.ipv4.ip_forward=0 in {}", t.ns);
        }
        1 => {
            let key = format!("net.ipv4.conf.{}.forwarding", t.ns_veth);
            set(&mut f, &t.ns.clone(), &key, "0", "1");
            f.intent = Intent::Break;
            f.actor = Ident::Sysctl {
                names: vec![key.clone()],
            };
            f.what = format!("{key}=0 in {}", t.ns);
        }
        2 => {
            // The host stops answering ARP for its veth address: the sandbox's replies wait.
            let (ns, dev, peer_ns, peer_dev) = if r.chance(50) {
                (
                    t.ns.clone(),
                    t.ns_veth.clone(),
                    t.host_ns.clone(),
                    t.host_veth.clone(),
                )
            } else {
                (
                    t.host_ns.clone(),
                    t.host_veth.clone(),
                    t.ns.clone(),
                    t.ns_veth.clone(),
                )
            };
            let key = format!("net.ipv4.conf.{dev}.arp_ignore");
            set(&mut f, &ns, &key, "8", "0");
            f.apply
                .push(words(&peer_ns, &format!("ip neigh flush dev {peer_dev}")));
            f.netns = ns;
            f.intent = Intent::Break;
            f.actor = Ident::Sysctl {
                names: vec![key.clone(), "net.ipv4.conf.all.arp_ignore".into()],
            };
            f.what = format!("{key}=8 (and the peer's neighbour cache flushed)");
        }
        3 => {
            let key = format!("net.ipv4.conf.{}.rp_filter", t.ns_veth);
            set(&mut f, &t.ns.clone(), &key, "1", "0");
            f.intent = Intent::Unsure;
            f.actor = Ident::Sysctl {
                names: vec![key.clone(), "net.ipv4.conf.all.rp_filter".into()],
            };
            f.what = format!("{key}=1 in {}", t.ns);
        }
        4 => {
            let key = format!("net.ipv4.conf.{}.accept_local", t.ns_veth);
            set(&mut f, &t.ns.clone(), &key, "1", "0");
            f.intent = Intent::Unsure;
            f.actor = Ident::Sysctl {
                names: vec![key.clone()],
            };
            f.what = format!("{key}=1 in {}", t.ns);
        }
        _ => {
            let key = format!("net.ipv4.conf.{}.route_localnet", t.tap);
            set(&mut f, &t.ns.clone(), &key, "1", "0");
            f.intent = Intent::Unsure;
            f.actor = Ident::Sysctl {
                names: vec![key.clone()],
            };
            f.what = format!("{key}=1 in {}", t.ns);
        }
    }
    f
}

fn tc(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, dev, leg) = match r.below(3) {
        0 => (t.host_ns.clone(), t.host_veth.clone(), Leg::Request),
        1 => (t.ns.clone(), t.tap.clone(), Leg::Request),
        _ => (t.ns.clone(), t.ns_veth.clone(), Leg::Reply),
    };
    let mut f = blank(Family::Tc, &ns);
    f.leg = Some(leg);
    f.device = Some(dev.clone());
    if !t.can.tc_u32_mirred || r.chance(50) {
        f.intent = Intent::Break;
        f.apply.push(words(
            &ns,
            &format!("tc qdisc replace dev {dev} root pfifo limit 0"),
        ));
        f.revert.push(words(&ns, &format!("tc qdisc del dev {dev} root")));
        f.what = format!("a pfifo limit 0 root qdisc on {dev} in {ns}");
        f.actor = Ident::Qdisc { device: dev };
        return f;
    }
    // A classic filter that redirects envd's packets elsewhere (egress side of loopback).
    let inert = r.chance(20);
    let port = if inert { t.port + 1 } else { t.port };
    // Where the leg's packets leave by that device: the request out the host veth or the
    // tap, the reply out the sandbox's veth.
    let (dir, field) = match leg {
        Leg::Request => ("egress", "dport"),
        Leg::Reply => ("egress", "sport"),
    };
    let pref = 40 + r.below(40);
    f.intent = if inert { Intent::Inert } else { Intent::Break };
    f.apply
        .push(words(&ns, &format!("tc qdisc add dev {dev} clsact")));
    f.apply.push(words(
        &ns,
        &format!("tc filter add dev {dev} {dir} pref {pref} protocol ip u32 match ip {field} {port} 0xffff action mirred egress redirect dev lo"),
    ));
    f.revert
        .push(words(&ns, &format!("tc qdisc del dev {dev} clsact")));
    f.what = format!("a u32 filter on {dev} {dir} in {ns} redirecting {field} {port} to lo");
    f.actor = Ident::TcFilter { device: dev };
    f
}

fn bpf(r: &mut Rng, t: &Topo) -> Fault {
    let kinds: Vec<agent::Kind> = t.can.bpf.clone();
    let kind = if kinds.is_empty() {
        agent::Kind::TcxIngress
    } else {
        *r.pick(&kinds)
    };
    let inert = r.chance(20);
    let (ns, dev, leg) = match (kind, r.below(3)) {
        (agent::Kind::CgroupConnect4, _) => (t.host_ns.clone(), String::new(), Leg::Request),
        (agent::Kind::Xdp | agent::Kind::TcxIngress | agent::Kind::TcIngress, 0) => {
            (t.ns.clone(), t.ns_veth.clone(), Leg::Request)
        }
        (agent::Kind::Xdp | agent::Kind::TcxIngress | agent::Kind::TcIngress, 1) => {
            (t.ns.clone(), t.tap.clone(), Leg::Reply)
        }
        (agent::Kind::Xdp | agent::Kind::TcxIngress | agent::Kind::TcIngress, _) => {
            (t.host_ns.clone(), t.host_veth.clone(), Leg::Reply)
        }
        (_, 0) => (t.host_ns.clone(), t.host_veth.clone(), Leg::Request),
        (_, 1) => (t.ns.clone(), t.tap.clone(), Leg::Request),
        _ => (t.ns.clone(), t.ns_veth.clone(), Leg::Reply),
    };
    let target = match kind {
        agent::Kind::CgroupConnect4 => agent::Target::Cgroup(t.cgroup.clone()),
        _ => agent::Target::Device {
            netns: Some(ns.clone()),
            dev: dev.clone(),
        },
    };
    let spec = agent::Spec {
        kind,
        target,
        port: t.port,
        inert,
    };
    let mut f = blank(Family::Bpf, &ns);
    f.leg = Some(leg);
    f.device = (!dev.is_empty()).then_some(dev.clone());
    f.intent = if inert { Intent::Inert } else { Intent::Break };
    f.what = format!(
        "another agent's {} program ({}) on {}",
        kind.name(),
        spec.prog_name(),
        if dev.is_empty() {
            "the client's cgroup".into()
        } else {
            format!("{dev} in {ns}")
        }
    );
    f.actor = Ident::Bpf {
        name: spec.prog_name().into(),
    };
    f.apply.push(Step::Agent(spec));
    f
}

fn vmm(r: &mut Rng, t: &Topo) -> Fault {
    let mut f = blank(Family::Vmm, &t.ns);
    f.device = Some(t.tap.clone());
    match r.below(3) {
        0 => {
            f.apply.push(Step::Signal(libc::SIGSTOP));
            f.revert.push(Step::Signal(libc::SIGCONT));
            f.actor = Ident::Vmm;
            f.what = "the VMM stopped (SIGSTOP)".into();
        }
        n if n == 1 || !t.can.guest_delay => {
            f.apply.push(Step::Guest("listener off".into()));
            f.revert.push(Step::Guest("listener on".into()));
            f.actor = Ident::Guest;
            f.what = "nothing listens on envd's port in the guest".into();
        }
        _ => {
            let ms = 70 + r.below(60);
            f.apply.push(Step::Guest(format!("delay {ms}")));
            f.revert.push(Step::Guest("delay 0".into()));
            f.actor = Ident::Guest;
            f.what = format!("the guest answers {ms} ms late");
        }
    }
    f.leg = Some(Leg::Request);
    f
}
