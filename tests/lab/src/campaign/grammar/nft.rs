//! nft faults: a table of its own with a base chain at a drawn hook and priority, holding one
//! rule whose statement fits the hook (drop, reject, notrack, mark, NAT, a conntrack zone).
use super::{Family, Fault, Ident, Intent, Leg, Step, Topo, blank, place, words};
use crate::campaign::rng::Rng;

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

pub(super) fn nft(r: &mut Rng, t: &Topo) -> Fault {
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
