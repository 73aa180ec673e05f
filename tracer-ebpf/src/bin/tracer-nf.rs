//! Netfilter programs (`BPF_PROG_TYPE_NETFILTER`), one per priority slot of
//! `tracer_common::NF_SLOT_PRIORITIES`, attached at every IPv4 hook of each namespace of the
//! path. They never change a verdict (always NF_ACCEPT); they record that a followed packet
//! got this far, so the hook and table where it stopped are known without touching a rule.
//!
//! aya cannot parse this program type; tracer/src/attach/bpf/netfilter.rs loads the "netfilter"
//! sections of this object itself.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::ffi::c_void;

use tracer_common::point;
use tracer_ebpf::{
    emit::{event, send_packet, set_skb},
    filter::{
        any_tracked, armed, config, is_handshake, is_tracked, mark_foreign, marked_foreign, packet_matches,
        port_matches, track, untrack,
    },
    kernel::{net_inum, read, skb_packet},
};

const NF_ACCEPT: i32 = 1;

/// `ctx` is `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`.
///
/// `by_content`: this is the first slot of an OUTPUT hook, where packets made on this host
/// (the orchestrator's SYN, a stack's RST) first appear: it matches packets by their
/// contents while that can find one of ours. Everywhere else a packet of ours arrives
/// followed already (tcx on the path's devices matches what enters a namespace), so a slot
/// only looks it up, and while nothing is followed it returns after one array read.
#[inline(always)]
fn on_hook(ctx: *mut c_void, slot: u8, by_content: bool) -> i32 {
    let cheap_exit = if by_content { !armed() } else { !any_tracked() };
    if cheap_exit {
        return NF_ACCEPT;
    }
    let Some(cfg) = config() else {
        return NF_ACCEPT;
    };
    let off = &cfg.off;
    let ctx = ctx as *const u64;
    // SAFETY: the verifier lets netfilter programs read both context fields.
    let (state, skb) = unsafe { (*ctx, *ctx.add(1)) };
    // Only the first slot of a hook matches packets by content; later slots follow what it
    // tracked, so NAT in between cannot hide a packet. What the first slot passed over, the
    // later slots of the same traversal skip at the cost of an array read (see
    // `marked_foreign`); the first slot itself always checks.
    let pass = || {
        mark_foreign(skb);
        NF_ACCEPT
    };
    if slot != 0 && (marked_foreign(skb) || !is_tracked(skb)) {
        return NF_ACCEPT;
    }
    if slot == 0 && !by_content && !is_tracked(skb) {
        return pass();
    }
    let Some(pkt) = skb_packet(skb, off) else {
        return if slot == 0 { pass() } else { NF_ACCEPT };
    };
    // Followed already (whatever its ports now: a rewrite may have changed them), else a
    // handshake packet of ours: the port first, the cheapest test.
    let followed = slot != 0 || (any_tracked() && is_tracked(skb));
    if !followed && !port_matches(cfg, pkt.sport, pkt.dport) {
        return pass();
    }
    // A followed skb only ever carries a handshake packet: anything else is another packet
    // in a reused skb (the first was freed where no program saw it): it is let go.
    if followed && !is_handshake(pkt.flags) {
        untrack(skb);
        return if slot == 0 { pass() } else { NF_ACCEPT };
    }
    let netns = net_inum(read(state, off.nf_state_net).unwrap_or(0), off);
    if !followed && !(is_handshake(pkt.flags) && packet_matches(cfg, &pkt, netns)) {
        return pass();
    }
    let mut ev = event(point::NETFILTER);
    set_skb(&mut ev, skb, &pkt, off);
    ev.netns = netns;
    ev.hook = read(state, off.nf_state_hook).unwrap_or(0);
    ev.slot = slot;
    let dev_in: u64 = read(state, off.nf_state_in).unwrap_or(0);
    let dev_out: u64 = read(state, off.nf_state_out).unwrap_or(0);
    ev.aux = read(dev_in, off.dev_ifindex).unwrap_or(0);
    ev.aux2 = read(dev_out, off.dev_ifindex).unwrap_or(0);
    if slot == 0 {
        track(skb, ev.ts_ns);
    }
    send_packet(&ev, skb, cfg, -1);
    NF_ACCEPT
}

macro_rules! slots {
    ($($name:ident = $slot:expr, $by_content:expr);* $(;)?) => {
        $(
            #[unsafe(no_mangle)]
            #[unsafe(link_section = "netfilter")]
            pub extern "C" fn $name(ctx: *mut c_void) -> i32 {
                on_hook(ctx, $slot, $by_content)
            }
        )*
    };
}

// Slot N sits at NF_SLOT_PRIORITIES[N]. `nf_entry` is slot 0 at the hooks where packets of
// ours arrive followed; `nf_slot0` is slot 0 at OUTPUT.
slots!(
    nf_slot0 = 0, true;
    nf_slot1 = 1, false;
    nf_slot2 = 2, false;
    nf_slot3 = 3, false;
    nf_slot4 = 4, false;
    nf_slot5 = 5, false;
    nf_slot6 = 6, false;
    nf_slot7 = 7, false;
    nf_slot8 = 8, false;
    nf_entry = 0, false;
);

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
