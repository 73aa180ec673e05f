//! Reading kernel structures through offsets taken from BTF at load time.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{Offsets, Packet};

const ETH_P_IP_BE: u16 = 0x0008;
const IPPROTO_TCP: u8 = 6;
/// `skb->network_header` when unset (`(u16)~0U`).
const HEADER_UNSET: u16 = 0xffff;

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address and reports faults as errors.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// The IPv4/TCP header facts of an skb, or None when it is not IPv4/TCP.
#[inline(always)]
pub fn skb_packet(skb: u64, off: &Offsets) -> Option<Packet> {
    let head: u64 = read(skb, off.skb_head)?;
    let nh: u16 = read(skb, off.skb_network_header)?;
    if nh == HEADER_UNSET {
        return None;
    }
    ip_packet(head + nh as u64)
}

/// Parses an IPv4 header at `ip` and the TCP header after it.
#[inline(always)]
pub fn ip_packet(ip: u64) -> Option<Packet> {
    let iph: [u8; 20] = read(ip, 0)?;
    if iph[0] >> 4 != 4 || iph[9] != IPPROTO_TCP {
        return None;
    }
    let ihl = ((iph[0] & 0x0f) as u64) * 4;
    let tcp: [u8; 16] = read(ip + ihl, 0)?;
    Some(Packet {
        saddr: u32::from_ne_bytes([iph[12], iph[13], iph[14], iph[15]]),
        daddr: u32::from_ne_bytes([iph[16], iph[17], iph[18], iph[19]]),
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        ip_id: u16::from_be_bytes([iph[4], iph[5]]),
        ttl: iph[8],
        flags: tcp[13],
    })
}

/// True when the big-endian ethertype is IPv4.
#[inline(always)]
pub fn is_ipv4(proto_be: u16) -> bool {
    proto_be == ETH_P_IP_BE
}

/// Namespace inode of a `struct net *`.
#[inline(always)]
pub fn net_inum(net: u64, off: &Offsets) -> u32 {
    read(net, off.net_inum).unwrap_or(0)
}

/// `dev_net(dev)`.
#[inline(always)]
pub fn dev_net(dev: u64, off: &Offsets) -> u64 {
    read(dev, off.dev_net).unwrap_or(0)
}

/// `sock_net(sk)`.
#[inline(always)]
pub fn sk_net(sk: u64, off: &Offsets) -> u64 {
    read(sk, off.sk_net).unwrap_or(0)
}

/// Identity of a device: (ifindex, name, netns inode).
#[inline(always)]
pub fn dev_ident(dev: u64, off: &Offsets) -> (u32, [u8; 16], u32) {
    let ifindex = read(dev, off.dev_ifindex).unwrap_or(0);
    let name = read(dev, off.dev_name).unwrap_or([0u8; 16]);
    (ifindex, name, net_inum(dev_net(dev, off), off))
}

/// The device an skb is on (0 when none).
#[inline(always)]
pub fn skb_dev(skb: u64, off: &Offsets) -> u64 {
    read(skb, off.skb_dev).unwrap_or(0)
}
