//! The expensive part of discovery, for the sandboxes asked for: the namespace's devices and
//! addresses over netlink, its firewall's DNAT, and the host side.
use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::{
    Sandbox,
    host::{HostCache, Shared, set_host_side},
    ids::e2b_host_ip,
    vmm::{Vmm, held_taps},
};
use crate::{
    system::firewall::Rulesets,
    system::netns::Netns,
    system::netstate::{Addr, Link, Rtnl},
};

pub(super) fn resolve_vmm(vmm: &Vmm, shared: &Shared, cache: &mut HostCache) -> Result<Sandbox> {
    let netns = shared.netns_of_pid(vmm.pid)?;
    resolve_in(Some(vmm), netns, shared, cache)
}

pub(super) fn resolve_in(
    vmm: Option<&Vmm>,
    netns: Netns,
    shared: &Shared,
    cache: &mut HostCache,
) -> Result<Sandbox> {
    let mut sb = Sandbox::new(vmm, netns);
    let held = vmm.map(|v| held_taps(v.pid)).unwrap_or_default();
    let mut rtnl = Rtnl::open(&sb.netns)?;
    let links = rtnl
        .links()
        .with_context(|| format!("links of {}", sb.netns.label()))?;
    let addrs = rtnl
        .addrs()
        .with_context(|| format!("addresses of {}", sb.netns.label()))?;
    set_tap(&mut sb, &held, &links);
    set_ns_veth(&mut sb, &links, &addrs);
    set_devices(&mut sb, &links);
    sb.devices.guest_mac =
        vmm.and_then(|v| super::vmm::guest_mac(v.pid, v.api_sock.as_deref(), sb.tap.as_deref()));
    set_nat(&mut sb);
    match sb
        .ns_veth
        .as_deref()
        .and_then(|n| links.iter().find(|l| l.name == n))
    {
        Some(veth) => set_host_side(&mut sb, veth, &mut rtnl, shared, cache)?,
        None => sb.host_side_problem = Some(no_veth_problem(&sb, &links)),
    }
    check_slot(&mut sb);
    Ok(sb)
}

/// The tap the VMM holds; without one, the namespace's only tun device (E2B: tap0), held if
/// it has carrier (a tap has carrier exactly while some process has it open).
fn set_tap(sb: &mut Sandbox, held: &[String], links: &[Link]) {
    if let Some(first) = held.first() {
        if held.len() > 1 {
            sb.warnings.push(format!(
                "the VMM holds several taps ({}); following {first}",
                held.join(", ")
            ));
        }
        if !links.iter().any(|l| &l.name == first) {
            sb.warnings.push(format!(
                "the VMM holds tap {first}, but {} has no such device",
                sb.netns.label()
            ));
        }
        sb.tap = Some(first.clone());
        sb.tap_held = true;
    } else {
        let tuns: Vec<&Link> = links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("tun"))
            .collect();
        let tap = match tuns.as_slice() {
            [one] => Some(*one),
            many => many.iter().find(|l| l.name == "tap0").copied(),
        };
        if tap.is_none() && tuns.len() > 1 {
            let names: Vec<&str> = tuns.iter().map(|l| l.name.as_str()).collect();
            sb.warnings.push(format!(
                "several taps in {} and no VMM holds one: {}",
                sb.netns.label(),
                names.join(", ")
            ));
        }
        sb.tap = tap.map(|l| l.name.clone());
        sb.tap_held = tap.is_some_and(|l| l.carrier);
    }
    let tap_link = sb.tap.as_deref().and_then(|t| links.iter().find(|l| l.name == t));
    sb.bridge = tap_link
        .and_then(|l| l.master)
        .and_then(|m| links.iter().find(|l| l.ifindex == m))
        .map(|l| l.name.clone());
}

/// The veth whose peer is in another namespace (eth0 preferred when there are several).
fn set_ns_veth(sb: &mut Sandbox, links: &[Link], addrs: &[Addr]) {
    let outward: Vec<&Link> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth") && l.link_netnsid.is_some())
        .collect();
    let veth = outward
        .iter()
        .find(|l| l.name == "eth0")
        .or(outward.first())
        .copied();
    if outward.len() > 1 {
        let names: Vec<&str> = outward.iter().map(|l| l.name.as_str()).collect();
        sb.warnings.push(format!(
            "several veths lead out of {}: {}",
            sb.netns.label(),
            names.join(", ")
        ));
    }
    if veth.is_none() {
        sb.warnings.push(format!(
            "no veth in {} leads to another namespace",
            sb.netns.label()
        ));
    }
    sb.ns_veth = veth.map(|l| l.name.clone());
    sb.ns_veth_ifindex = veth.map(|l| l.ifindex);
    sb.ns_veth_ip = veth
        .and_then(|l| addrs.iter().find(|a| a.ifindex == l.ifindex))
        .map(|a| a.addr);
}

/// The sandbox namespace's path devices by index and MAC.
fn set_devices(sb: &mut Sandbox, links: &[Link]) {
    let dev = |name: &Option<String>| {
        let l = links.iter().find(|l| Some(&l.name) == name.as_ref())?;
        Some(tracer_model::path::Dev {
            ifindex: l.ifindex,
            mac: l.mac.clone(),
        })
    };
    sb.devices.ns_veth = dev(&sb.ns_veth);
    sb.devices.tap = dev(&sb.tap);
    sb.devices.bridge = dev(&sb.bridge);
}

/// Why the host side cannot be found when no veth leads out: the namespace's devices, and
/// what was looked for.
fn no_veth_problem(sb: &Sandbox, links: &[Link]) -> String {
    let devices: Vec<String> = links
        .iter()
        .map(|l| match &l.kind {
            Some(k) => format!("{} ({k})", l.name),
            None => l.name.clone(),
        })
        .collect();
    format!(
        "{} has no veth whose peer is in another namespace (its devices: {}); the host side is the namespace that holds that peer",
        sb.netns.label(),
        if devices.is_empty() {
            "none".to_string()
        } else {
            devices.join(", ")
        }
    )
}

/// Guest and host IP from the namespace's DNAT (iptables on network v1, nft on v2). The
/// rulesets are kept: they are the trace's counter baseline.
fn set_nat(sb: &mut Sandbox) {
    let rules = Rulesets::read(&sb.netns);
    sb.datapath = rules.datapath();
    match rules.dnat() {
        Some(d) => {
            sb.guest_ip = Some(d.guest_ip);
            sb.host_ip = d.host_ip;
        }
        None if !rules.errors.is_empty() => sb.warnings.push(format!(
            "cannot read the NAT rules of {}: {}",
            sb.netns.label(),
            rules.errors.join("; ")
        )),
        None => sb.warnings.push(format!(
            "no DNAT rule in {} (iptables or nftables)",
            sb.netns.label()
        )),
    }
    sb.rules = Some(Arc::new(rules));
}

/// Cross-checks the slot of an `ns-N` name against E2B's formulas.
fn check_slot(sb: &mut Sandbox) {
    let Some(slot) = sb.slot else { return };
    if let Some(host_ip) = sb.host_ip
        && host_ip != e2b_host_ip(slot)
    {
        sb.warnings.push(format!(
            "host IP {host_ip} is not slot {slot}'s default {} (a custom SANDBOXES_HOST_NETWORK_CIDR, or a slot mix-up)",
            e2b_host_ip(slot)
        ));
    }
    if let Some(veth) = &sb.host_veth
        && *veth != format!("veth-{slot}")
    {
        sb.warnings.push(format!(
            "{} is paired with {veth}, not veth-{slot}",
            sb.netns.label()
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::PathBuf};

    use super::*;

    fn tun(ifindex: u32, name: &str, carrier: bool, master: Option<u32>) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: Some("tun".into()),
            carrier,
            master,
            ..Default::default()
        }
    }

    fn bare(netns: &str) -> Sandbox {
        Sandbox::new(None, Netns::new(1, Some(netns.into()), PathBuf::from("/x")))
    }

    #[test]
    fn tap_held_by_the_vmm_or_judged_by_carrier() {
        let links = vec![
            tun(3, "tap0", false, Some(9)),
            Link {
                ifindex: 9,
                name: "br0".into(),
                ..Default::default()
            },
        ];
        let mut sb = bare("ns-1");
        set_tap(&mut sb, &["tap0".into()], &links);
        assert_eq!(
            (sb.tap.as_deref(), sb.tap_held, sb.bridge.as_deref()),
            (Some("tap0"), true, Some("br0"))
        );
        let mut sb = bare("ns-1");
        set_tap(&mut sb, &[], &links);
        assert_eq!((sb.tap.as_deref(), sb.tap_held), (Some("tap0"), false));
        let mut sb = bare("ns-1");
        set_tap(
            &mut sb,
            &[],
            &[tun(3, "tapA", true, None), tun(4, "tapB", true, None)],
        );
        assert_eq!(sb.tap, None);
        assert_eq!(sb.warnings.len(), 1, "{:?}", sb.warnings);
    }

    #[test]
    fn the_ns_veth_is_the_one_leading_out() {
        let inner = Link {
            ifindex: 2,
            name: "v-in".into(),
            kind: Some("veth".into()),
            ..Default::default()
        };
        let out = Link {
            ifindex: 3,
            name: "eth0".into(),
            kind: Some("veth".into()),
            link_netnsid: Some(0),
            ..Default::default()
        };
        let addrs = vec![Addr {
            ifindex: 3,
            addr: Ipv4Addr::new(10, 12, 0, 3),
            prefix: 31,
        }];
        let mut sb = bare("ns-1");
        set_ns_veth(&mut sb, &[inner, out], &addrs);
        assert_eq!(
            (sb.ns_veth.as_deref(), sb.ns_veth_ip),
            (Some("eth0"), Some(Ipv4Addr::new(10, 12, 0, 3)))
        );
        assert!(sb.warnings.is_empty());
    }

    #[test]
    fn slot_mismatches_are_warned_about() {
        let mut sb = bare("ns-3");
        sb.host_ip = Some(Ipv4Addr::new(10, 11, 0, 3));
        sb.host_veth = Some("veth-3".into());
        check_slot(&mut sb);
        assert!(sb.warnings.is_empty());
        sb.host_ip = Some(Ipv4Addr::new(10, 11, 0, 4));
        sb.host_veth = Some("veth-4".into());
        check_slot(&mut sb);
        assert_eq!(sb.warnings.len(), 2, "{:?}", sb.warnings);
    }
}
