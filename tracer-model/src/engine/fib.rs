//! The kernel's IPv4 route lookup, evaluated over what was read: policy rules in priority
//! order, each with every selector, then the longest-prefix route of the table it selects
//! (`throw` and a table without a match go on to the next rule). Tells which rule and which
//! route a packet took, so the engine can name them.
use std::net::Ipv4Addr;

use super::inventory::{NsInventory, PolicyRule, Route};
use crate::net::prefix_contains;

/// The flow a lookup is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub dst: Ipv4Addr,
    pub src: Option<Ipv4Addr>,
    /// The input device (a received packet), by name.
    pub iif: Option<String>,
    pub mark: u32,
    pub uid: Option<u32>,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Default for Flow {
    fn default() -> Self {
        Self {
            dst: Ipv4Addr::UNSPECIFIED,
            src: None,
            iif: None,
            mark: 0,
            uid: None,
            proto: 0,
            sport: 0,
            dport: 0,
        }
    }
}

/// What the lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup<'a> {
    /// The rule that decided (None when rules were not read: the main table alone).
    pub rule: Option<&'a PolicyRule>,
    /// The route it took; None when a rule's own action (blackhole, prohibit, unreachable)
    /// or no route at all decided.
    pub route: Option<&'a Route>,
}

impl Lookup<'_> {
    /// The route type the packet met: unicast, local, blackhole, unreachable, prohibit, or
    /// `none` (no route anywhere).
    pub fn kind(&self) -> String {
        match (self.route, self.rule) {
            (Some(r), _) => r.kind.clone(),
            (None, Some(rule)) if !rule.action.is_empty() && rule.action != "lookup" => rule.action.clone(),
            _ => "none".into(),
        }
    }

    /// True when the rule that decided is not one of the three the kernel starts with (local,
    /// main, default): someone added it.
    pub fn by_added_rule(&self) -> bool {
        self.rule.is_some_and(|r| {
            !(r.priority == 0 || r.priority == 32766 || r.priority == 32767) || r.table.is_none()
        })
    }
}

/// Evaluates the lookup of `flow` in one namespace.
pub fn lookup<'a>(inv: &'a NsInventory, flow: &Flow) -> Lookup<'a> {
    if inv.rules.is_empty() {
        return Lookup {
            rule: None,
            route: best_route(inv, 254, flow.dst),
        };
    }
    let mut rules: Vec<&PolicyRule> = inv.rules.iter().collect();
    rules.sort_by_key(|r| r.priority);
    for rule in rules {
        if !selects(rule, flow) {
            continue;
        }
        match rule.action.as_str() {
            "blackhole" | "unreachable" | "prohibit" => {
                return Lookup {
                    rule: Some(rule),
                    route: None,
                };
            }
            "nop" => continue,
            _ => {}
        }
        let Some(table) = rule.table else { continue };
        match best_route(inv, table, flow.dst) {
            Some(r) if r.kind == "throw" => continue,
            Some(r) => {
                return Lookup {
                    rule: Some(rule),
                    route: Some(r),
                };
            }
            None => continue,
        }
    }
    Lookup {
        rule: None,
        route: None,
    }
}

/// Whether every selector of `rule` matches `flow` (then `not` inverts it).
fn selects(rule: &PolicyRule, f: &Flow) -> bool {
    let net = |n: Option<(Ipv4Addr, u8)>, a: Option<Ipv4Addr>| match (n, a) {
        (None, _) => true,
        (Some((net, p)), Some(a)) => prefix_contains(net, p, a),
        (Some((_, 0)), None) => true,
        (Some(_), None) => false,
    };
    let range = |r: Option<(u16, u16)>, v: u16| r.is_none_or(|(a, b)| a <= v && v <= b);
    let all = net(rule.src, f.src)
        && net(rule.dst, Some(f.dst))
        // A locally made packet has iif lo.
        && rule.iif.as_deref().is_none_or(|i| Some(i) == f.iif.as_deref() || (i == "lo" && f.iif.is_none()))
        && rule.oif.is_none()
        && rule.fwmark.is_none_or(|(m, mask)| f.mark & mask == m)
        && rule.uid_range.is_none_or(|(a, b)| f.uid.is_some_and(|u| a <= u && u <= b))
        && rule.ipproto.is_none_or(|p| p == f.proto)
        && range(rule.sport, f.sport)
        && range(rule.dport, f.dport)
        && rule.tos.is_none_or(|t| t == 0);
    all != rule.invert
}

/// The route of `table` for `dst`: longest prefix, then lowest metric.
pub fn best_route(inv: &NsInventory, table: u32, dst: Ipv4Addr) -> Option<&Route> {
    inv.routes
        .iter()
        .filter(|r| r.table == table && prefix_contains(r.dst, r.prefix, dst))
        .filter(|r| r.kind != "broadcast" || r.prefix == 32)
        .min_by_key(|r| (std::cmp::Reverse(r.prefix), r.metric))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(table: u32, dst: &str, prefix: u8, kind: &str, dev: &str) -> Route {
        Route {
            table,
            dst: dst.parse().unwrap(),
            prefix,
            kind: kind.into(),
            gateway: None,
            oif: None,
            device: Some(dev.into()),
            metric: 0,
            prefsrc: None,
        }
    }

    fn rule(priority: u32, table: u32) -> PolicyRule {
        PolicyRule {
            priority,
            table: Some(table),
            action: "lookup".into(),
            ..Default::default()
        }
    }

    fn ns() -> NsInventory {
        NsInventory {
            rules: vec![rule(0, 255), rule(32766, 254), rule(32767, 253)],
            routes: vec![
                route(254, "0.0.0.0", 0, "unicast", "eth0"),
                route(254, "169.254.0.20", 30, "unicast", "tap0"),
                route(255, "169.254.0.22", 32, "local", "tap0"),
            ],
            ..Default::default()
        }
    }

    fn to(dst: &str) -> Flow {
        Flow {
            dst: dst.parse().unwrap(),
            proto: 6,
            dport: 49983,
            ..Default::default()
        }
    }

    #[test]
    fn the_main_table_routes_the_guest_through_the_tap() {
        let inv = ns();
        let l = lookup(&inv, &to("169.254.0.21"));
        assert_eq!(l.route.unwrap().device.as_deref(), Some("tap0"));
        assert!(!l.by_added_rule());
        assert_eq!(lookup(&inv, &to("169.254.0.22")).kind(), "local");
    }

    #[test]
    fn policy_rules_with_selectors_pick_other_tables() {
        let mut inv = ns();
        inv.routes.push(route(100, "169.254.0.21", 32, "blackhole", ""));
        inv.rules.push(PolicyRule {
            priority: 100,
            fwmark: Some((0x77, u32::MAX)),
            ..rule(100, 100)
        });
        assert_eq!(
            lookup(&inv, &to("169.254.0.21")).kind(),
            "unicast",
            "no mark: main"
        );
        let marked = Flow {
            mark: 0x77,
            ..to("169.254.0.21")
        };
        let l = lookup(&inv, &marked);
        assert_eq!(
            (l.kind(), l.rule.map(|r| r.priority)),
            ("blackhole".into(), Some(100))
        );
        assert!(l.by_added_rule());
        inv.rules.push(PolicyRule {
            priority: 50,
            dport: Some((49983, 49983)),
            ipproto: Some(6),
            action: "prohibit".into(),
            table: None,
            ..Default::default()
        });
        assert_eq!(lookup(&inv, &to("169.254.0.21")).kind(), "prohibit");
    }

    #[test]
    fn throw_goes_on_to_the_next_rule() {
        let mut inv = ns();
        inv.routes.push(route(100, "169.254.0.0", 16, "throw", ""));
        inv.rules.push(rule(100, 100));
        let l = lookup(&inv, &to("169.254.0.21"));
        assert_eq!(l.route.unwrap().device.as_deref(), Some("tap0"));
    }
}
