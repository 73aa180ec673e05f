//! Journey fixtures for tests of this crate and of the crates built on it: hops of the lab's
//! first sandbox (host IP 10.11.0.1, guest 169.254.0.21, namespaces `e2b-host` and `ns-1`).
//! Pure data builders, no I/O.
use std::net::Ipv4Addr;

use tracer_common::{Packet, tcp_flag};

use crate::{
    hook::Hook,
    hop::{Hop, HopKind},
    path::{ExpectedPath, NsRef},
};

/// Fixture builder: hops of one namespace/device, in order.
pub fn ip(s: &str) -> u32 {
    u32::from_ne_bytes(s.parse::<Ipv4Addr>().unwrap().octets())
}

pub fn pkt(src: &str, sport: u16, dst: &str, dport: u16, flags: u8, seq: u32, ack: u32) -> Packet {
    Packet {
        saddr: ip(src),
        daddr: ip(dst),
        sport,
        dport,
        seq,
        ack,
        ip_id: 1,
        ttl: 64,
        flags,
    }
}

pub fn hop(ts: u64, ns: &str, dev: &str, kind: HopKind, p: Packet) -> Hop {
    Hop {
        ts_ns: ts,
        netns: ns.bytes().map(u32::from).sum(),
        netns_name: Some(ns.into()),
        ifindex: fixture_ifindex(dev),
        device: (!dev.is_empty()).then(|| dev.to_string()),
        kind,
        pkt: p,
        skb: 0xffff_8880_0000_1000,
        sk: 0x5,
        location: None,
        function: None,
        deep: None,
    }
}

pub fn syn() -> Packet {
    pkt("10.12.0.2", 40000, "10.11.0.1", 49983, tcp_flag::SYN, 1000, 0)
}

pub fn syn_dnat() -> Packet {
    pkt("10.12.0.2", 40000, "169.254.0.21", 49983, tcp_flag::SYN, 1000, 0)
}

pub fn syn_ack_guest() -> Packet {
    pkt(
        "169.254.0.21",
        49983,
        "10.12.0.2",
        40000,
        tcp_flag::SYN | tcp_flag::ACK,
        5000,
        1001,
    )
}

pub fn nf(hook: Hook, slot: u8) -> HopKind {
    HopKind::Netfilter {
        hook,
        slot,
        priority: tracer_common::NF_SLOT_PRIORITIES[slot as usize],
        in_ifindex: 0,
        out_ifindex: 0,
        window_end: crate::path::slot_window(hook, slot).1,
        in_dev: None,
        out_dev: None,
    }
}

pub fn sock(old: u32, new: u32) -> HopKind {
    HopKind::Socket {
        old: crate::tcp::tcp_state_name(old),
        new: crate::tcp::tcp_state_name(new),
        old_state: old,
        new_state: new,
    }
}

/// The namespace inode fixtures give a namespace name (stable, distinct per name).
pub fn ns_inode(name: &str) -> u32 {
    name.bytes().map(u32::from).sum()
}

/// The expected path of the lab's first sandbox.
pub fn path() -> ExpectedPath {
    ExpectedPath {
        sandbox_id: Some("ix7hj8hustuvlxiqc0g0u".into()),
        vmm_pid: Some(42),
        host_ns: Some(NsRef {
            inode: ns_inode("e2b-host"),
            name: Some("e2b-host".into()),
        }),
        sandbox_ns: NsRef {
            inode: ns_inode("ns-1"),
            name: Some("ns-1".into()),
        },
        host_veth: "veth-1".into(),
        ns_veth: "eth0".into(),
        tap: "tap0".into(),
        bridge: None,
        host_ip: "10.11.0.1".parse().unwrap(),
        guest_ip: "169.254.0.21".parse().unwrap(),
        host_veth_ip: Some("10.12.0.2".parse().unwrap()),
        ns_veth_ip: Some("10.12.0.3".parse().unwrap()),
        port: 49983,
        devices: crate::path::PathDevices {
            host_veth: Some(dev(HOST_VETH_IFINDEX, "0e:00:00:00:01:02")),
            host_bridge: None,
            ns_veth: Some(dev(NS_VETH_IFINDEX, "0e:00:00:00:01:03")),
            tap: Some(dev(TAP_IFINDEX, "02:fc:00:00:00:06")),
            bridge: None,
            guest_mac: Some("02:fc:00:00:00:05".into()),
            host_ttl: Some(64),
        },
    }
}

/// Interface indexes of the fixture path's devices (as `hop` gives them by name).
pub const HOST_VETH_IFINDEX: u32 = 5;
pub const NS_VETH_IFINDEX: u32 = 2;
pub const TAP_IFINDEX: u32 = 3;

fn dev(ifindex: u32, mac: &str) -> crate::path::Dev {
    crate::path::Dev {
        ifindex,
        mac: Some(mac.into()),
    }
}

/// The ifindex fixtures give a device name.
pub fn fixture_ifindex(dev: &str) -> u32 {
    match dev {
        "veth-1" => HOST_VETH_IFINDEX,
        "eth0" => NS_VETH_IFINDEX,
        "tap0" => TAP_IFINDEX,
        "" => 0,
        _ => 9,
    }
}

/// The lab's inventory of a namespace: `ns-1` with E2B's nat PREROUTING chain (its DNAT only
/// when `dnat`), or `e2b-host` with its route to the slot's host IP through `via_dev`.
pub fn inventory(ns: &str, dnat: bool, via_dev: &str) -> crate::engine::inventory::NsInventory {
    use crate::{
        engine::inventory::{NsInventory, Route},
        firewall::model::{Action, Backend, Chain, Cond, HookPoint, Rule, Source, Table},
    };
    let mut inv = NsInventory {
        netns: ns_inode(ns),
        label: ns.into(),
        ..Default::default()
    };
    if ns == "e2b-host" {
        inv.routes.push(Route {
            table: 254,
            dst: "10.11.0.1".parse().unwrap(),
            prefix: 32,
            kind: "unicast".into(),
            gateway: Some(
                if via_dev == "veth-1" {
                    "10.12.0.3"
                } else {
                    "10.12.0.5"
                }
                .parse()
                .unwrap(),
            ),
            oif: Some(fixture_ifindex(via_dev)),
            device: Some(via_dev.into()),
            metric: 0,
            prefsrc: None,
        });
        return inv;
    }
    let rules = if dnat {
        vec![Rule {
            conds: vec![
                Cond::InDev(vec!["eth0".into()]),
                Cond::Dst(vec![("10.11.0.1".parse().unwrap(), 32)]),
            ],
            action: Action::Dnat(Some("169.254.0.21".parse().unwrap())),
            text: "-A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21".into(),
            handle: None,
        }]
    } else {
        Vec::new()
    };
    inv.tables.push(Table {
        source: Source::Iptables(Backend::Nft),
        family: "ip".into(),
        name: "nat".into(),
        chains: vec![Chain {
            name: "PREROUTING".into(),
            hook: Some(HookPoint::Prerouting),
            priority: crate::hook::PRIO_NAT_DST,
            is_nat: true,
            policy_drop: false,
            device: None,
            rules,
        }],
    });
    inv
}
