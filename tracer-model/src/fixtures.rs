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
        ifindex: 2,
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
    }
}
