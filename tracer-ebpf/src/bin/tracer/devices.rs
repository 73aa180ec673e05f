//! Devices: tcx ingress/egress on the devices of the path, and the `net_dev_start_xmit` /
//! `netif_receive_skb` tracepoints for skbs already followed (handed to a driver; entered a
//! namespace's stack, e.g. after crossing a veth).
use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    macros::{btf_tracepoint, classifier},
    programs::{BtfTracePointContext, TcContext},
};
use tracer_common::point;
use tracer_ebpf::{
    emit::{event, send_packet, set_dev, set_skb},
    filter::{any_tracked, config, is_handshake, is_tracked, packet_matches, track, untrack},
    kernel::{is_ipv4, skb_packet},
};

/// tcx: let the packet continue to the next program / the stack.
const TCX_NEXT: i32 = -1;

#[classifier]
pub fn tcx_ingress(ctx: TcContext) -> i32 {
    on_tcx(&ctx, point::TCX_INGRESS);
    TCX_NEXT
}

#[classifier]
pub fn tcx_egress(ctx: TcContext) -> i32 {
    on_tcx(&ctx, point::TCX_EGRESS);
    TCX_NEXT
}

#[inline(always)]
fn on_tcx(ctx: &TcContext, at: u8) {
    let raw = ctx.as_ptr() as *const __sk_buff;
    // Cheapest test first: the ethertype is a field of the context.
    // SAFETY: the context of a tc program is a valid __sk_buff.
    if !is_ipv4(unsafe { (*raw).protocol } as u16) {
        return;
    }
    let Some(cfg) = config() else { return };
    // Ports straight from the packet (direct access, no helper calls): most traffic on a
    // path device is not ours and must cost next to nothing.
    if let Some((sport, dport, flags)) = linear_tcp(ctx)
        && (!tracer_ebpf::filter::port_matches(cfg, sport, dport) || !is_handshake(flags))
    {
        return;
    }
    let off = &cfg.off;
    // The context of a tc program is the kernel's sk_buff: read it like any other skb, so
    // every hook parses packets the same way and tracking uses the same address.
    let skb = raw as u64;
    let Some(pkt) = skb_packet(skb, off) else {
        return;
    };
    if !tracer_ebpf::filter::port_matches(cfg, pkt.sport, pkt.dport) || !is_handshake(pkt.flags) {
        return;
    }
    let mut ev = event(at);
    set_skb(&mut ev, skb, &pkt, off);
    if !packet_matches(cfg, &pkt, ev.netns) {
        return;
    }
    track(skb, ev.ts_ns);
    send_packet(&ev, skb, cfg, -1);
}

/// TCP ports and flags of an Ethernet/IPv4 frame whose headers are in the linear area (a
/// non-TCP frame reports port 0); None when they are not (then the slower generic parse
/// decides).
#[inline(always)]
fn linear_tcp(ctx: &TcContext) -> Option<(u16, u16, u8)> {
    const ETH: usize = 14;
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH + 20 > end {
        return None;
    }
    // SAFETY: bounds checked above against data_end, as the verifier requires.
    let vihl = unsafe { *((data + ETH) as *const u8) };
    let proto = unsafe { *((data + ETH + 9) as *const u8) };
    if proto != 6 {
        return Some((0, 0, 0));
    }
    let l4 = data + ETH + ((vihl & 0x0f) as usize) * 4;
    if l4 + 14 > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let head = unsafe { *(l4 as *const [u8; 14]) };
    Some((
        u16::from_be_bytes([head[0], head[1]]),
        u16::from_be_bytes([head[2], head[3]]),
        head[13],
    ))
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn net_dev_start_xmit(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    // Every transmit of the machine passes here: one array read while nothing is followed.
    if any_tracked() && is_tracked(skb) {
        let dev: u64 = ctx.arg(1);
        followed(skb, dev, point::XMIT);
    }
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    if any_tracked() && is_tracked(skb) {
        followed(skb, 0, point::RECEIVE);
    }
    0
}

/// Reports a followed skb at `at`, on `dev` when given (else the skb's own device).
#[inline(always)]
fn followed(skb: u64, dev: u64, at: u8) {
    let Some(cfg) = config() else { return };
    let off = &cfg.off;
    let Some(pkt) = skb_packet(skb, off) else {
        return;
    };
    // A followed skb only ever carries a handshake packet: anything else is another packet
    // in a reused skb (the first was freed where no program saw it): it is let go.
    if !is_handshake(pkt.flags) {
        untrack(skb);
        return;
    }
    let mut ev = event(at);
    set_skb(&mut ev, skb, &pkt, off);
    if dev != 0 {
        set_dev(&mut ev, dev, off);
    }
    send_packet(&ev, skb, cfg, -1);
}
