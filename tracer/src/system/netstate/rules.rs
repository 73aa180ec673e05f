//! Policy routing rules (`ip rule`), as far as the route of a locally made connection
//! depends on them, and what refuses to route a destination ([`route_blocker`]).
use std::net::Ipv4Addr;

use netlink_packet_route::{
    AddressFamily,
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use serde::Serialize;

use super::{RT_TABLE_LOCAL, RT_TABLE_MAIN, Route, prefix_contains};

/// One policy routing rule, as far as the route of a locally made connection depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub priority: u32,
    pub dst: Option<(Ipv4Addr, u8)>,
    pub src: Option<(Ipv4Addr, u8)>,
    /// Matches the tracer cannot evaluate for a given connection (iif, oif, fwmark, ports,
    /// uid ranges ...): the rule may or may not apply.
    pub conditional: bool,
    pub table: u32,
    /// `lookup`, `blackhole`, `unreachable`, `prohibit`, `goto`, `nop`.
    pub action: String,
}

impl Rule {
    /// As `ip rule` prints it.
    pub fn text(&self) -> String {
        let mut s = format!("{}:", self.priority);
        match self.src {
            Some((a, p)) => s += &format!(" from {a}/{p}"),
            None => s += " from all",
        }
        if let Some((a, p)) = self.dst {
            s += &format!(" to {a}/{p}");
        }
        if self.conditional {
            s += " (and more matches)";
        }
        match self.action.as_str() {
            "lookup" => s += &format!(" lookup {}", table_name(self.table)),
            other => s += &format!(" {other}"),
        }
        s
    }
}

/// `main`, `local`, `default`, or the number.
pub fn table_name(t: u32) -> String {
    match t {
        RT_TABLE_MAIN => "main".into(),
        RT_TABLE_LOCAL => "local".into(),
        253 => "default".into(),
        n => n.to_string(),
    }
}

pub fn rule_from(msg: &RuleMessage) -> Option<Rule> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut r = Rule {
        priority: 0,
        dst: None,
        src: None,
        conditional: false,
        table: u32::from(msg.header.table),
        action: match msg.header.action {
            RuleAction::ToTable => "lookup",
            RuleAction::Goto => "goto",
            RuleAction::Nop => "nop",
            RuleAction::Blackhole => "blackhole",
            RuleAction::Unreachable => "unreachable",
            RuleAction::Prohibit => "prohibit",
            _ => "other",
        }
        .into(),
    };
    let v4 = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(v) => Some(*v),
        _ => None,
    };
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Destination(a) => r.dst = v4(a).map(|a| (a, msg.header.dst_len)),
            RuleAttribute::Source(a) => r.src = v4(a).map(|a| (a, msg.header.src_len)),
            RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::UidRange(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_)
            | RuleAttribute::TunId(_) => r.conditional = true,
            _ => {}
        }
    }
    if msg.header.tos != 0 {
        r.conditional = true;
    }
    Some(r)
}

/// What refuses to route a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker<'a> {
    /// A policy rule whose action is blackhole/unreachable/prohibit.
    Rule(&'a Rule),
    /// A blackhole/unreachable/prohibit route, reached through this rule.
    Route(&'a Route, &'a Rule),
}

impl Blocker<'_> {
    /// As `ip rule`/`ip route` would name it.
    pub fn text(&self) -> String {
        match self {
            Self::Rule(r) => format!("policy rule {}", r.text()),
            Self::Route(x, r) => format!(
                "route {} {}/{} in table {} (reached by rule {})",
                x.kind,
                x.dst,
                x.prefix,
                table_name(x.table),
                r.text()
            ),
        }
    }
}

/// Why a connection to `dst` (from `src`) cannot be routed: the first policy rule that
/// applies, and what it leads to. None when it leads to an ordinary route (or nothing
/// decides). Rules with matches the tracer cannot evaluate are passed over.
pub fn route_blocker<'a>(
    rules: &'a [Rule],
    routes: &'a [Route],
    dst: Ipv4Addr,
    src: Option<Ipv4Addr>,
) -> Option<Blocker<'a>> {
    const REFUSING: [&str; 3] = ["blackhole", "unreachable", "prohibit"];
    for r in rules {
        let applies = !r.conditional
            && r.dst.is_none_or(|(a, p)| prefix_contains(a, p, dst))
            && r.src
                .is_none_or(|(a, p)| src.is_none_or(|s| prefix_contains(a, p, s)));
        if !applies {
            continue;
        }
        match r.action.as_str() {
            a if REFUSING.contains(&a) => return Some(Blocker::Rule(r)),
            "lookup" => {
                let best = routes
                    .iter()
                    .filter(|x| x.table == r.table && prefix_contains(x.dst, x.prefix, dst))
                    .min_by_key(|x| (std::cmp::Reverse(x.prefix), x.metric));
                match best {
                    Some(x) if REFUSING.contains(&x.kind.as_str()) => return Some(Blocker::Route(x, r)),
                    Some(_) => return None,
                    None => {}
                }
            }
            _ => {}
        }
    }
    None
}
