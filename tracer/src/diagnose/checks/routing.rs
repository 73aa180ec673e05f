//! Routes (the guest's, the host IP's, the namespace's default and return routes), forwarding,
//! rp_filter sysctls, and the v2 host firewall's sets that forward the slot.
use std::net::Ipv4Addr;

use super::{Ctx, route_text};
use crate::{
    diagnose::Check,
    system::netstate::{self, Route, Snapshot},
};

pub(super) fn guest_route(c: &Ctx) -> Check {
    let (guest, dev) = (c.guest(), c.guest_dev_name().to_string());
    let check = Check::new(
        "guest_route",
        format!("{} routes the guest {guest} to {dev}", c.nsl),
    )
    .netns(&c.nsl)
    .device(Some(&dev));
    let snap = &c.ns.snap;
    let to_dev =
        |r: &Route| r.kind == "unicast" && r.oif.is_some() && r.oif == c.guest_dev.map(|l| l.ifindex);
    match snap.route_to(guest) {
        Some(r) if to_dev(r) => check.ok(format!("{guest}: {}", route_text(r, snap))),
        other => {
            let found = other.map_or_else(|| "no route at all".to_string(), |r| route_text(r, snap));
            let why = match c.tap {
                Some(t) if !t.up => format!(" ({} is down, so its connected route is gone)", c.tap_name),
                None => format!(" ({} does not exist)", c.tap_name),
                _ => String::new(),
            };
            let fate = match other {
                Some(r) if r.kind != "unicast" => "the SYN is discarded",
                None => "the SYN is dropped",
                Some(_) => "the SYN goes back where it came from",
            };
            check.problem(
                format!("{} routes {guest} by {found}, not to {dev}{why}: {fate}", c.nsl),
                match (c.tap, c.guest_dev) {
                    (Some(t), _) if !t.up => format!("{} link set {} up", c.ip_ns(), c.tap_name),
                    (_, Some(_)) => format!("remove the route that takes {guest} elsewhere, or add: {} route replace {guest}/32 dev {dev}", c.ip_ns()),
                    _ => "restore the tap (see above)".into(),
                },
            )
        }
    }
}

/// The orchestrator's SYN leaves the host by the route to the slot's host IP: it must go out
/// this sandbox's veth (a route to another slot's veth delivers it to another sandbox).
pub(super) fn host_route(c: &Ctx) -> Option<Check> {
    let hf = c.host?;
    let veth = c.f.sb.host_veth.clone()?;
    let check = Check::new(
        "host_route",
        format!("{} routes the host IP through {veth}", c.hostl),
    )
    .netns(c.f.host.as_ref()?.ns.label())
    .device(Some(&veth));
    let Some(hip) = c.host_ip() else {
        return Some(check.problem(
            format!(
                "the sandbox's host IP is unknown: no DNAT rule in {} and no E2B slot name",
                c.nsl
            ),
            "restore the DNAT rule (see dnat)",
        ));
    };
    let via = c.ns_veth_ip.map_or_else(String::new, |ip| format!(" via {ip}"));
    let fix = format!("{} route replace {hip}/32{via} dev {veth}", c.ip_host());
    let snap = &hf.snap;
    // A policy rule decides before any route.
    if let Some(netstate::Blocker::Rule(r)) = netstate::route_blocker(&snap.rules, &snap.routes, hip, None) {
        return Some(check.problem(
            format!("{} refuses to route {hip}: policy rule {}", c.hostl, r.text()),
            format!("{} rule del pref {}", c.ip_host(), r.priority),
        ));
    }
    let r = match snap.route_to(hip) {
        None => {
            return Some(check.problem(
                format!(
                    "{} has no route to {hip}: the orchestrator's SYN has nowhere to go",
                    c.hostl
                ),
                fix,
            ));
        }
        Some(r) => r,
    };
    let text = route_text(r, snap);
    let out = r.oif.and_then(|i| snap.link_by_index(i)).map(|l| l.name.clone());
    let problem = if r.prefix == 0 {
        Some(format!(
            "only the default route ({text}) covers {hip} in {}: the SYN leaves towards the uplink instead of the sandbox",
            c.hostl
        ))
    } else if r.kind != "unicast" {
        Some(format!("{} has a {} route for {hip} ({text})", c.hostl, r.kind))
    } else if out.as_deref() != Some(veth.as_str()) {
        let other = out.clone().unwrap_or_else(|| "?".into());
        let slot = other
            .strip_prefix("veth-")
            .map_or(String::new(), |n| format!(" (slot {n}, namespace ns-{n})"));
        Some(format!(
            "{} routes {hip} by {text}: out {other}{slot}, not this sandbox's {veth}; the SYNs go to another sandbox (slot mix-up)",
            c.hostl
        ))
    } else if let (Some(g), Some(peer)) = (r.gateway, c.ns_veth_ip)
        && g != peer
    {
        Some(format!(
            "{} routes {hip} by {text}: gateway {g} is not {}'s {peer}",
            c.hostl, c.veth_name
        ))
    } else {
        None
    };
    Some(match problem {
        Some(p) => check.problem(p, fix),
        None => check.ok(format!("{hip}: {text}")),
    })
}

pub(super) fn ns_default_route(c: &Ctx) -> Check {
    let check = Check::new(
        "ns_default_route",
        format!("{} has a default route out {}", c.nsl, c.veth_name),
    )
    .netns(&c.nsl);
    let snap = &c.ns.snap;
    let default = snap
        .routes
        .iter()
        .filter(|r| r.table == crate::system::netstate::RT_TABLE_MAIN && r.prefix == 0)
        .min_by_key(|r| r.metric);
    let via = c.host_veth_ip.map_or_else(String::new, |ip| format!(" via {ip}"));
    let fix = format!("{} route replace default{via} dev {}", c.ip_ns(), c.veth_name);
    let through_veth = |r: &Route| r.oif.is_some() && r.oif == c.ns_veth.map(|l| l.ifindex);
    match default {
        Some(r) if through_veth(r) && r.kind == "unicast" => check.ok(route_text(r, snap)),
        Some(r) => check.warning(
            format!(
                "{}'s default route is {}, not out {}: envd replies are unaffected (they use the connected route), but the guest's own traffic does not reach the host",
                c.nsl,
                route_text(r, snap),
                c.veth_name
            ),
            fix,
        ),
        None => check.warning(
            format!(
                "{} has no default route: envd replies are unaffected (they use the connected route of {}), but the guest's own traffic has no way out",
                c.nsl, c.veth_name
            ),
            fix,
        ),
    }
}

/// Replies go back to the host side's veth address (the SYN's source: the orchestrator's
/// route has no preferred source), so that address must route out the namespace's veth.
pub(super) fn ns_return_route(c: &Ctx) -> Option<Check> {
    let src = c.host_veth_ip?;
    let check = Check::new(
        "ns_return_route",
        format!("{} routes replies to {src} out {}", c.nsl, c.veth_name),
    )
    .netns(&c.nsl)
    .device(Some(&c.veth_name));
    let snap = &c.ns.snap;
    let want = c.ns_veth.map(|l| l.ifindex);
    Some(match snap.route_to(src) {
        Some(r) if r.oif.is_some() && r.oif == want && r.kind == "unicast" => {
            check.ok(format!("{src}: {}", route_text(r, snap)))
        }
        other => {
            let found = other.map_or_else(|| "no route at all".into(), |r| route_text(r, snap));
            let fix = match other {
                Some(r) if r.prefix > 0 => format!("{} route del {}", c.ip_ns(), route_text(r, snap)),
                _ => format!("{} route replace {src}/32 dev {}", c.ip_ns(), c.veth_name),
            };
            check.problem(
                format!(
                    "{} routes {src} (the host side's address: the SYNs come from it and the replies go to it) by {found}, not out {}: replies go the wrong way, and strict rp_filter drops the SYNs",
                    c.nsl, c.veth_name
                ),
                fix,
            )
        }
    })
}

pub(super) fn ip_forward(c: &Ctx) -> Check {
    let check = Check::new("ip_forward", format!("IPv4 forwarding is on in {}", c.nsl)).netns(&c.nsl);
    let keys = [
        "net.ipv4.ip_forward".to_string(),
        format!("net.ipv4.conf.{}.forwarding", c.veth_name),
        format!("net.ipv4.conf.{}.forwarding", c.guest_dev_name()),
    ];
    let read: Vec<(&str, Option<&str>)> = keys.iter().map(|k| (k.as_str(), c.ns.sysctl(k))).collect();
    let text = read
        .iter()
        .filter_map(|(k, v)| Some(format!("{k} = {}", (*v)?)))
        .collect::<Vec<_>>()
        .join(", ");
    let off: Vec<&str> = read
        .iter()
        .filter(|(_, v)| *v == Some("0"))
        .map(|(k, _)| *k)
        .collect();
    if read[0].1.is_none() {
        return check.warning(
            format!("cannot read net.ipv4.ip_forward in {}", c.nsl),
            "check /proc/sys/net/ipv4/ip_forward inside the namespace",
        );
    }
    if off.is_empty() {
        check.ok(format!("{text} in {}", c.nsl))
    } else {
        check.problem(
            format!(
                "{text} in {}: the namespace does not forward the SYN from {} to {}",
                c.nsl,
                c.veth_name,
                c.guest_dev_name()
            ),
            format!("{}sysctl -w net.ipv4.ip_forward=1", c.exec_ns()),
        )
    }
}

/// rp_filter of one interface where envd packets come in: the mode, and the route back to the
/// packet's source that the kernel checks.
struct RpPoint<'a> {
    where_: String,
    dev: &'a str,
    all: Option<&'a str>,
    own: Option<&'a str>,
    src: Ipv4Addr,
    snap: &'a Snapshot,
    ifindex: Option<u32>,
    exec: String,
}

impl RpPoint<'_> {
    fn mode(&self) -> u8 {
        let n = |v: Option<&str>| v.and_then(|s| s.parse::<u8>().ok()).unwrap_or(0);
        n(self.all).max(n(self.own))
    }

    /// (evidence, problem?) for this interface.
    fn judge(&self) -> (String, bool) {
        let mode = self.mode();
        let name = match mode {
            0 => "0 (off)",
            1 => "1 (strict)",
            _ => "2 (loose)",
        };
        let back = self.snap.route_to(self.src);
        let back_text = back.map_or_else(|| "no route".into(), |r| route_text(r, self.snap));
        let head = format!("{} {}: rp_filter {name}", self.where_, self.dev);
        match mode {
            0 => (head, false),
            1 if back.and_then(|r| r.oif) != self.ifindex || back.is_none() => (
                format!(
                    "{head}, but {} (the source of packets arriving there) routes by {back_text}, not out {}: asymmetric, so they are dropped",
                    self.src, self.dev
                ),
                true,
            ),
            _ if back.is_none_or(|r| r.kind != "unicast") => (
                format!(
                    "{head}, and there is no usable route back to {} ({back_text}): they are dropped",
                    self.src
                ),
                true,
            ),
            _ => (format!("{head}, {} routes back by {back_text}", self.src), false),
        }
    }
}

pub(super) fn rp_filter(c: &Ctx) -> Check {
    let check = Check::new(
        "rp_filter",
        "reverse-path filtering lets envd packets in on every interface of the path",
    )
    .netns(&c.nsl);
    let all = c.ns.sysctl("net.ipv4.conf.all.rp_filter");
    let key = |d: &str| format!("net.ipv4.conf.{d}.rp_filter");
    let mut points = Vec::new();
    if let Some(src) = c.host_veth_ip {
        points.push(RpPoint {
            where_: c.nsl.clone(),
            dev: &c.veth_name,
            all,
            own: c.ns.sysctl(&key(&c.veth_name)),
            src,
            snap: &c.ns.snap,
            ifindex: c.ns_veth.map(|l| l.ifindex),
            exec: c.exec_ns(),
        });
    }
    if let Some(g) = c.guest_dev {
        points.push(RpPoint {
            where_: c.nsl.clone(),
            dev: &g.name,
            all,
            own: c.ns.sysctl(&key(&g.name)),
            src: c.guest(),
            snap: &c.ns.snap,
            ifindex: Some(g.ifindex),
            exec: c.exec_ns(),
        });
    }
    if let (Some(hf), Some(v), Some(hip)) = (c.host, c.host_veth, c.host_ip()) {
        points.push(RpPoint {
            where_: c.hostl.clone(),
            dev: &v.name,
            all: hf.sysctl("net.ipv4.conf.all.rp_filter"),
            own: c.f.host_veth_sysctl.get(&key(&v.name)).map(String::as_str),
            src: hip,
            snap: &hf.snap,
            ifindex: Some(v.ifindex),
            exec: c.exec_host(),
        });
    }
    let judged: Vec<(String, bool, &RpPoint)> = points
        .iter()
        .map(|p| {
            let (e, bad) = p.judge();
            (e, bad, p)
        })
        .collect();
    let evidence = judged
        .iter()
        .map(|(e, _, _)| e.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    match judged.iter().find(|(_, bad, _)| *bad) {
        None => check.ok(evidence),
        Some((_, _, p)) => check.problem(
            evidence,
            format!(
                "make the path symmetric (see the routes), or relax it: {}sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{}.rp_filter=2",
                p.exec, p.dev
            ),
        ),
    }
}

/// E2B v2: the host firewall knows the slot. `inet v2-host-firewall` forwards (policy drop)
/// and redirects the traffic of veths in `v2_veths`, and masquerades host IPs in
/// `v2_host_cidrs`; a slot missing from either loses its guest's egress (envd is local
/// traffic of the host and unaffected).
pub(super) fn v2_host_sets(c: &Ctx) -> Option<Check> {
    if c.f.sb.datapath != Some(crate::system::firewall::nat::Datapath::V2) {
        return None;
    }
    let host = c.host?;
    const TABLE: &str = "v2-host-firewall";
    let check = Check::new(
        "v2_host_sets",
        format!("{} knows this v2 slot in inet {TABLE}", c.hostl),
    )
    .netns(host_label(c))
    .device(c.host_veth.map(|l| l.name.as_str()));
    let nft = format!("{}nft", c.exec_host());
    let set = |name: &str| {
        host.nft_sets
            .iter()
            .find(|s| s.family == "inet" && s.table == TABLE && s.name == name)
    };
    let (Some(veths), Some(cidrs)) = (set("v2_veths"), set("v2_host_cidrs")) else {
        return Some(check.problem(
            format!(
                "{} uses datapath v2, but {} has no inet {TABLE} with sets v2_veths and v2_host_cidrs: its guest's traffic is neither forwarded nor masqueraded",
                c.nsl, c.hostl
            ),
            "the orchestrator creates the table at start (a restart recreates it); see `nft list ruleset`",
        ));
    };
    let veth = c
        .host_veth
        .map(|l| l.name.clone())
        .or_else(|| c.f.sb.host_veth.clone());
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    if let Some(v) = &veth
        && !veths.contains(v)
    {
        missing.push(format!(
            "{v} is not in set v2_veths: the guest's traffic to the internet is dropped (forward policy drop) and not sent to the egress proxy"
        ));
        fixes.push(format!("{nft} add element inet {TABLE} v2_veths {{ \"{v}\" }}"));
    }
    if let Some(hip) = c.host_ip()
        && !cidrs.contains(&hip.to_string())
    {
        missing.push(format!(
            "{hip} is not in set v2_host_cidrs: the guest's traffic leaves without masquerade"
        ));
        fixes.push(format!(
            "{nft} add element inet {TABLE} v2_host_cidrs {{ {hip}/32 }}"
        ));
    }
    Some(if missing.is_empty() {
        check.ok(format!(
            "{} in v2_veths, {} in v2_host_cidrs",
            veth.as_deref().unwrap_or("?"),
            c.host_ip().map_or("?".into(), |i| i.to_string())
        ))
    } else {
        check.problem(
            format!("{}; envd is unaffected", missing.join("; ")),
            fixes.join("; "),
        )
    })
}

fn host_label(c: &Ctx) -> String {
    c.f.host.as_ref().map(|h| h.ns.label()).unwrap_or_default()
}
