//! Would the firewall let envd traffic through? The envd packets (SYN, the request's ACK,
//! the SYN-ACK) are walked through every chain of the rule model on their hook.
//!
//! Matches the model cannot evaluate (marks, sets, address types, xt extensions ...) make a
//! rule a "maybe". Each chain is evaluated twice: assuming every unknown match goes against a
//! drop ("certain") and in favour of one ("possible"). A certain drop is a problem; a drop
//! that is only possible is a warning.
use std::net::Ipv4Addr;

use super::model::{Action, Chain, Cond, HookPoint, Rule, Source, Table};
use crate::{
    hook::{PRIO_NAT_DST, PRIO_NAT_SRC},
    net::prefix_contains,
};

/// Conntrack state of a packet as a filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct {
    New,
    Established,
}

/// A TCP port: known, or the client's ephemeral one (Linux's default range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Known(u16),
    Ephemeral,
}

const EPHEMERAL: (u16, u16) = (32768, 60999);

/// One envd packet at one hook. Addresses are None when discovery could not tell them.
#[derive(Debug, Clone)]
pub struct Packet {
    /// "the SYN to 169.254.0.21:49983", for messages.
    pub what: String,
    pub in_dev: Option<String>,
    pub out_dev: Option<String>,
    pub src: Option<Ipv4Addr>,
    pub dst: Option<Ipv4Addr>,
    /// Destination after the DNAT at priority -100 (chains after it see this one).
    pub dst_nat: Option<Ipv4Addr>,
    /// Source after the (un-)NAT at priority 100 (chains after it see this one).
    pub src_nat: Option<Ipv4Addr>,
    pub sport: Port,
    pub dport: Port,
    pub flags: u8,
    pub ct: Ct,
    /// The skb mark, when known (a rule matching a mark is a "maybe" otherwise).
    pub mark: Option<u32>,
}

impl Packet {
    fn dst_at(&self, prio: i32) -> Option<Ipv4Addr> {
        match self.dst_nat {
            Some(d) if prio > PRIO_NAT_DST => Some(d),
            _ => self.dst,
        }
    }

    fn src_at(&self, prio: i32) -> Option<Ipv4Addr> {
        match self.src_nat {
            Some(s) if prio > PRIO_NAT_SRC => Some(s),
            _ => self.src,
        }
    }
}

/// Three-valued match result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn from(b: bool) -> Self {
        if b { Self::Yes } else { Self::No }
    }

    fn not(self) -> Self {
        match self {
            Self::Yes => Self::No,
            Self::No => Self::Yes,
            Self::Maybe => Self::Maybe,
        }
    }

    fn and(self, o: Self) -> Self {
        match (self, o) {
            (Self::No, _) | (_, Self::No) => Self::No,
            (Self::Yes, Self::Yes) => Self::Yes,
            _ => Self::Maybe,
        }
    }
}

fn dev_matches(patterns: &[String], dev: Option<&str>) -> Tri {
    let Some(dev) = dev else { return Tri::No };
    Tri::from(patterns.iter().any(|p| match p.strip_suffix('+') {
        Some(prefix) => dev.starts_with(prefix),
        None => p == dev,
    }))
}

fn addr_matches(nets: &[(Ipv4Addr, u8)], addr: Option<Ipv4Addr>) -> Tri {
    match addr {
        None => Tri::Maybe,
        Some(a) => Tri::from(nets.iter().any(|(n, p)| prefix_contains(*n, *p, a))),
    }
}

fn port_matches(ranges: &[(u16, u16)], port: Port) -> Tri {
    match port {
        Port::Known(p) => Tri::from(ranges.iter().any(|(a, b)| *a <= p && p <= *b)),
        Port::Ephemeral => {
            let (lo, hi) = EPHEMERAL;
            if ranges.iter().any(|(a, b)| *a <= lo && hi <= *b) {
                Tri::Yes
            } else if ranges.iter().all(|(a, b)| *b < lo || *a > hi) {
                Tri::No
            } else {
                Tri::Maybe
            }
        }
    }
}

fn ct_matches(states: &[String], ct: Ct) -> Tri {
    let ours = match ct {
        Ct::New => "NEW",
        Ct::Established => "ESTABLISHED",
    };
    if states.iter().any(|s| s == ours) {
        Tri::Yes
    } else if states.iter().any(|s| s == "DNAT" || s == "SNAT") {
        Tri::Maybe
    } else {
        Tri::No
    }
}

fn cond_matches(c: &Cond, p: &Packet, prio: i32) -> Tri {
    match c {
        Cond::InDev(d) => dev_matches(d, p.in_dev.as_deref()),
        Cond::OutDev(d) => dev_matches(d, p.out_dev.as_deref()),
        Cond::Src(n) => addr_matches(n, p.src_at(prio)),
        Cond::Dst(n) => addr_matches(n, p.dst_at(prio)),
        Cond::Tcp(t) => Tri::from(*t),
        Cond::SPort(r) => port_matches(r, p.sport),
        Cond::DPort(r) => port_matches(r, p.dport),
        Cond::Flags { mask, cmp } => Tri::from(p.flags & mask == *cmp),
        Cond::FlagsAny(bits) => Tri::from(p.flags & bits != 0),
        Cond::CtState(s) => ct_matches(s, p.ct),
        Cond::Mark { value, mask } => match p.mark {
            Some(m) => Tri::from(m & mask == *value),
            None => Tri::Maybe,
        },
        Cond::True => Tri::Yes,
        Cond::Unknown(_) => Tri::Maybe,
        Cond::Not(inner) => cond_matches(inner, p, prio).not(),
    }
}

fn rule_matches(r: &Rule, p: &Packet, prio: i32) -> Tri {
    r.conds
        .iter()
        .fold(Tri::Yes, |acc, c| acc.and(cond_matches(c, p, prio)))
}

/// How unknown matches are resolved: against a drop (what surely happens) or for one (what
/// may happen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Certain,
    Possible,
}

/// What a chain did to a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Accept,
    Drop(Hit),
    Nat(Hit),
    /// The first rule the walk was looking for (see [`first_acting`]).
    Found(Hit),
    Return,
    /// Fell off the end of a base chain with an ACCEPT policy, or of a user chain.
    End,
}

/// The rule (or policy) that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub source: Source,
    pub family: String,
    pub table: String,
    /// Chains from the base chain to the deciding one (FORWARD → LAB-GUARD).
    pub chains: Vec<String>,
    /// The rule, or `policy drop` for a chain policy.
    pub rule: String,
    pub handle: Option<u64>,
    pub policy: bool,
    pub action: Action,
}

impl Hit {
    /// "iptables-nft filter FORWARD → LAB-GUARD".
    pub fn place(&self) -> String {
        match self.source {
            Source::Nft => format!(
                "nft table {} {} chain {}",
                self.family,
                self.table,
                self.chains.join(" → ")
            ),
            s => format!("{} {} {}", s.label(), self.table, self.chains.join(" → ")),
        }
    }
}

const MAX_DEPTH: usize = 16;

struct Walk<'a> {
    table: &'a Table,
    pkt: &'a Packet,
    prio: i32,
    mode: Mode,
    /// What each user chain did with this packet, its hit's chains relative to it. Jumps fan
    /// out (n jumps into a chain of n jumps ...): walked again at every jump, a ruleset costs
    /// n^depth (the fuzzer found a 1 KiB one taking 12 s); remembered, each chain once.
    done: std::cell::RefCell<std::collections::HashMap<String, Flow>>,
    /// Looking for the first rule whose action this accepts (terminal or not).
    want: Option<&'a dyn Fn(&Action) -> bool>,
}

impl Walk<'_> {
    fn chain(&self, chain: &Chain, path: &mut Vec<String>) -> Flow {
        let prefix = path.len();
        let known = self.done.borrow().get(&chain.name).cloned();
        if let Some(flow) = known {
            return rebase(flow, |chains| path.iter().cloned().chain(chains).collect());
        }
        path.push(chain.name.clone());
        let flow = self.rules(chain, path);
        path.pop();
        let relative = rebase(flow.clone(), |chains| chains.skip(prefix).collect());
        self.done.borrow_mut().insert(chain.name.clone(), relative);
        flow
    }

    fn rules(&self, chain: &Chain, path: &mut Vec<String>) -> Flow {
        for r in &chain.rules {
            let m = rule_matches(r, self.pkt, self.prio);
            if m == Tri::No {
                continue;
            }
            let flow = self.action(r, m, path);
            if let Some(f) = flow {
                return f;
            }
        }
        Flow::End
    }

    /// The rule's effect, or None to go on with the next rule.
    fn action(&self, r: &Rule, m: Tri, path: &mut Vec<String>) -> Option<Flow> {
        let taken = |for_drop: bool| match (m, self.mode) {
            (Tri::Yes, _) => true,
            (Tri::Maybe, Mode::Certain) => !for_drop,
            (Tri::Maybe, Mode::Possible) => for_drop,
            (Tri::No, _) => false,
        };
        let hit = |path: &Vec<String>| Hit {
            source: self.table.source,
            family: self.table.family.clone(),
            table: self.table.name.clone(),
            chains: path.clone(),
            rule: r.text.clone(),
            handle: r.handle,
            policy: false,
            action: r.action.clone(),
        };
        if let Some(want) = self.want
            && want(&r.action)
            && taken(true)
        {
            return Some(Flow::Found(hit(path)));
        }
        match &r.action {
            Action::Accept => taken(false).then_some(Flow::Accept),
            Action::Return => taken(false).then_some(Flow::Return),
            Action::Drop | Action::Reject | Action::Divert(_) => taken(true).then(|| Flow::Drop(hit(path))),
            a if a.is_nat() => taken(false).then(|| Flow::Nat(hit(path))),
            Action::Jump(name) | Action::Goto(name) => {
                let goto = matches!(r.action, Action::Goto(_));
                let target = self.table.chain(name)?;
                // The kernel refuses loops; a saved ruleset (or a crafted one) may still hold one.
                if path.len() >= MAX_DEPTH || path.iter().any(|c| c == name) {
                    return None;
                }
                match self.chain(target, path) {
                    Flow::Return | Flow::End if goto && m == Tri::Yes => Some(Flow::Return),
                    Flow::Return | Flow::End => None,
                    Flow::Drop(h) => taken(true).then_some(Flow::Drop(h)),
                    Flow::Found(h) => taken(true).then_some(Flow::Found(h)),
                    f => taken(false).then_some(f),
                }
            }
            _ => None,
        }
    }
}

/// `flow` with its hit's chain list rewritten by `f`.
fn rebase(flow: Flow, f: impl FnOnce(std::vec::IntoIter<String>) -> Vec<String>) -> Flow {
    match flow {
        Flow::Drop(mut h) => {
            h.chains = f(std::mem::take(&mut h.chains).into_iter());
            Flow::Drop(h)
        }
        Flow::Nat(mut h) => {
            h.chains = f(std::mem::take(&mut h.chains).into_iter());
            Flow::Nat(h)
        }
        Flow::Found(mut h) => {
            h.chains = f(std::mem::take(&mut h.chains).into_iter());
            Flow::Found(h)
        }
        other => other,
    }
}

/// Runs a packet through one base chain.
pub fn eval_base(table: &Table, chain: &Chain, pkt: &Packet, mode: Mode) -> Flow {
    walk_base(table, chain, pkt, mode, None)
}

fn walk_base(
    table: &Table,
    chain: &Chain,
    pkt: &Packet,
    mode: Mode,
    want: Option<&dyn Fn(&Action) -> bool>,
) -> Flow {
    let walk = Walk {
        table,
        pkt,
        prio: chain.priority,
        mode,
        done: Default::default(),
        want,
    };
    let dev_unknown = table.family == "netdev" && chain.device.is_none();
    if dev_unknown && mode == Mode::Certain {
        // Which device the chain is on is unknown: it surely applies to nothing.
        return Flow::End;
    }
    // A netdev chain sees the packets of its device: received ones at ingress, sent ones at
    // egress.
    let on = match chain.hook {
        Some(HookPoint::Egress) => pkt.out_dev.as_deref(),
        _ => pkt.in_dev.as_deref(),
    };
    if let Some(dev) = &chain.device
        && on != Some(dev.as_str())
    {
        return Flow::End;
    }
    match walk.chain(chain, &mut Vec::new()) {
        Flow::End | Flow::Return if chain.policy_drop => Flow::Drop(Hit {
            source: table.source,
            family: table.family.clone(),
            table: table.name.clone(),
            chains: vec![chain.name.clone()],
            rule: "policy drop".into(),
            handle: None,
            policy: true,
            action: Action::Drop,
        }),
        Flow::Return => Flow::End,
        f => f,
    }
}

/// Base chains of `tables` at `hook` (nat chains only for new connections), in priority order.
pub fn base_chains(tables: &[Table], hook: HookPoint, ct: Ct) -> Vec<(&Table, &Chain)> {
    let mut v: Vec<(&Table, &Chain)> = tables
        .iter()
        .flat_map(|t| t.chains.iter().map(move |c| (t, c)))
        .filter(|(_, c)| c.hook == Some(hook) && (ct == Ct::New || !c.is_nat))
        .collect();
    v.sort_by_key(|(_, c)| c.priority);
    v
}

/// Where a packet is dropped at one hook: the certain drop, else a possible one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passes,
    Drops(Hit),
    MayDrop(Hit),
}

pub fn at_hook(tables: &[Table], hook: HookPoint, pkt: &Packet) -> Vec<Outcome> {
    base_chains(tables, hook, pkt.ct)
        .into_iter()
        .map(|(t, c)| match eval_base(t, c, pkt, Mode::Certain) {
            Flow::Drop(h) => Outcome::Drops(h),
            _ => match eval_base(t, c, pkt, Mode::Possible) {
                Flow::Drop(h) => Outcome::MayDrop(h),
                _ => Outcome::Passes,
            },
        })
        .filter(|o| *o != Outcome::Passes)
        .collect()
}

/// The first NAT rule of `hook` that the packet takes (DNAT at PREROUTING, SNAT at
/// POSTROUTING), with the table it is in.
pub fn nat_at_hook(tables: &[Table], hook: HookPoint, pkt: &Packet) -> Option<Hit> {
    base_chains(tables, hook, Ct::New)
        .into_iter()
        .filter(|(_, c)| c.is_nat)
        .find_map(|(t, c)| match eval_base(t, c, pkt, Mode::Certain) {
            Flow::Nat(h) => Some(h),
            _ => None,
        })
}

/// The first rule a packet takes in one base chain whose action `want` accepts (a rule that
/// may match counts: the caller asks "who could have done this"), or the terminal verdict it
/// reaches first: `Found(hit)`, else what the chain does (`Accept`, `Drop`, `Nat`, `End`).
pub fn first_acting(table: &Table, chain: &Chain, pkt: &Packet, want: &dyn Fn(&Action) -> bool) -> Flow {
    walk_base(table, chain, pkt, Mode::Possible, Some(want))
}
