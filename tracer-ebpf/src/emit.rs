//! Building and sending events.
use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use tracer_common::{
    CT_NONE, Config, Deep, DeepEvent, Event, LOST_EVENTS, OFF_NONE, Offsets, Packet, SNAP_LEN,
};

use crate::{
    kernel::{dev_ident, net_inum, read, sk_net, skb_dev},
    maps::{EVENTS, LOST},
};

/// `skb->mac_header` / `network_header` when unset.
const HEADER_UNSET: u16 = 0xffff;
const ETH_HLEN: u16 = 14;

/// A fresh event stamped with time and CPU.
#[inline(always)]
pub fn event(point: u8) -> Event {
    Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        point,
        cpu: unsafe { bpf_get_smp_processor_id() },
        ..Event::default()
    }
}

/// Fills the device and namespace of `dev` into `ev`.
#[inline(always)]
pub fn set_dev(ev: &mut Event, dev: u64, off: &Offsets) {
    let (ifindex, name, netns) = dev_ident(dev, off);
    ev.ifindex = ifindex;
    ev.ifname = name;
    ev.netns = netns;
}

/// Fills skb address, packet, device and namespace. When the skb has no device yet (local
/// output before routing) the namespace comes from its socket.
#[inline(always)]
pub fn set_skb(ev: &mut Event, skb: u64, pkt: &Packet, off: &Offsets) {
    ev.skb = skb;
    ev.pkt = *pkt;
    let sk: u64 = read(skb, off.skb_sk).unwrap_or(0);
    ev.sk = sk;
    let dev = skb_dev(skb, off);
    if dev != 0 {
        set_dev(ev, dev, off);
    } else {
        ev.netns = net_inum(sk_net(sk, off), off);
    }
}

/// Sends `ev` to userspace; counts it as lost when the ring buffer is full.
#[inline(always)]
pub fn send(ev: &Event) {
    if EVENTS.output(ev, 0).is_err() {
        count_lost();
    }
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(LOST_EVENTS) {
        // Atomic: a program in softirq can interrupt one in process context on the same CPU,
        // and both may count a loss.
        // SAFETY: the map value is a live, aligned u64 for as long as the program runs.
        unsafe { atomic_add(lost, 1) };
    }
}

/// Sends the event of a packet with what the verdict engine compares at every hop: the skb's
/// mark, its conntrack reference (state, status, zone), and the packet's first bytes (L2
/// addresses, TTL), written straight into the ring (they do not fit on the BPF stack). Only
/// packets already matched get here, so packets that are not followed pay nothing for it.
/// `stack_id` is the kernel stack of a drop (deep mode), negative when none.
#[inline(always)]
pub fn send_packet(ev: &Event, skb: u64, cfg: &Config, stack_id: i64) {
    let Some(mut entry) = EVENTS.reserve::<DeepEvent>(0) else {
        count_lost();
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: `p` points at reserved ring memory of the right size, ours until submitted;
    // every field is written before submitting.
    unsafe {
        (*p).ev = *ev;
        fill_deep(&mut (*p).deep, skb, &cfg.off, stack_id);
    }
    entry.submit(0);
}

#[inline(always)]
fn fill_deep(d: &mut Deep, skb: u64, off: &Offsets, stack_id: i64) {
    d.len = read(skb, off.skb_len).unwrap_or(0);
    d.mark = read(skb, off.skb_mark).unwrap_or(0);
    d.stack_id = if stack_id >= 0 { stack_id as i32 } else { -1 };
    let nfct: u64 = read(skb, off.skb_nfct).unwrap_or(0);
    d.ct_info = CT_NONE;
    d.ct_status = 0;
    d.ct_mark = 0;
    d.ct_zone = u32::MAX;
    if nfct != 0 {
        // `_nfct` is the `nf_conn *` with the `ip_conntrack_info` in its low 3 bits.
        d.ct_info = (nfct & 7) as u32;
        let ct = nfct & !7;
        if off.ct_status != OFF_NONE {
            d.ct_status = read::<u64>(ct, off.ct_status).unwrap_or(0) as u32;
        }
        if off.ct_zone != OFF_NONE {
            d.ct_zone = read::<u16>(ct, off.ct_zone).map_or(u32::MAX, u32::from);
        }
        if off.ct_mark != OFF_NONE {
            d.ct_mark = read(ct, off.ct_mark).unwrap_or(0);
        }
    }
    snapshot(d, skb, off);
}

/// The first [`SNAP_LEN`] bytes of the packet from its Ethernet header when it has one just
/// before the IP header, else from the IP header; only the linear part (all of a handshake).
#[inline(always)]
fn snapshot(d: &mut Deep, skb: u64, off: &Offsets) {
    d.snap_len = 0;
    d.l3_off = 0;
    let head: u64 = read(skb, off.skb_head).unwrap_or(0);
    let nh: u16 = read(skb, off.skb_network_header).unwrap_or(HEADER_UNSET);
    let mh: u16 = read(skb, off.skb_mac_header).unwrap_or(HEADER_UNSET);
    let tail: u32 = read(skb, off.skb_tail).unwrap_or(0);
    if head == 0 || nh == HEADER_UNSET {
        return;
    }
    let start = if mh != HEADER_UNSET && mh.wrapping_add(ETH_HLEN) == nh {
        d.l3_off = ETH_HLEN;
        mh
    } else {
        nh
    };
    let avail = tail.saturating_sub(start as u32);
    // SAFETY: bpf_probe_read_kernel reports faults as errors.
    if unsafe { bpf_probe_read_kernel_buf((head + start as u64) as *const u8, &mut d.snap) }.is_ok() {
        d.snap_len = if avail < SNAP_LEN as u32 {
            avail as u16
        } else {
            SNAP_LEN as u16
        };
    }
}

/// `*dst += v` as one atomic instruction (BPF_ATOMIC | BPF_ADD). The BPF target exposes no
/// atomic read-modify-write types, only the intrinsic; the host build (lint) uses std's.
///
/// # Safety
/// `dst` must be valid and aligned for the whole call.
#[inline(always)]
pub unsafe fn atomic_add(dst: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(dst, v);
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as the caller promises.
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(dst).fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}
