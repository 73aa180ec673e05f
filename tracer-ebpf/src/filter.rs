//! The in-kernel filter: everything that is not followed returns within a few instructions.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    ARM_NS, CFG_ANY_ADDR, CFG_ANY_NETNS, CFG_DETECT_ANY_ADDR, Config, HOT_ARMED_UNTIL, HOT_TRACKED,
    MAX_PORTS, Packet, Tracked, tcp_flag,
};

use crate::{
    emit::atomic_add,
    maps::{ADDRS, CONFIG, HOT, NETNS, NF_SKIP, TRACKED},
};

/// The current configuration; None before userspace wrote it.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// True when either port of the packet is one we follow.
#[inline(always)]
pub fn port_matches(cfg: &Config, sport: u16, dport: u16) -> bool {
    let mut i = 0;
    while i < MAX_PORTS {
        let p = cfg.ports[i];
        if p != 0 && (p == sport || p == dport) {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
pub fn netns_matches(cfg: &Config, netns: u32) -> bool {
    cfg.flags & CFG_ANY_NETNS != 0 || NETNS.get_ptr(&netns).is_some()
}

#[inline(always)]
pub fn addr_matches(cfg: &Config, a: u32, b: u32) -> bool {
    cfg.flags & CFG_ANY_ADDR != 0 || ADDRS.get_ptr(&a).is_some() || ADDRS.get_ptr(&b).is_some()
}

/// Packets that decide a connection attempt: SYN (and SYN-ACK) and RST. Data and pure ACKs
/// of an established connection are never followed, so a long, busy connection on the port
/// costs no events.
#[inline(always)]
pub fn is_handshake(flags: u8) -> bool {
    flags & (tcp_flag::SYN | tcp_flag::RST) != 0
}

/// The whole filter for a packet seen in namespace `netns`.
#[inline(always)]
pub fn packet_matches(cfg: &Config, pkt: &Packet, netns: u32) -> bool {
    port_matches(cfg, pkt.sport, pkt.dport)
        && addr_matches(cfg, pkt.saddr, pkt.daddr)
        && netns_matches(cfg, netns)
}

/// The filter of the detection programs (socket events, resets, drops of packets not
/// followed): as [`packet_matches`], but any address in the watcher's mode.
#[inline(always)]
pub fn detect_matches(cfg: &Config, pkt: &Packet, netns: u32) -> bool {
    port_matches(cfg, pkt.sport, pkt.dport)
        && (cfg.flags & CFG_DETECT_ANY_ADDR != 0 || addr_matches(cfg, pkt.saddr, pkt.daddr))
        && netns_matches(cfg, netns)
}

/// True when some skb is followed: otherwise no packet can be ours at a hook that only
/// follows (the per-packet tracepoints, every netfilter slot but OUTPUT's first).
#[inline(always)]
pub fn any_tracked() -> bool {
    HOT.get(HOT_TRACKED).is_some_and(|n| *n != 0)
}

/// True when a packet made on this host may be ours: something is followed, or a socket of
/// ours entered SYN_SENT lately.
#[inline(always)]
pub fn armed() -> bool {
    // SAFETY: a helper without arguments.
    any_tracked()
        || HOT
            .get(HOT_ARMED_UNTIL)
            .is_some_and(|until| unsafe { bpf_ktime_get_ns() } < *until)
}

/// A socket of ours is about to send a SYN.
#[inline(always)]
pub fn arm(now: u64) {
    if let Some(p) = HOT.get_ptr_mut(HOT_ARMED_UNTIL) {
        // SAFETY: a live array slot; a racing writer stores about the same time.
        unsafe { *p = now + ARM_NS };
    }
}

#[inline(always)]
pub fn is_tracked(skb: u64) -> bool {
    TRACKED.get_ptr(&skb).is_some()
}

/// Follows `skb` from now on (and drops this CPU's foreign mark if it names the same
/// address: the mark never claims a followed skb).
#[inline(always)]
pub fn track(skb: u64, now: u64) {
    if marked_foreign(skb) {
        mark_foreign(0);
    }
    if !is_tracked(skb) && TRACKED.insert(&skb, &Tracked { first_ns: now }, 0).is_ok() {
        count_tracked(1);
    }
}

/// Stops following `skb` (it was freed; its address may be reused). Returns whether it was.
#[inline(always)]
pub fn untrack(skb: u64) -> bool {
    let removed = TRACKED.remove(&skb).is_ok();
    if removed {
        count_tracked(u64::MAX);
    }
    removed
}

/// Adds `delta` (wrapping: u64::MAX is -1) to the followed count.
#[inline(always)]
fn count_tracked(delta: u64) {
    if let Some(p) = HOT.get_ptr_mut(HOT_TRACKED) {
        // SAFETY: a live, aligned array slot for as long as the program runs.
        unsafe { atomic_add(p, delta) };
    }
}

/// True when the first netfilter slot of the hook running now on this CPU found `skb` not
/// followed. Only the later slots of that same hook traversal may rely on it: they run right
/// after the first slot, on the same CPU, for the same skb. The first slot never trusts the
/// mark (it checks every packet and rewrites the mark), and nothing else reads it, so a mark
/// left behind by an skb that was freed meanwhile (dropped inside the hook, its address
/// reused by a followed skb) cannot hide anything.
#[inline(always)]
pub fn marked_foreign(skb: u64) -> bool {
    // SAFETY: this CPU's slot.
    NF_SKIP.get_ptr(0).is_some_and(|p| unsafe { *p } == skb)
}

/// Marks `skb` as not followed (see [`marked_foreign`]), or clears the mark (`skb` = 0).
#[inline(always)]
pub fn mark_foreign(skb: u64) {
    if let Some(p) = NF_SKIP.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs on one CPU do not run concurrently.
        unsafe { *p = skb };
    }
}
