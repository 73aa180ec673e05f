//! What a followed packet looked like at one hop, from its event and the facts every packet
//! record carries (mark, conntrack reference, the first bytes: L2 addresses, TTL).
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::{deep::CtRef, hop::Hop};

/// The facts the engine compares at a hop. `None` where the hop does not carry them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub mark: Option<u32>,
    pub ct: Option<Ct>,
    /// Ethernet (source, destination), when the bytes start with an Ethernet header.
    pub l2: Option<(String, String)>,
}

/// The skb's conntrack reference as the engine compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Ct {
    /// No conntrack reference (before conntrack ran, or an entry was never made).
    None,
    /// Explicitly untracked (NOTRACK, `ct notrack`).
    Untracked,
    /// Tracked: `info` is `enum ip_conntrack_info`, `zone` the entry's zone.
    Tracked {
        info: u32,
        status: u32,
        zone: Option<u16>,
    },
}

/// `enum ip_conntrack_info` values.
pub const CT_ESTABLISHED: u32 = 0;
pub const CT_NEW: u32 = 2;
pub const CT_ESTABLISHED_REPLY: u32 = 3;
pub const CT_UNTRACKED: u32 = 7;
/// `IPS_DST_NAT` and `IPS_SRC_NAT` status bits.
pub const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;

impl Ct {
    fn of(r: Option<&CtRef>) -> Self {
        match r {
            None => Self::None,
            Some(r) if r.info == CT_UNTRACKED => Self::Untracked,
            Some(r) => Self::Tracked {
                info: r.info,
                status: r.status,
                zone: r.zone,
            },
        }
    }

    /// As people read it: "NEW in zone 0", "untracked", "no conntrack entry".
    pub fn describe(&self) -> String {
        match self {
            Self::None => "no conntrack entry".into(),
            Self::Untracked => "untracked".into(),
            Self::Tracked { info, zone, .. } => {
                let state = CtRef {
                    info: *info,
                    ..Default::default()
                }
                .state();
                match zone {
                    Some(z) => format!("{state} in zone {z}"),
                    None => state.to_string(),
                }
            }
        }
    }
}

impl Observed {
    /// The facts of a packet hop; None for hops that are not packets. Hops without the
    /// record's extra facts (older records, tests) carry only the tuple and TTL.
    pub fn of(h: &Hop) -> Option<Self> {
        if !h.is_packet() {
            return None;
        }
        let deep = h.deep.as_deref();
        let l2 = deep
            .and_then(|d| d.headers())
            .and_then(|hd| hd.l2)
            .map(|l| (l.src, l.dst));
        Some(Self {
            src: h.src(),
            dst: h.dst(),
            sport: h.pkt.sport,
            dport: h.pkt.dport,
            ttl: h.pkt.ttl,
            mark: deep.map(|d| d.mark),
            ct: deep.map(|d| Ct::of(d.ct.as_ref())),
            l2,
        })
    }
}
