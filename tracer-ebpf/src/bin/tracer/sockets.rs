//! Sockets, routing and neighbours: connection starts and ends (`inet_sock_set_state`), resets
//! sent and received, route lookups (`fib_table_lookup`) and neighbour state changes, so that
//! "no route", "ARP never answered" and "who sent the RST" are visible.
use aya_ebpf::{helpers::bpf_get_current_task, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{Config, Event, Offsets, Packet, point};
use tracer_ebpf::{
    emit::{event, send, set_dev, set_skb},
    filter::{addr_matches, any_tracked, arm, config, detect_matches, netns_matches, port_matches},
    kernel::{net_inum, read, sk_net, skb_packet},
};

/// `TCP_SYN_SENT` of `enum tcp_state`.
const TCP_SYN_SENT: u32 = 2;

/// `LOOPBACK_IFINDEX`: the input interface of output route lookups.
const LOOPBACK_IFINDEX: u32 = 1;

/// The connection tuple of a socket, from its point of view (saddr = local).
#[inline(always)]
fn sk_packet(sk: u64, off: &Offsets) -> Option<Packet> {
    let dport_be: u16 = read(sk, off.sk_dport)?;
    Some(Packet {
        saddr: read(sk, off.sk_rcv_saddr)?,
        daddr: read(sk, off.sk_daddr)?,
        sport: read(sk, off.sk_num)?,
        dport: u16::from_be(dport_be),
        ..Packet::default()
    })
}

/// A socket event if the socket is one we follow.
#[inline(always)]
fn sk_event(cfg: &Config, sk: u64, at: u8) -> Option<Event> {
    let off = &cfg.off;
    let pkt = sk_packet(sk, off)?;
    if !port_matches(cfg, pkt.sport, pkt.dport) {
        return None;
    }
    let netns = net_inum(sk_net(sk, off), off);
    if !detect_matches(cfg, &pkt, netns) {
        return None;
    }
    let mut ev = event(at);
    ev.pkt = pkt;
    ev.netns = netns;
    ev.sk = sk;
    Some(ev)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let sk: u64 = ctx.arg(0);
    if let Some(mut ev) = sk_event(cfg, sk, point::SOCK_STATE) {
        ev.aux = ctx.arg::<u32>(1);
        ev.reason = ctx.arg::<u32>(2);
        // Its SYN is next: the OUTPUT hooks look at packets' contents for a while.
        if ev.reason == TCP_SYN_SENT {
            arm(ev.ts_ns);
        }
        send(&ev);
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let sk: u64 = ctx.arg(0);
    if let Some(ev) = sk_event(cfg, sk, point::RECV_RESET) {
        send(&ev);
    }
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    on_send_reset(ctx.arg(0), ctx.arg(1), ctx.arg(2))
}

/// `tcp_send_reset` before Linux 6.10 passes no reason.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_nr(ctx: BtfTracePointContext) -> i32 {
    on_send_reset(ctx.arg(0), ctx.arg(1), 0)
}

#[inline(always)]
fn on_send_reset(sk: u64, skb: u64, reason: u32) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let off = &cfg.off;
    // With an skb, the RST answers that packet (e.g. a SYN to a port nobody listens on).
    if skb != 0 {
        let Some(pkt) = skb_packet(skb, off) else {
            return 0;
        };
        if !port_matches(cfg, pkt.sport, pkt.dport) {
            return 0;
        }
        let mut ev = event(point::SEND_RESET);
        set_skb(&mut ev, skb, &pkt, off);
        if ev.netns == 0 && sk != 0 {
            ev.netns = net_inum(sk_net(sk, off), off);
        }
        if detect_matches(cfg, &pkt, ev.netns) {
            ev.reason = reason;
            send(&ev);
        }
    } else if let Some(mut ev) = sk_event(cfg, sk, point::SEND_RESET) {
        ev.reason = reason;
        send(&ev);
    }
    0
}

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn fib_table_lookup(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let off = &cfg.off;
    let flp: u64 = ctx.arg(1);
    let Some(daddr) = read::<u32>(flp, off.flowi4_daddr) else {
        return 0;
    };
    // Route lookups carry no port: follow them by address only (never "any address").
    if cfg.flags & tracer_common::CFG_ANY_ADDR != 0 || !addr_matches(cfg, daddr, daddr) {
        return 0;
    }
    // Input lookups run per received packet (a busy stream to the same address makes one for
    // every segment): they only matter while a packet is followed (it is tracked before it
    // is routed: at tcx ingress or the entry slot). Output lookups run per
    // connection (a socket keeps its route) and may be all a failed connect() leaves.
    let iif: u32 = read(flp, off.flowi4_iif).unwrap_or(0);
    if iif != LOOPBACK_IFINDEX && !any_tracked() {
        return 0;
    }
    let nhc: u64 = ctx.arg(2);
    let mut ev = event(point::FIB_LOOKUP);
    ev.pkt.daddr = daddr;
    ev.pkt.saddr = read(flp, off.flowi4_saddr).unwrap_or(0);
    ev.aux = ctx.arg::<u32>(0);
    ev.reason = ctx.arg::<u32>(3);
    let dev: u64 = read(nhc, off.nhc_dev).unwrap_or(0);
    if dev != 0 {
        set_dev(&mut ev, dev, off);
    } else if iif == LOOPBACK_IFINDEX {
        // An output lookup runs in the context of the connecting task: its namespace is the
        // lookup's. (Input lookups run in softirq, where `current` is unrelated.)
        ev.netns = current_netns(off);
    }
    ev.aux2 = iif;
    if ev.netns != 0 && !netns_matches(cfg, ev.netns) {
        return 0;
    }
    send(&ev);
    0
}

#[inline(always)]
fn current_netns(off: &Offsets) -> u32 {
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = read(task, off.task_nsproxy).unwrap_or(0);
    let net: u64 = read(nsproxy, off.nsproxy_net_ns).unwrap_or(0);
    net_inum(net, off)
}

#[btf_tracepoint(function = "neigh_update")]
pub fn neigh_update(ctx: BtfTracePointContext) -> i32 {
    let n: u64 = ctx.arg(0);
    let new: u8 = ctx.arg(2);
    on_neigh(n, new as u32);
    0
}

#[btf_tracepoint(function = "neigh_timer_handler")]
pub fn neigh_timer_handler(ctx: BtfTracePointContext) -> i32 {
    let n: u64 = ctx.arg(0);
    let state: u32 = ctx.arg(1);
    on_neigh(n, state);
    0
}

#[inline(always)]
fn on_neigh(n: u64, new_state: u32) {
    let Some(cfg) = config() else { return };
    let off = &cfg.off;
    let Some(key) = read::<u32>(n, off.neigh_primary_key) else {
        return;
    };
    if cfg.flags & tracer_common::CFG_ANY_ADDR != 0 || !addr_matches(cfg, key, key) {
        return;
    }
    let mut ev = event(point::NEIGH);
    let dev: u64 = read(n, off.neigh_dev).unwrap_or(0);
    set_dev(&mut ev, dev, off);
    if !netns_matches(cfg, ev.netns) {
        return;
    }
    ev.pkt.daddr = key;
    ev.aux = read::<u8>(n, off.neigh_nud_state).unwrap_or(0) as u32;
    ev.reason = new_state;
    send(&ev);
}
