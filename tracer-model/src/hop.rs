//! Hops: kernel events with names on them (namespace, device, reason, kernel function). The
//! journey and verdict code only ever sees hops; decoding kernel events into hops is the
//! tracer's event decoder's job.
use std::net::Ipv4Addr;

use tracer_common::{Packet, tcp_flag};

use crate::{deep::HopDeep, hook::Hook, net::addr, reason::DropReason};

/// What happened at a hop.
#[derive(Debug, Clone, PartialEq)]
pub enum HopKind {
    Drop {
        reason: DropReason,
    },
    Consumed,
    Tcx {
        ingress: bool,
    },
    Xmit,
    Receive,
    Netfilter {
        hook: Hook,
        slot: u8,
        priority: i32,
        in_ifindex: u32,
        out_ifindex: u32,
        /// Priority of the next slot attached at this hook (i32::MAX after the last): a drop
        /// after this hop happened in a hook function with a priority in between.
        window_end: i32,
        /// Device names, resolved from the namespace's links when known.
        in_dev: Option<String>,
        out_dev: Option<String>,
    },
    Socket {
        old: &'static str,
        new: &'static str,
        old_state: u32,
        new_state: u32,
    },
    SendReset {
        reason: String,
    },
    RecvReset,
    Route {
        table: u32,
        error: i32,
        iif: u32,
    },
    Neigh {
        address: Ipv4Addr,
        old: &'static str,
        new: &'static str,
        new_state: u32,
    },
}

/// One named observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    /// Monotonic ns (kernel clock).
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    pub ifindex: u32,
    pub device: Option<String>,
    pub kind: HopKind,
    pub pkt: Packet,
    pub skb: u64,
    /// The socket of a socket event, or of the packet (0 when none).
    pub sk: u64,
    /// Kernel `symbol+0xoff` of a drop or free.
    pub location: Option<String>,
    pub function: Option<String>,
    /// Deep mode only: the packet's bytes, skb and conntrack facts, the stack at a drop.
    pub deep: Option<Box<HopDeep>>,
}

impl Hop {
    /// Namespace label: its name, or `netns:<inode>`.
    pub fn ns_label(&self) -> String {
        self.netns_name
            .clone()
            .unwrap_or_else(|| format!("netns:{}", self.netns))
    }

    /// True for hops that carry a packet (not socket/route/neighbour events).
    pub fn is_packet(&self) -> bool {
        !matches!(
            self.kind,
            HopKind::Socket { .. } | HopKind::RecvReset | HopKind::Route { .. } | HopKind::Neigh { .. }
        )
    }

    pub fn is_syn(&self) -> bool {
        self.pkt.flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN
    }

    pub fn is_syn_ack(&self) -> bool {
        self.pkt.flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN | tcp_flag::ACK
    }

    pub fn is_rst(&self) -> bool {
        self.pkt.flags & tcp_flag::RST != 0
    }

    pub fn src(&self) -> Ipv4Addr {
        addr(self.pkt.saddr)
    }

    pub fn dst(&self) -> Ipv4Addr {
        addr(self.pkt.daddr)
    }
}
