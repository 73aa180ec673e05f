//! Would the firewall let envd traffic through? The envd packets (SYN, the request's ACK,
//! the SYN-ACK) are walked through every chain of the rule model on their hook.
//!
//! Matches the model cannot evaluate (marks, sets, address types, xt extensions ...) make a
//! rule a "maybe". Each chain is evaluated twice: assuming every unknown match goes against a
//! drop ("certain") and in favour of one ("possible"). A certain drop is a problem; a drop
//! that is only possible is a warning.
use std::net::Ipv4Addr;

use tracer_model::{
    hook::{PRIO_NAT_DST, PRIO_NAT_SRC},
    net::prefix_contains,
};

use super::model::{Action, Chain, Cond, HookPoint, Rule, Source, Table};

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
        other => other,
    }
}

/// Runs a packet through one base chain.
pub fn eval_base(table: &Table, chain: &Chain, pkt: &Packet, mode: Mode) -> Flow {
    let walk = Walk {
        table,
        pkt,
        prio: chain.priority,
        mode,
        done: Default::default(),
    };
    let dev_unknown = table.family == "netdev" && chain.device.is_none();
    if dev_unknown && mode == Mode::Certain {
        // Which device the chain is on is unknown: it surely applies to nothing.
        return Flow::End;
    }
    if let Some(dev) = &chain.device
        && pkt.in_dev.as_deref() != Some(dev.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{
        iptables::{IptSave, parse_ipt_rule},
        model::{Backend, flags},
        nft::NftRuleset,
    };

    fn syn() -> Packet {
        Packet {
            what: "the SYN".into(),
            in_dev: Some("eth0".into()),
            out_dev: Some("tap0".into()),
            src: Some([10, 12, 0, 2].into()),
            dst: Some([169, 254, 0, 21].into()),
            dst_nat: None,
            src_nat: None,
            sport: Port::Ephemeral,
            dport: Port::Known(49983),
            flags: flags::SYN,
            ct: Ct::New,
        }
    }

    fn synack() -> Packet {
        Packet {
            what: "the SYN-ACK".into(),
            in_dev: Some("tap0".into()),
            out_dev: Some("eth0".into()),
            src: Some([169, 254, 0, 21].into()),
            dst: Some([10, 12, 0, 2].into()),
            dst_nat: None,
            src_nat: None,
            sport: Port::Known(49983),
            dport: Port::Ephemeral,
            flags: flags::SYN | flags::ACK,
            ct: Ct::Established,
        }
    }

    fn ipt(text: &str) -> Vec<Table> {
        IptSave::parse(text).unwrap().tables(Backend::Nft)
    }

    fn drops(tables: &[Table], hook: HookPoint, p: &Packet) -> Vec<Outcome> {
        at_hook(tables, hook, p)
    }

    #[test]
    fn parses_iptables_rules() {
        let r = parse_ipt_rule(
            "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 --tcp-flags SYN,ACK SYN,ACK -m comment --comment \"a b\" -j DROP",
        );
        assert_eq!(r.action, Action::Drop);
        assert!(r.conds.contains(&Cond::InDev(vec!["eth0".into()])));
        assert!(r.conds.contains(&Cond::DPort(vec![(49983, 49983)])));
        assert!(r.conds.contains(&Cond::Flags {
            mask: flags::SYN | flags::ACK,
            cmp: flags::SYN | flags::ACK
        }));
        assert!(!r.conds.iter().any(|c| matches!(c, Cond::Unknown(_))), "{r:?}");
        let r = parse_ipt_rule(
            "-A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21:49983",
        );
        assert_eq!(r.action, Action::Dnat(Some([169, 254, 0, 21].into())));
        let r = parse_ipt_rule("-A INPUT -m mark --mark 0x1 ! -s 10.0.0.0/255.0.0.0 -j ACCEPT");
        assert!(matches!(r.conds[0], Cond::Unknown(_)), "{r:?}");
        assert_eq!(
            r.conds[1],
            Cond::Not(Box::new(Cond::Src(vec![([10, 0, 0, 0].into(), 8)])))
        );
    }

    #[test]
    fn forward_drop_rule_and_policy() {
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP\nCOMMIT\n",
        );
        assert!(matches!(&drops(&t, HookPoint::Forward, &syn())[..], [Outcome::Drops(h)] if !h.policy));
        assert!(drops(&t, HookPoint::Forward, &synack()).is_empty());

        let t = ipt("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n");
        assert!(matches!(&drops(&t, HookPoint::Forward, &syn())[..], [Outcome::Drops(h)] if h.policy));
        // Policy DROP with an accept for envd first: fine.
        let t = ipt(
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A FORWARD -i eth0 -o tap0 -j ACCEPT\nCOMMIT\n",
        );
        assert!(drops(&t, HookPoint::Forward, &syn()).is_empty());
        assert!(drops(&t, HookPoint::Forward, &synack()).is_empty());
    }

    #[test]
    fn user_chains_and_returns() {
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n:LAB-GUARD - [0:0]\n-A FORWARD -i eth0 -j LAB-GUARD\n-A LAB-GUARD -p tcp -m tcp --dport 49983 -j DROP\nCOMMIT\n",
        );
        let out = drops(&t, HookPoint::Forward, &syn());
        assert!(
            matches!(&out[..], [Outcome::Drops(h)] if h.chains == ["FORWARD", "LAB-GUARD"]),
            "{out:?}"
        );
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n:G - [0:0]\n-A FORWARD -j G\n-A FORWARD -j DROP\n-A G -d 169.254.0.21/32 -j ACCEPT\nCOMMIT\n",
        );
        assert!(drops(&t, HookPoint::Forward, &syn()).is_empty());
        assert_eq!(drops(&t, HookPoint::Forward, &synack()).len(), 1);
    }

    #[test]
    fn unknown_matches_make_warnings_not_problems() {
        // An unknown match on the DROP: it may drop.
        let t = ipt("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m mark --mark 0x1 -j DROP\nCOMMIT\n");
        assert!(matches!(
            &drops(&t, HookPoint::Forward, &syn())[..],
            [Outcome::MayDrop(_)]
        ));
        // An unknown match on an ACCEPT before a DROP: the drop is only possible.
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m set --match-set ok src -j ACCEPT\n-A FORWARD -j DROP\nCOMMIT\n",
        );
        assert!(matches!(
            &drops(&t, HookPoint::Forward, &syn())[..],
            [Outcome::MayDrop(_)]
        ));
        // A maybe-drop followed by a sure drop: dropped either way.
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m mark --mark 1 -j DROP\n-A FORWARD -j DROP\nCOMMIT\n",
        );
        assert!(matches!(
            &drops(&t, HookPoint::Forward, &syn())[..],
            [Outcome::Drops(_)]
        ));
    }

    #[test]
    fn ephemeral_ports_and_ct_states() {
        let t = ipt(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 1024:65535 -m state --state NEW -j DROP\nCOMMIT\n",
        );
        let mut p = synack();
        p.in_dev = Some("veth-1".into());
        assert!(
            drops(&t, HookPoint::Input, &p).is_empty(),
            "the reply is ESTABLISHED"
        );
        p.ct = Ct::New;
        assert_eq!(drops(&t, HookPoint::Input, &p).len(), 1);
        let t =
            ipt("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 40000:50000 -j DROP\nCOMMIT\n");
        assert!(matches!(
            &drops(&t, HookPoint::Input, &p)[..],
            [Outcome::MayDrop(_)]
        ));
    }

    const NFT: &str = r#"{"nftables": [
      {"table": {"family": "ip", "name": "filter", "handle": 1}},
      {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
      {"table": {"family": "inet", "name": "slot-firewall", "handle": 2}},
      {"chain": {"family": "inet", "table": "slot-firewall", "name": "PREROUTE_FILTER", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "slot-firewall", "name": "preroute_nat", "handle": 4, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "PREROUTE_FILTER", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "tap0"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "PREROUTE_FILTER", "handle": 7, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "tap0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "169.254.0.0", "len": 16}}]}}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "preroute_nat", "handle": 17, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.11.0.5"}}, {"dnat": {"family": "ip", "addr": "169.254.0.21"}}]}},
      {"table": {"family": "ip", "name": "lab-fault", "handle": 3}},
      {"chain": {"family": "ip", "table": "lab-fault", "name": "pre", "handle": 1, "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "ip", "table": "lab-fault", "chain": "pre", "handle": 2, "expr": [{"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}, "right": "syn"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 49983}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}
    ]}"#;

    #[test]
    fn nft_rulesets_skip_iptables_tables_and_evaluate_the_rest() {
        let t = NftRuleset::parse(NFT).unwrap().tables(&["filter".into()]);
        assert_eq!(
            t.len(),
            2,
            "the iptables-nft filter table is left to iptables-nft-save"
        );
        let mut p = syn();
        p.dst = Some([10, 11, 0, 5].into());
        p.dst_nat = Some([169, 254, 0, 21].into());
        let out = drops(&t, HookPoint::Prerouting, &p);
        assert!(
            matches!(&out[..], [Outcome::Drops(h)] if h.table == "lab-fault" && h.handle == Some(2) && h.rule.contains("drop")),
            "{out:?}"
        );
        // The slot firewall accepts the established reply before its drop of 169.254/16.
        let mut r = synack();
        r.dst = Some([169, 254, 0, 22].into());
        assert!(drops(&t, HookPoint::Prerouting, &r).is_empty());
        r.ct = Ct::New;
        assert_eq!(drops(&t, HookPoint::Prerouting, &r).len(), 1);
        let dnat = nat_at_hook(&t, HookPoint::Prerouting, &p).unwrap();
        assert_eq!(dnat.action, Action::Dnat(Some([169, 254, 0, 21].into())));
    }

    /// Found by the iptables_save fuzz target: jumps that fan out (or loop, in a saved file)
    /// made one walk cost n^depth. A walk is bounded; a loop is not followed.
    #[test]
    fn fanned_out_and_looping_jumps_are_walked_in_bounded_time() {
        let mut text = String::from("*filter\n:FORWARD ACCEPT [0:0]\n");
        for level in 0..8 {
            text += &format!(":C{level} - [0:0]\n");
        }
        for _ in 0..40 {
            text += "[0:0] -A FORWARD -j C0\n";
            for level in 0..7 {
                text += &format!("[0:0] -A C{level} -j C{}\n", level + 1);
            }
            // A loop back to the first user chain.
            text += "[0:0] -A C7 -j C0\n";
        }
        text += "[0:0] -A FORWARD -p tcp --dport 49983 -j DROP\nCOMMIT\n";
        let t = ipt(&text);
        let out = at_hook(&t, HookPoint::Forward, &syn());
        // 40^8 walks if every jump walked again; each chain once, the DROP after them found.
        assert!(
            matches!(&out[..], [Outcome::Drops(h)] if h.chains == ["FORWARD"] && h.rule.contains("--dport 49983")),
            "{out:?}"
        );
    }
}
