//! The path's devices: the two ends of the veth pair (up, carrier, addresses, paired), the
//! guest's neighbour entry, the MTUs along the path and the queue disciplines on it.
use std::net::Ipv4Addr;

use super::{Ctx, addrs_text, ns_words};
use crate::{diagnose::Check, system::netstate::prefix_contains};

pub(super) fn ns_veth(c: &Ctx) -> Check {
    let (v, nsl) = (&c.veth_name, &c.nsl);
    let check = Check::new("ns_veth", format!("{v} in {nsl} is up and addressed"))
        .netns(nsl)
        .device(Some(v));
    let Some(l) = c.ns_veth else {
        return check.problem(
            format!("there is no {v} in {nsl}: no veth leads out of the namespace"),
            "the slot's veth pair is missing: restart the sandbox",
        );
    };
    let addrs = c.ns.snap.addrs_of(l.ifindex);
    let peer = match (&c.f.sb.host_veth, &c.f.host) {
        (Some(p), Some(_)) => format!(", peer {p} in {}", c.hostl),
        _ => String::new(),
    };
    let state = format!(
        "{v} in {nsl}: {}, {}, {}{peer}",
        if l.up { "UP" } else { "DOWN" },
        if l.carrier { "carrier on" } else { "no carrier" },
        addrs_text(&c.ns.snap, l)
    );
    if !l.up {
        return check.problem(state, format!("{} link set {v} up", c.ip_ns()));
    }
    if !l.carrier {
        return check.problem(
            format!("{state}: its peer on the host side is down or gone"),
            format!(
                "bring the peer up: {} link set {} up",
                c.ip_host(),
                c.f.sb.host_veth.as_deref().unwrap_or("veth-N")
            ),
        );
    }
    if addrs.is_empty() {
        return check.problem(state, format!("{} addr add 10.12.0.(2N+1)/31 dev {v}", c.ip_ns()));
    }
    check.ok(state)
}

pub(super) fn host_veth(c: &Ctx) -> Check {
    let name = c.f.sb.host_veth.clone().unwrap_or_else(|| "veth-N".into());
    let check = Check::new(
        "host_veth",
        format!("{name} (the host end) is up and paired with {}", c.veth_name),
    )
    .device(Some(&name));
    let (Some(h), Some(hf)) = (&c.f.host, c.host) else {
        let why = match &c.f.host {
            Some(h) => format!(
                "cannot read {}: {}",
                ns_words(&h.ns, c.f.own_inode),
                h.facts.as_ref().err().cloned().unwrap_or_default()
            ),
            None => format!(
                "the peer of {} in {} is in no namespace the tracer can see (neither its own nor a named one)",
                c.veth_name, c.nsl
            ),
        };
        return check.problem(why, "the slot's veth pair is broken: restart the sandbox");
    };
    let check = check.netns(h.ns.label());
    let Some(l) = c.host_veth else {
        return check.problem(
            format!(
                "{} has no {name}, the peer of {} in {}",
                c.hostl, c.veth_name, c.nsl
            ),
            "the slot's veth pair is broken: restart the sandbox",
        );
    };
    let state = format!(
        "{name} in {}: {}, {}",
        c.hostl,
        if l.up { "UP" } else { "DOWN" },
        addrs_text(&hf.snap, l)
    );
    if !l.up {
        return check.problem(state, format!("{} link set {name} up", c.ip_host()));
    }
    // A veth has carrier exactly while its peer is up.
    if !l.carrier {
        return check.problem(
            format!(
                "{state}: no carrier: its peer {} in {} is down or gone",
                c.veth_name, c.nsl
            ),
            format!("bring the peer up: {} link set {} up", c.ip_ns(), c.veth_name),
        );
    }
    let addrs = hf.snap.addrs_of(l.ifindex);
    let paired = |peer: Ipv4Addr| addrs.iter().any(|a| prefix_contains(a.addr, a.prefix, peer));
    match c.ns_veth_ip {
        Some(peer) if !paired(peer) => check.problem(
            format!("{state}: no address on the subnet of {}'s {peer}", c.veth_name),
            format!("{} addr add 10.12.0.(2N)/31 dev {name}", c.ip_host()),
        ),
        Some(peer) => check.ok(format!("{state} (pairs with {}'s {peer})", c.veth_name)),
        None if addrs.is_empty() => check.problem(
            state,
            format!("{} addr add 10.12.0.(2N)/31 dev {name}", c.ip_host()),
        ),
        None => check.ok(state),
    }
}

pub(super) fn guest_neighbour(c: &Ctx) -> Option<Check> {
    let dev = c.guest_dev?;
    let guest = c.guest();
    let check = Check::new(
        "guest_neighbour",
        format!("the neighbour entry of the guest {guest} on {}", dev.name),
    )
    .netns(&c.nsl)
    .device(Some(&dev.name));
    let entry =
        c.ns.snap
            .neighbours
            .iter()
            .find(|n| n.addr == guest && n.ifindex == dev.ifindex);
    Some(match entry {
        None => check.ok(format!("no entry for {guest} on {} in {} yet: it is resolved by the first packet", dev.name, c.nsl)),
        Some(n) if matches!(n.state.as_str(), "FAILED" | "INCOMPLETE") => check.problem(
            format!(
                "ARP for {guest} on {} in {} is {}: the guest does not answer (nobody reads {}, or the guest is down or has another address)",
                dev.name, c.nsl, n.state, c.tap_name
            ),
            format!("check that the VMM reads {} (tap_reader) and that the guest's eth0 has {guest}", c.tap_name),
        ),
        Some(n) => check.ok(format!(
            "{guest} lladdr {} {} on {} in {}",
            n.mac.as_deref().unwrap_or("?"),
            n.state,
            dev.name,
            c.nsl
        )),
    })
}

pub(super) fn mtu(c: &Ctx) -> Check {
    let check = Check::new("mtu", "MTUs agree along the path");
    let mut devs: Vec<(String, u32)> = Vec::new();
    if let Some(l) = c.host_veth {
        devs.push((format!("{} {}", c.hostl, l.name), l.mtu));
    }
    for l in [
        c.ns_veth,
        c.guest_dev,
        c.tap
            .filter(|t| Some(t.ifindex) != c.guest_dev.map(|g| g.ifindex)),
    ]
    .into_iter()
    .flatten()
    {
        devs.push((format!("{} {}", c.nsl, l.name), l.mtu));
    }
    let text = devs
        .iter()
        .map(|(n, m)| format!("{n} {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (hv, nv, gd) = (
        c.host_veth.map(|l| l.mtu),
        c.ns_veth.map(|l| l.mtu),
        c.guest_dev.map(|l| l.mtu),
    );
    match (hv, nv, gd) {
        (Some(a), Some(b), _) if a != b => check.problem(
            format!("{text}: the two ends of the veth pair differ, so frames larger than {} are dropped", a.min(b)),
            format!("{} link set {} mtu {}", c.ip_ns(), c.veth_name, a.max(b)),
        ),
        (_, Some(b), Some(g)) if g < b => check.warning(
            format!("{text}: the guest side is smaller than {}, so large packets to the guest need fragmentation or PMTU discovery", c.veth_name),
            format!("{} link set {} mtu {b}", c.ip_ns(), c.guest_dev_name()),
        ),
        _ => check.ok(text),
    }
}

/// The queue disciplines of the path's devices: one that drops (a limit of 0, a policer, a
/// full queue) or holds packets loses the SYN before it leaves the device.
pub(super) fn qdisc(c: &Ctx) -> Check {
    let check = Check::new("qdisc", "the path's queue disciplines drop nothing");
    // (namespace inode, its label, `exec` prefix for a command there, device)
    let mut devs: Vec<(u32, &str, String, &crate::system::netstate::Link)> = Vec::new();
    if let (Some(h), Some(l)) = (c.f.sb.host_ns.as_ref(), c.host_veth) {
        devs.push((h.inode, c.hostl.as_str(), c.exec_host(), l));
    }
    let ns = c.f.sb.netns.inode;
    for l in [c.ns_veth, c.guest_dev, c.tap].into_iter().flatten() {
        if !devs.iter().any(|(i, _, _, d)| *i == ns && d.ifindex == l.ifindex) {
            devs.push((ns, c.nsl.as_str(), c.exec_ns(), l));
        }
    }
    let mut seen = Vec::new();
    let mut bad = Vec::new();
    for (inode, nsl, exec, l) in devs {
        let Some((_, q)) =
            c.f.qdiscs
                .iter()
                .find(|(i, q)| *i == inode && q.ifindex == l.ifindex)
        else {
            continue;
        };
        let text = format!(
            "{} in {nsl}: {} (dropped {}, queued {})",
            l.name, q.kind, q.drops, q.qlen
        );
        if q.drops > 0 {
            bad.push((text.clone(), format!("{exec}tc qdisc del dev {} root", l.name)));
        }
        seen.push(text);
    }
    match bad.first() {
        Some((_, fix)) => check.problem(
            format!(
                "{}: a queue discipline on the path drops packets",
                bad.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join("; ")
            ),
            format!("{fix} (or fix its limits)"),
        ),
        None if seen.is_empty() => check.ok("no queue discipline on the path's devices"),
        None => check.ok(seen.join("; ")),
    }
}
