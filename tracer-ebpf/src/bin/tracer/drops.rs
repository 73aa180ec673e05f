//! Drops and normal frees: `kfree_skb` (with the drop reason and where it happened) and
//! `consume_skb` (e.g. a tap's reader took the packet).
use aya_ebpf::{
    macros::btf_tracepoint,
    programs::{BtfTracePointContext, tracing::StackIdContext as _},
};
use tracer_common::{CFG_DEEP, point};
use tracer_ebpf::{
    emit::{event, send_packet, set_skb},
    filter::{any_tracked, config, detect_matches, is_handshake, is_tracked, untrack},
    kernel::{dev_net, net_inum, read, sk_net, skb_dev, skb_packet},
    maps::STACKS,
};

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    on_free(&ctx, skb, location, reason, point::DROP);
    0
}

#[btf_tracepoint(function = "consume_skb")]
pub fn consume_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    // Every consumed skb of the machine passes here: only the ones we follow count, and
    // while none is followed that costs one array read.
    if any_tracked() && is_tracked(skb) {
        let location: u64 = ctx.arg(1);
        on_free(&ctx, skb, location, 0, point::CONSUME);
    }
    0
}

/// `consume_skb` before Linux 6.3 passes the skb only.
#[btf_tracepoint(function = "consume_skb")]
pub fn consume_skb_nl(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    if any_tracked() && is_tracked(skb) {
        on_free(&ctx, skb, 0, 0, point::CONSUME);
    }
    0
}

#[inline(always)]
fn on_free(ctx: &BtfTracePointContext, skb: u64, location: u64, reason: u32, at: u8) {
    let Some(cfg) = config() else { return };
    let off = &cfg.off;
    let was_tracked = any_tracked() && untrack(skb);
    let Some(pkt) = skb_packet(skb, off) else {
        return;
    };
    // A followed skb only ever carries a handshake packet: anything else is another packet
    // in a reused skb (the first was freed where no program saw it), and is not reported.
    if was_tracked && !is_handshake(pkt.flags) {
        return;
    }
    if !was_tracked {
        let dev = skb_dev(skb, off);
        let net = if dev != 0 {
            dev_net(dev, off)
        } else {
            sk_net(read(skb, off.skb_sk).unwrap_or(0), off)
        };
        if !is_handshake(pkt.flags) || !detect_matches(cfg, &pkt, net_inum(net, off)) {
            return;
        }
    }
    let mut ev = event(at);
    set_skb(&mut ev, skb, &pkt, off);
    ev.location = location;
    ev.reason = reason;
    // Deep mode: what the kernel was doing when it dropped the packet.
    let stack_id = if at == point::DROP && cfg.flags & CFG_DEEP != 0 {
        ctx.get_stackid(&STACKS, 0).unwrap_or(-1)
    } else {
        -1
    };
    send_packet(&ev, skb, cfg, stack_id);
}
