//! Hops: kernel events with names on them (namespace, device, reason, kernel function). The
//! journey and verdict code only ever sees hops, so it can be tested from fixtures.
use std::net::Ipv4Addr;

use serde::Serialize;
use tracer_common::{Event, NF_SLOT_PRIORITIES, Packet, hook, point, tcp_flag};

use crate::events::{Names, addr, ifname};

/// Netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn from_num(n: u8) -> Option<Self> {
        Some(match n {
            hook::PRE_ROUTING => Self::Prerouting,
            hook::LOCAL_IN => Self::Input,
            hook::FORWARD => Self::Forward,
            hook::LOCAL_OUT => Self::Output,
            hook::POST_ROUTING => Self::Postrouting,
            _ => return None,
        })
    }

    /// As iptables names the built-in chain.
    pub fn name(self) -> &'static str {
        match self {
            Self::Prerouting => "PREROUTING",
            Self::Input => "INPUT",
            Self::Forward => "FORWARD",
            Self::Output => "OUTPUT",
            Self::Postrouting => "POSTROUTING",
        }
    }

    /// As nft names the hook.
    pub fn nft_name(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Output => "output",
            Self::Postrouting => "postrouting",
        }
    }
}

/// TCP socket states (`include/net/tcp_states.h`).
pub fn tcp_state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "?",
    }
}
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_CLOSE: u32 = 7;

/// Neighbour (NUD) states, as `ip neigh` prints them.
pub fn nud_name(s: u32) -> &'static str {
    match s {
        0x01 => "INCOMPLETE",
        0x02 => "REACHABLE",
        0x04 => "STALE",
        0x08 => "DELAY",
        0x10 => "PROBE",
        0x20 => "FAILED",
        0x40 => "NOARP",
        0x80 => "PERMANENT",
        0 => "NONE",
        _ => "?",
    }
}
pub const NUD_INCOMPLETE: u32 = 0x01;
pub const NUD_FAILED: u32 = 0x20;

/// What happened at a hop.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "point", rename_all = "snake_case")]
pub enum HopKind {
    Drop {
        reason: String,
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
        /// Device names, resolved by the caller from the namespace's links when known.
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    /// Monotonic ns (kernel clock).
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    pub ifindex: u32,
    pub device: Option<String>,
    #[serde(flatten)]
    pub kind: HopKind,
    #[serde(skip)]
    pub pkt: Packet,
    #[serde(skip)]
    pub skb: u64,
    /// The socket of a socket event, or of the packet (0 when none).
    #[serde(skip)]
    pub sk: u64,
    /// Kernel `symbol+0xoff` of a drop or free.
    pub location: Option<String>,
    pub function: Option<String>,
}

impl Hop {
    pub fn from_event(ev: &Event, names: &mut Names) -> Option<Self> {
        let kind = match ev.point {
            point::DROP => HopKind::Drop {
                reason: names.reasons.drop_name(ev.reason),
            },
            point::CONSUME => HopKind::Consumed,
            point::TCX_INGRESS => HopKind::Tcx { ingress: true },
            point::TCX_EGRESS => HopKind::Tcx { ingress: false },
            point::XMIT => HopKind::Xmit,
            point::RECEIVE => HopKind::Receive,
            point::NETFILTER => HopKind::Netfilter {
                hook: Hook::from_num(ev.hook)?,
                slot: ev.slot,
                priority: *NF_SLOT_PRIORITIES.get(ev.slot as usize)?,
                in_ifindex: ev.aux,
                out_ifindex: ev.aux2,
                window_end: crate::path::slot_window(Hook::from_num(ev.hook)?, ev.slot).1,
                in_dev: None,
                out_dev: None,
            },
            point::SOCK_STATE => HopKind::Socket {
                old: tcp_state_name(ev.aux),
                new: tcp_state_name(ev.reason),
                old_state: ev.aux,
                new_state: ev.reason,
            },
            point::SEND_RESET => HopKind::SendReset {
                reason: names
                    .reasons
                    .rst
                    .get(&ev.reason)
                    .cloned()
                    .unwrap_or_else(|| format!("reason#{}", ev.reason)),
            },
            point::RECV_RESET => HopKind::RecvReset,
            point::FIB_LOOKUP => HopKind::Route {
                table: ev.aux,
                error: ev.reason as i32,
                iif: ev.aux2,
            },
            point::NEIGH => HopKind::Neigh {
                address: addr(ev.pkt.daddr),
                old: nud_name(ev.aux),
                new: nud_name(ev.reason),
                new_state: ev.reason,
            },
            _ => return None,
        };
        let dev = ifname(ev);
        let (location, function) = match ev.point {
            point::DROP | point::CONSUME if ev.location != 0 => (
                Some(names.kallsyms.describe(ev.location)),
                names.kallsyms.function(ev.location),
            ),
            _ => (None, None),
        };
        Some(Self {
            ts_ns: ev.ts_ns,
            netns: ev.netns,
            netns_name: names.netns(ev.netns),
            ifindex: ev.ifindex,
            device: (!dev.is_empty()).then_some(dev),
            kind,
            pkt: ev.pkt,
            skb: ev.skb,
            sk: ev.sk,
            location,
            function,
        })
    }

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
