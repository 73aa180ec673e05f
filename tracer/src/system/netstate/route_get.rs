//! Where the kernel would route a connection made now: a route get (RTM_GETROUTE) of a
//! [`RouteQuery`] on an [`Rtnl`], answered by the same lookup a connect() does
//! ([`RouteGot`]).
use std::net::Ipv4Addr;

use anyhow::Result;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage},
};
use serde::Serialize;

use super::{
    messages::{errno_of, route_kind},
    rtnl::Rtnl,
};

/// The flow a route get asks about (what a probe connection will be).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteQuery {
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// The uid of the socket's owner (`ip rule ... uidrange`).
    pub uid: u32,
    /// The socket's mark (SO_MARK; 0 unless set).
    pub mark: u32,
}

/// The kernel's answer to a route get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteGot {
    /// unicast, local, broadcast, ...
    pub kind: String,
    pub table: u32,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub prefsrc: Option<Ipv4Addr>,
}

fn route_got(msg: &RouteMessage) -> RouteGot {
    let mut got = RouteGot {
        kind: route_kind(msg.header.kind),
        table: u32::from(msg.header.table),
        oif: None,
        gateway: None,
        prefsrc: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => got.table = *t,
            RouteAttribute::Oif(i) => got.oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => got.gateway = Some(*ip),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => got.prefsrc = Some(*ip),
            _ => {}
        }
    }
    got
}

impl Rtnl {
    /// Where the kernel would send a TCP packet of `q` made in this namespace now: a route
    /// *get* (RTM_GETROUTE, as `ip route get DST uid U mark M ipproto tcp sport S dport D`),
    /// answered by the same lookup a connect() does, policy rules and every table included.
    /// `Ok(Err(errno))` when the lookup itself fails (ENETUNREACH, EHOSTUNREACH, EACCES for a
    /// prohibit route or rule, EINVAL for a blackhole).
    pub fn route_get(&mut self, q: &RouteQuery) -> Result<Result<RouteGot, i32>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        // Report the table the route came from.
        msg.header.flags = RouteFlags::LookupTable;
        msg.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet(q.dst)),
            RouteAttribute::Uid(q.uid),
            RouteAttribute::Mark(q.mark),
            RouteAttribute::IpProto(libc::IPPROTO_TCP as u8),
            RouteAttribute::Dport(q.dport),
        ];
        if q.sport != 0 {
            msg.attributes.push(RouteAttribute::Sport(q.sport));
        }
        match self.request(RouteNetlinkMessage::GetRoute(msg)) {
            Ok(replies) => replies
                .iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(r) => Some(Ok(route_got(r))),
                    _ => None,
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("the kernel answered a route get in {} with no route", self.label)
                }),
            Err(e) => match errno_of(&e) {
                Some(errno) => Ok(Err(errno)),
                None => Err(e),
            },
        }
    }
}
