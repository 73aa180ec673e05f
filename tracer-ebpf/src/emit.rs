//! Building and sending events.
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use tracer_common::{Event, LOST_EVENTS, Offsets, Packet};

use crate::{
    kernel::{dev_ident, net_inum, read, sk_net, skb_dev},
    maps::{EVENTS, LOST},
};

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
    if EVENTS.output(ev, 0).is_err()
        && let Some(lost) = LOST.get_ptr_mut(LOST_EVENTS)
    {
        // Atomic: a program in softirq can interrupt one in process context on the same CPU,
        // and both may count a loss.
        // SAFETY: the map value is a live, aligned u64 for as long as the program runs.
        unsafe { atomic_add(lost, 1) };
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
