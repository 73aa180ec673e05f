//! `#[repr(C)]` types shared by the kernel programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here crosses the user/kernel boundary byte for byte, so fields are plain integers
//! (never Rust enums, whose invalid discriminants would be UB when read back) and every struct
//! is padded explicitly.
#![no_std]

pub mod hooks;

/// Where in the kernel an [`Event`] was recorded (`Event::point`).
pub mod point {
    /// `skb:kfree_skb`: the packet was dropped; `reason` holds the drop reason.
    pub const DROP: u8 = 1;
    /// `skb:consume_skb`: the packet was freed normally (e.g. read from a tap by the VMM).
    pub const CONSUME: u8 = 2;
    /// tcx ingress on a device of the path.
    pub const TCX_INGRESS: u8 = 3;
    /// tcx egress on a device of the path.
    pub const TCX_EGRESS: u8 = 4;
    /// `net:net_dev_start_xmit`: handed to the device driver.
    pub const XMIT: u8 = 5;
    /// `net:netif_receive_skb`: entered the stack of a device's namespace.
    pub const RECEIVE: u8 = 6;
    /// A netfilter hook; `hook` and `slot` say which one and where in it.
    pub const NETFILTER: u8 = 7;
    /// `sock:inet_sock_set_state`: `aux` = old state, `reason` = new state.
    pub const SOCK_STATE: u8 = 8;
    /// `tcp:tcp_send_reset`: a stack answered with RST; `reason` = `enum sk_rst_reason`.
    pub const SEND_RESET: u8 = 9;
    /// `tcp:tcp_receive_reset`: a socket received a RST.
    pub const RECV_RESET: u8 = 10;
    /// `fib:fib_table_lookup`: `reason` = lookup error (negative errno as i32), `aux` = table id,
    /// `aux2` = resulting device ifindex.
    pub const FIB_LOOKUP: u8 = 11;
    /// `neigh:neigh_update` / `neigh_timer_handler`: `reason` = new NUD state, `aux` = old
    /// state, `pkt.daddr` = the neighbour's address.
    pub const NEIGH: u8 = 12;
}

/// Netfilter IPv4 hook numbers (`enum nf_inet_hooks`).
pub mod hook {
    pub const PRE_ROUTING: u8 = 0;
    pub const LOCAL_IN: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const LOCAL_OUT: u8 = 3;
    pub const POST_ROUTING: u8 = 4;
    pub const COUNT: usize = 5;
}

/// Priorities at which the netfilter programs run, one program per slot. Each sits just after
/// a standard table priority (raw -300, conntrack -200, mangle -150, nat dst -100, filter 0,
/// security 50, nat src 100), so "seen at slot k, not at slot k+1" names the table in between.
/// `i32::MIN`/`i32::MAX` are refused by the kernel, so the outer slots sit one inside them.
pub const NF_SLOT_PRIORITIES: [i32; 9] = [i32::MIN + 1, -299, -199, -149, -99, 1, 51, 101, i32::MAX - 1];

/// The slots attached at each hook (indexed by hook number): every hook function that may
/// drop sits between two of them, but each hook only gets the slots around the tables it
/// has (raw/conntrack/nat-dst only at PREROUTING/OUTPUT, filter/security not at PREROUTING or
/// POSTROUTING, ...). Every slot is a program run per packet, also for traffic that is not
/// followed, so fewer slots keep the tracer cheap. nft chains at other priorities still fall
/// into a window between two slots and are found in the ruleset.
pub const NF_HOOK_SLOTS: [&[u8]; hook::COUNT] = [
    &[0, 1, 2, 3, 4, 8],       // PREROUTING: raw, conntrack, mangle, nat
    &[0, 3, 5, 6, 7, 8],       // INPUT: mangle, filter, security, nat (src)
    &[0, 3, 5, 6, 8],          // FORWARD: mangle, filter, security
    &[0, 1, 2, 3, 4, 5, 6, 8], // OUTPUT: raw, conntrack, mangle, nat, filter, security
    &[0, 3, 7, 8],             // POSTROUTING: mangle, nat (src)
];

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The IPv4/TCP facts of one packet. Addresses are in network byte order (as on the wire),
/// ports and sequence numbers in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub ip_id: u16,
    pub ttl: u8,
    pub flags: u8,
}

/// One observation from the kernel. Fixed size; what the fields mean depends on `point`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Kernel address of the `sk_buff` (0 for socket, route and neighbour events).
    pub skb: u64,
    /// Kernel text address of the drop/free site (`kfree_skb`/`consume_skb`).
    pub location: u64,
    /// The socket: of a socket event, or the one an skb belongs to (0 when none). Ties the
    /// client socket's transitions to its SYN even before the socket has a port.
    pub sk: u64,
    /// Network namespace inode (0 when unknown).
    pub netns: u32,
    /// Device the packet was on (0 when none).
    pub ifindex: u32,
    pub reason: u32,
    pub aux: u32,
    pub aux2: u32,
    /// One of [`point`].
    pub point: u8,
    /// Netfilter hook ([`hook`]) for `point::NETFILTER`.
    pub hook: u8,
    /// Index into [`NF_SLOT_PRIORITIES`] for `point::NETFILTER`.
    pub slot: u8,
    pub _pad: u8,
    pub cpu: u32,
    pub pkt: Packet,
    /// Device name, NUL padded.
    pub ifname: [u8; 16],
    pub _pad2: u32,
}

/// Maximum number of TCP ports the in-kernel filter matches.
pub const MAX_PORTS: usize = 4;

/// `Config::flags`: match packets in every namespace, ignoring the `NETNS` map.
pub const CFG_ANY_NETNS: u32 = 1;
/// `Config::flags`: match any address, ignoring the `ADDRS` map.
pub const CFG_ANY_ADDR: u32 = 2;
/// `Config::flags`: the detection programs (socket state, resets, drops of packets not
/// followed) match any address; the path programs still use `ADDRS`. The watcher's mode:
/// every failed envd attempt and drop on the node, the full path only where it zoomed in.
pub const CFG_DETECT_ANY_ADDR: u32 = 4;
/// `Config::flags`: deep mode: a drop's record carries the kernel stack (`Deep::stack_id`).
/// Every packet record carries the rest of [`Deep`] (the facts the verdict engine compares).
pub const CFG_DEEP: u32 = 8;

/// Bytes of each followed packet a deep event carries (from its L2 header when it has one,
/// else from its IP header): every header of an envd handshake packet, and its start.
pub const SNAP_LEN: usize = 192;

/// What deep mode adds to an [`Event`] of a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Deep {
    /// `skb->len` (bytes from `skb->data`).
    pub len: u32,
    pub mark: u32,
    /// `skb->_nfct`'s low bits (`enum ip_conntrack_info`); [`CT_NONE`] without conntrack.
    pub ct_info: u32,
    pub ct_status: u32,
    pub ct_mark: u32,
    /// `nf_conn.zone.id`, or u32::MAX when unknown.
    pub ct_zone: u32,
    /// Kernel stack id in the `STACKS` map (drops only), negative when none.
    pub stack_id: i32,
    /// Bytes of `snap` that are the packet's (the rest is not).
    pub snap_len: u16,
    /// Offset in `snap` of the IP header: 14 when `snap` starts with an Ethernet header, 0
    /// when it starts at the IP header.
    pub l3_off: u16,
    pub snap: [u8; SNAP_LEN],
}

/// `Deep::ct_info` when the skb has no conntrack reference.
pub const CT_NONE: u32 = u32::MAX;

/// A deep-mode record: the event, then what deep mode adds. Its size tells it from an Event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeepEvent {
    pub ev: Event,
    pub deep: Deep,
}

/// Kernel struct member offsets, read from the running kernel's BTF at load time (Rust eBPF
/// has no CO-RE field relocations). All in bytes from the start of the named struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub dev_ifindex: u32,
    pub dev_name: u32,
    /// `net_device.nd_net.net`.
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `sock.__sk_common.skc_daddr` and friends.
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_net: u32,
    pub flowi4_iif: u32,
    pub flowi4_daddr: u32,
    pub flowi4_saddr: u32,
    pub nhc_dev: u32,
    pub neigh_dev: u32,
    pub neigh_primary_key: u32,
    pub neigh_nud_state: u32,
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub nf_state_hook: u32,
    pub nf_state_in: u32,
    pub nf_state_out: u32,
    pub nf_state_net: u32,
    /// The facts of every packet record: `sk_buff.len`, `.mark`, `.mac_header`, `.tail`, `._nfct`,
    /// and `nf_conn.status`, `.zone.id`, `.mark` ([`OFF_NONE`] where this kernel has none).
    pub skb_len: u32,
    pub skb_mark: u32,
    pub skb_mac_header: u32,
    pub skb_tail: u32,
    pub skb_nfct: u32,
    pub ct_status: u32,
    pub ct_zone: u32,
    pub ct_mark: u32,
}

/// An offset this kernel does not have (a config option compiled out): not read.
pub const OFF_NONE: u32 = u32::MAX;

/// Filter and layout configuration, element 0 of the `CONFIG` array map. Userspace may rewrite
/// it while programs run (a watcher adding sandboxes); programs read it once per invocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// TCP ports to follow (source or destination); 0 = unused slot.
    pub ports: [u16; MAX_PORTS],
    /// `CFG_*` bits.
    pub flags: u32,
    pub _pad: u32,
    pub off: Offsets,
}

/// Value of the `TRACKED` map (keyed by `sk_buff` address): an skb we have reported before,
/// so later hooks and the free follow it even where its headers no longer match the filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracked {
    pub first_ns: u64,
}

/// Index of the lost-event counter in the `LOST` per-CPU array.
pub const LOST_EVENTS: u32 = 0;

/// `HOT` map index: how many skbs are followed now (0: every per-packet program returns at
/// once). It may run high (an entry the LRU evicted), never low.
pub const HOT_TRACKED: u32 = 0;
/// `HOT` map index: until when (ns, kernel clock) a socket of ours may send a new SYN, so the
/// programs where locally made packets first appear (OUTPUT) match packets by content.
pub const HOT_ARMED_UNTIL: u32 = 1;
/// How long a socket entering SYN_SENT keeps OUTPUT matching (covers its SYN and the first
/// retransmissions; later ones are still caught by tcx on the path's devices).
pub const ARM_NS: u64 = 10_000_000_000;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), explicitly padded.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Tracked {}
    unsafe impl aya::Pod for super::DeepEvent {}
}
