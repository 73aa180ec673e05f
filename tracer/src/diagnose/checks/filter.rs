//! NAT, the firewalls on the path (iptables of both backends, native nftables), conntrack.
use std::net::Ipv4Addr;

use super::Ctx;
use tracer_model::net::prefix_contains;

use crate::{
    diagnose::{Check, ENVD_PORT, facts::NsFacts},
    system::firewall::{self, Ct, HookPoint, Outcome, Packet, Port, Source, flags, nat::Datapath},
};

fn syn_at_ns(c: &Ctx, ct: Ct) -> Packet {
    Packet {
        what: match ct {
            Ct::New => format!(
                "the SYN to {}:{}",
                c.host_ip().map_or("?".into(), |i| i.to_string()),
                ENVD_PORT
            ),
            Ct::Established => "the request after the handshake".into(),
        },
        in_dev: Some(c.veth_name.clone()),
        out_dev: Some(c.guest_dev_name().to_string()),
        src: c.host_veth_ip,
        dst: c.host_ip(),
        dst_nat: Some(c.guest()),
        src_nat: None,
        sport: Port::Ephemeral,
        dport: Port::Known(ENVD_PORT),
        flags: if ct == Ct::New {
            flags::SYN
        } else {
            flags::ACK | flags::PSH
        },
        ct,
        mark: Some(0),
    }
}

pub(super) fn dnat(c: &Ctx) -> Check {
    let check = Check::new("dnat", format!("{} DNATs the host IP to the guest", c.nsl)).netns(&c.nsl);
    let guest = c.guest();
    let Some(hip) = c.host_ip() else {
        return check.problem(
            format!(
                "no DNAT rule in {} and no E2B slot name: the sandbox's host IP is unknown",
                c.nsl
            ),
            format!(
                "{}iptables -t nat -A PREROUTING -d <host IP>/32 -i {} -j DNAT --to-destination {guest}",
                c.exec_ns(),
                c.veth_name
            ),
        );
    };
    let fix = match c.f.sb.datapath {
        Some(Datapath::V2) => format!(
            "{}nft add rule inet slot-firewall preroute_nat iifname \"{}\" ip daddr {hip} dnat ip to {guest}",
            c.exec_ns(),
            c.veth_name
        ),
        _ => format!(
            "{}iptables -t nat -A PREROUTING -d {hip}/32 -i {} -j DNAT --to-destination {guest}",
            c.exec_ns(),
            c.veth_name
        ),
    };
    let pkt = syn_at_ns(c, Ct::New);
    let read = sources(c.ns);
    match firewall::nat_at_hook(&c.ns.tables, HookPoint::Prerouting, &pkt) {
        Some(h) => match h.action {
            firewall::Action::Dnat(Some(to)) if on_guest_subnet(c, to) => match v2_priority(c, &h) {
                Some(p) => check.warning(
                    format!(
                        "{hip} → {to} by `{}` ({}), at priority {p}: E2B v2 puts it at dstnat (-100), where NAT runs after conntrack and the slot firewall",
                        h.rule,
                        h.place()
                    ),
                    format!(
                        "recreate the chain at `priority dstnat`: {}nft list chain inet slot-firewall {}",
                        c.exec_ns(),
                        h.chains.first().map(String::as_str).unwrap_or("preroute_nat")
                    ),
                ),
                None => check.ok(format!("{hip} → {to} by `{}` ({})", h.rule, h.place())),
            },
            firewall::Action::Dnat(to) => check.problem(
                format!(
                    "`{}` ({}) sends {hip} to {}, not to the guest {guest} behind {}",
                    h.rule,
                    h.place(),
                    to.map_or("?".into(), |t| t.to_string()),
                    c.guest_dev_name()
                ),
                format!("remove that rule, then: {fix}"),
            ),
            _ => check.problem(
                format!(
                    "the SYN to {hip} meets `{}` ({}) before any DNAT",
                    h.rule,
                    h.place()
                ),
                fix,
            ),
        },
        None => {
            let others = other_dnats(c);
            check.problem(
                format!(
                    "no DNAT in {} matches {} arriving on {} (read: {read}): it is never sent to the guest {guest}{others}",
                    c.nsl, pkt.what, c.veth_name
                ),
                fix,
            )
        }
    }
}

/// The priority of a v2 NAT chain that is not E2B's (dstnat, -100); None when it is, or when
/// the DNAT is not v2's.
fn v2_priority(c: &Ctx, h: &firewall::Hit) -> Option<i32> {
    const DSTNAT: i32 = -100;
    let (family, table) = crate::system::firewall::nat::V2_TABLE;
    if h.source != Source::Nft || h.family != family || h.table != table {
        return None;
    }
    let chain = h.chains.first()?;
    let prio =
        c.ns.tables
            .iter()
            .find(|t| t.family == family && t.name == table)?
            .chain(chain)?
            .priority;
    (prio != DSTNAT).then_some(prio)
}

fn on_guest_subnet(c: &Ctx, ip: Ipv4Addr) -> bool {
    c.guest_dev.is_none_or(|d| {
        c.ns.snap
            .addrs_of(d.ifindex)
            .iter()
            .any(|a| prefix_contains(a.addr, a.prefix, ip))
    })
}

/// DNAT rules that exist but do not match (a slot mix-up shows here).
fn other_dnats(c: &Ctx) -> String {
    let rules: Vec<String> =
        c.ns.tables
            .iter()
            .flat_map(|t| t.chains.iter().flat_map(|ch| ch.rules.iter()))
            .filter(|r| matches!(r.action, firewall::Action::Dnat(_)))
            .map(|r| format!("`{}`", r.text))
            .collect();
    if rules.is_empty() {
        String::new()
    } else {
        format!("; DNAT rules present: {}", rules.join(", "))
    }
}

fn sources(ns: &NsFacts) -> String {
    if ns.rule_sources.is_empty() {
        "no iptables or nft found".into()
    } else {
        ns.rule_sources.join(", ")
    }
}

/// The guest's own connections leave with the slot's host IP (E2B: SNAT in POSTROUTING). Not
/// on the envd path (conntrack un-DNATs envd's replies), hence warnings only.
pub(super) fn snat(c: &Ctx) -> Check {
    let check = Check::new(
        "snat",
        format!("{} SNATs the guest's own traffic to the host IP", c.nsl),
    )
    .netns(&c.nsl);
    let (guest, hip) = (c.guest(), c.host_ip());
    let pkt = Packet {
        what: "the guest's own connection".into(),
        in_dev: Some(c.guest_dev_name().to_string()),
        out_dev: Some(c.veth_name.clone()),
        src: Some(guest),
        dst: Some(Ipv4Addr::new(1, 1, 1, 1)),
        dst_nat: None,
        src_nat: None,
        sport: Port::Ephemeral,
        dport: Port::Known(443),
        flags: flags::SYN,
        ct: Ct::New,
        mark: Some(0),
    };
    let hip_s = hip.map_or("<host IP>".into(), |i| i.to_string());
    let fix = format!(
        "{}iptables -t nat -A POSTROUTING -s {guest}/32 -o {} -j SNAT --to-source {hip_s}",
        c.exec_ns(),
        c.veth_name
    );
    match firewall::nat_at_hook(&c.ns.tables, HookPoint::Postrouting, &pkt) {
        Some(h) if matches!(h.action, firewall::Action::Snat(Some(to)) if Some(to) == hip) => {
            check.ok(format!("{guest} → {hip_s} by `{}` ({})", h.rule, h.place()))
        }
        Some(h) => check.warning(
            format!("the guest's own traffic is rewritten by `{}` ({}), not SNATed to {hip_s}; envd is unaffected", h.rule, h.place()),
            fix,
        ),
        None => check.warning(
            format!(
                "no SNAT for the guest's own connections in {} (read: {}): envd is unaffected (conntrack un-DNATs its replies), but the guest's outbound traffic leaves as {guest}",
                c.nsl,
                sources(c.ns)
            ),
            fix,
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Host,
    Sandbox,
}

/// Every hook the envd packets pass, with the packet as it looks there.
fn steps(c: &Ctx) -> Vec<(Side, HookPoint, Packet)> {
    let hv = c.f.sb.host_veth.clone();
    let mut v = Vec::new();
    for ct in [Ct::New, Ct::Established] {
        let at_ns = syn_at_ns(c, ct);
        let mut at_host = at_ns.clone();
        at_host.in_dev = None;
        at_host.out_dev = hv.clone();
        at_host.dst_nat = None;
        v.push((Side::Host, HookPoint::Output, at_host.clone()));
        v.push((Side::Host, HookPoint::Postrouting, at_host));
        v.push((Side::Sandbox, HookPoint::Ingress, at_ns.clone()));
        v.push((Side::Sandbox, HookPoint::Prerouting, at_ns.clone()));
        let mut fwd = at_ns;
        fwd.dst = fwd.dst_nat.take();
        v.push((Side::Sandbox, HookPoint::Forward, fwd.clone()));
        v.push((Side::Sandbox, HookPoint::Postrouting, fwd));
    }
    let reply = Packet {
        what: "the SYN-ACK from the guest".into(),
        in_dev: Some(c.guest_dev_name().to_string()),
        out_dev: Some(c.veth_name.clone()),
        src: Some(c.guest()),
        dst: c.host_veth_ip,
        dst_nat: None,
        src_nat: c.host_ip(),
        sport: Port::Known(ENVD_PORT),
        dport: Port::Ephemeral,
        flags: flags::SYN | flags::ACK,
        ct: Ct::Established,
        mark: Some(0),
    };
    v.push((Side::Sandbox, HookPoint::Ingress, reply.clone()));
    v.push((Side::Sandbox, HookPoint::Prerouting, reply.clone()));
    v.push((Side::Sandbox, HookPoint::Forward, reply.clone()));
    v.push((Side::Sandbox, HookPoint::Postrouting, reply.clone()));
    let mut at_host = reply;
    at_host.src = at_host.src_nat.take();
    at_host.in_dev = hv;
    at_host.out_dev = None;
    v.push((Side::Host, HookPoint::Ingress, at_host.clone()));
    v.push((Side::Host, HookPoint::Prerouting, at_host.clone()));
    v.push((Side::Host, HookPoint::Input, at_host));
    v
}

/// One drop found on the path.
struct Found {
    side: Side,
    hook: HookPoint,
    what: String,
    certain: bool,
    hit: firewall::Hit,
}

fn drops_on_path(c: &Ctx) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    for (side, hook, pkt) in steps(c) {
        let tables = match side {
            Side::Sandbox => &c.ns.tables,
            Side::Host => match c.host {
                Some(h) => &h.tables,
                None => continue,
            },
        };
        for o in firewall::at_hook(tables, hook, &pkt) {
            let (certain, hit) = match o {
                Outcome::Drops(h) => (true, h),
                Outcome::MayDrop(h) => (false, h),
                Outcome::Passes => continue,
            };
            // The same rule dropping the SYN and the later request: report it once.
            if !out.iter().any(|f| f.hit == hit && f.side == side) {
                out.push(Found {
                    side,
                    hook,
                    what: pkt.what.clone(),
                    certain,
                    hit,
                });
            }
        }
    }
    out
}

fn is_forward_policy(f: &Found) -> bool {
    f.side == Side::Sandbox
        && f.hit.policy
        && matches!(f.hit.source, Source::Iptables(_))
        && f.hit.table == "filter"
        && f.hit.chains.first().is_some_and(|ch| ch == "FORWARD")
}

pub(super) fn firewall_checks(c: &Ctx) -> Vec<Check> {
    let found = drops_on_path(c);
    let pick = |pred: &dyn Fn(&Found) -> bool| found.iter().filter(|f| pred(f)).collect::<Vec<_>>();
    let mut v = vec![
        forward_policy(c, &pick(&is_forward_policy)),
        fw_check(
            c,
            Check::new(
                "ns_iptables",
                format!("no iptables rule in {} drops envd traffic", c.nsl),
            )
            .netns(&c.nsl),
            &pick(&|f| {
                f.side == Side::Sandbox
                    && matches!(f.hit.source, Source::Iptables(_))
                    && !is_forward_policy(f)
            }),
            c.ns,
            Side::Sandbox,
            "iptables",
        ),
        fw_check(
            c,
            Check::new(
                "ns_nft",
                format!("no nftables chain in {} drops envd traffic", c.nsl),
            )
            .netns(&c.nsl),
            &pick(&|f| f.side == Side::Sandbox && f.hit.source == Source::Nft),
            c.ns,
            Side::Sandbox,
            "nft -j",
        ),
    ];
    if let (Some(hf), Some(h)) = (c.host, &c.f.host) {
        v.push(fw_check(
            c,
            Check::new(
                "host_firewall",
                format!("the firewall of {} lets envd traffic through", c.hostl),
            )
            .netns(h.ns.label()),
            &pick(&|f| f.side == Side::Host),
            hf,
            Side::Host,
            "",
        ));
    }
    v
}

fn forward_policy(c: &Ctx, found: &[&Found]) -> Check {
    let check = Check::new(
        "forward_policy",
        format!("the FORWARD policy in {} lets envd traffic through", c.nsl),
    )
    .netns(&c.nsl);
    let policies: Vec<String> =
        c.ns.tables
            .iter()
            .filter(|t| matches!(t.source, Source::Iptables(_)) && t.name == "filter")
            .filter_map(|t| {
                let ch = t.chains.iter().find(|ch| ch.name == "FORWARD")?;
                Some(format!(
                    "{} filter FORWARD policy {}",
                    t.source.label(),
                    if ch.policy_drop { "DROP" } else { "ACCEPT" }
                ))
            })
            .collect();
    let read = if policies.is_empty() {
        "no iptables FORWARD chain".to_string()
    } else {
        policies.join(", ")
    };
    if found.is_empty() {
        let accepted = if read.contains("DROP") {
            ", but rules accept envd traffic before it applies"
        } else {
            ""
        };
        return check.ok(format!("{read}{accepted}"));
    }
    fw_check(c, check, found, c.ns, Side::Sandbox, "iptables")
}

/// Problem for a certain drop, warning for a possible one, else what was read (the sources
/// whose name contains `tool`).
fn fw_check(c: &Ctx, check: Check, found: &[&Found], ns: &NsFacts, side: Side, tool: &str) -> Check {
    let wherel = match side {
        Side::Sandbox => c.nsl.clone(),
        Side::Host => c.hostl.clone(),
    };
    let exec = match side {
        Side::Sandbox => c.exec_ns(),
        Side::Host => c.exec_host(),
    };
    let sentences: Vec<String> = found.iter().map(|f| drop_sentence(f, &wherel)).collect();
    let fix = found
        .iter()
        .map(|f| drop_fix(f, &exec))
        .collect::<Vec<_>>()
        .join("; ");
    let mut evidence = sentences.join("; ");
    if !ns.rule_errors.is_empty() {
        evidence += &format!(" (could not read: {})", ns.rule_errors.join("; "));
    }
    if found.iter().any(|f| f.certain) {
        check.problem(evidence, fix)
    } else if !found.is_empty() {
        check.warning(evidence, format!("check whether it matches envd traffic: {fix}"))
    } else if !ns.rule_errors.is_empty() {
        check.warning(
            format!(
                "could not read every ruleset of {wherel}: {}",
                ns.rule_errors.join("; ")
            ),
            "run the tracer where iptables-save and nft work",
        )
    } else {
        let read: Vec<&str> = ns
            .rule_sources
            .iter()
            .filter(|s| s.contains(tool))
            .map(String::as_str)
            .collect();
        let read = if read.is_empty() {
            format!("no {tool} output")
        } else {
            read.join(", ")
        };
        check.ok(format!(
            "read {read} in {wherel}: nothing on the path drops envd's SYN, request or SYN-ACK"
        ))
    }
}

fn drop_sentence(f: &Found, wherel: &str) -> String {
    let verb = if f.certain { "is dropped" } else { "may be dropped" };
    let hook = match f.hook {
        HookPoint::Ingress => "ingress".to_string(),
        h => h.ipt_chain().unwrap_or("?").to_string(),
    };
    let by = if f.hit.policy {
        format!("by the DROP policy of {}", f.hit.place())
    } else {
        format!("by `{}` ({})", f.hit.rule, f.hit.place())
    };
    let maybe = if f.certain {
        ""
    } else {
        " (a match the doctor cannot evaluate decides)"
    };
    format!("{} {verb} at {hook} in {wherel} {by}{maybe}", f.what)
}

fn drop_fix(f: &Found, exec: &str) -> String {
    let h = &f.hit;
    let chain = h.chains.last().cloned().unwrap_or_default();
    match (h.source, h.policy) {
        (Source::Iptables(b), true) => format!(
            "{exec}{} -t {} -P {chain} ACCEPT (or accept envd traffic before the policy applies)",
            Source::Iptables(b).label(),
            h.table
        ),
        (Source::Iptables(b), false) => match h.rule.strip_prefix("-A ") {
            Some(rest) => format!("{exec}{} -t {} -D {rest}", Source::Iptables(b).label(), h.table),
            None => format!("remove `{}`", h.rule),
        },
        (Source::Nft, true) => format!(
            "{exec}nft chain {} {} {chain} '{{ policy accept; }}'",
            h.family, h.table
        ),
        (Source::Nft, false) => format!(
            "{exec}nft delete rule {} {} {chain} handle {}",
            h.family,
            h.table,
            h.handle.map_or("?".into(), |n| n.to_string())
        ),
    }
}

pub(super) fn conntrack(c: &Ctx) -> Check {
    let check = Check::new("conntrack", "the conntrack tables have room").netns(&c.nsl);
    let mut parts = Vec::new();
    let mut full = Vec::new();
    let mut near = false;
    let sides = [(c.nsl.clone(), Some(c.ns)), (c.hostl.clone(), c.host)];
    for (label, ns) in sides {
        let Some(ns) = ns else { continue };
        match ns.conntrack() {
            Some((n, max)) => {
                parts.push(format!("{label}: {n} of {max} entries"));
                if max > 0 && n >= max {
                    full.push(label);
                } else if max > 0 && n * 10 >= max * 9 {
                    near = true;
                }
            }
            None => parts.push(format!("{label}: nf_conntrack not loaded")),
        }
    }
    let text = parts.join("; ");
    let fix =
        "find what fills it (conntrack -L | head; conntrack -C), or raise net.netfilter.nf_conntrack_max";
    if !full.is_empty() {
        check.problem(
            format!(
                "{text}: the table of {} is full, new connections (the SYN) are dropped",
                full.join(" and ")
            ),
            fix,
        )
    } else if near {
        check.warning(format!("{text}: above 90% full"), fix)
    } else {
        check.ok(text)
    }
}
