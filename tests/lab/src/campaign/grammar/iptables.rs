//! iptables faults: a rule (in a chain the leg crosses, or a user chain jumped to or not)
//! whose match and target are drawn to fit the table and the leg.
use super::{Family, Fault, Ident, Intent, Leg, Topo, blank, place, words};
use crate::campaign::rng::Rng;

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

pub(super) fn iptables(r: &mut Rng, t: &Topo) -> Fault {
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
