//! Routing faults: a route for the leg's destination (blackhole, unreachable, prohibit, or
//! one that leads elsewhere) and a policy rule ahead of the main table.
use super::{Family, Fault, Ident, Intent, Leg, Topo, blank, place, words};
use crate::campaign::rng::Rng;

pub(super) fn route(r: &mut Rng, t: &Topo) -> Fault {
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

pub(super) fn policy_rule(r: &mut Rng, t: &Topo) -> Fault {
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
