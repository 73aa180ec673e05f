//! Parsing what netlink sends: the reply datagrams to one request (`Replies`: that request's
//! messages, the end of a dump, errors as errnos) and the messages converted to the
//! snapshot's types (links, addresses, routes, queue disciplines, neighbours).
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NLM_F_DUMP_INTR, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    tc::{TcAttribute, TcHandle, TcMessage, TcStats2},
};

use super::{Addr, Link, Neighbour, Qdisc, Route, Snapshot};

pub(super) fn is_errno(err: &anyhow::Error, errno: i32) -> bool {
    errno_of(err) == Some(errno)
}

/// The errno a netlink request was refused with, if that is what the error is.
pub(super) fn errno_of(err: &anyhow::Error) -> Option<i32> {
    err.chain().find_map(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
    })
}

/// One reply datagram to request `seq`, read as a dump reads it, each message converted to the
/// snapshot types it can be: what the tracer does with bytes netlink sends (the fuzz target
/// of this parse).
pub fn parse_reply(datagram: &[u8], seq: u32) -> Result<Snapshot> {
    let mut replies = Replies {
        dump: true,
        ..Default::default()
    };
    replies.absorb(datagram, seq)?;
    let mut snap = Snapshot::default();
    for m in &replies.messages {
        match m {
            RouteNetlinkMessage::NewLink(l) => snap.links.push(link_from(l)),
            RouteNetlinkMessage::NewAddress(a) => snap.addrs.extend(addr_from(a)),
            RouteNetlinkMessage::NewRoute(r) => snap.routes.extend(route_from(r)),
            RouteNetlinkMessage::NewNeighbour(n) => snap.neighbours.extend(neighbour_from(n)),
            _ => {}
        }
    }
    Ok(snap)
}

/// Replies to one request, accumulated datagram by datagram.
#[derive(Debug, Default)]
pub(super) struct Replies {
    pub(super) dump: bool,
    pub(super) messages: Vec<RouteNetlinkMessage>,
    pub(super) done: bool,
    pub(super) interrupted: bool,
}

impl Replies {
    /// Takes in one datagram (possibly several messages). Messages of other requests (late
    /// answers to an earlier, abandoned one) are skipped.
    pub(super) fn absorb(&mut self, datagram: &[u8], seq: u32) -> Result<()> {
        let mut rest = datagram;
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                bail!(
                    "malformed netlink message (length {len}, {} bytes left)",
                    rest.len()
                );
            }
            self.message(&rest[..len], seq)?;
            rest = &rest[nlmsg_align(len).min(rest.len())..];
        }
        Ok(())
    }

    fn message(&mut self, bytes: &[u8], seq: u32) -> Result<()> {
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            Ok(m) => m,
            Err(e) => {
                // One message the crate cannot parse (a newer kernel attribute) must not
                // hide the rest of the namespace.
                tracing::warn!("skipping a netlink message that does not parse: {e}");
                return Ok(());
            }
        };
        if msg.header.sequence_number != seq {
            return Ok(());
        }
        if msg.header.flags & NLM_F_DUMP_INTR != 0 {
            self.interrupted = true;
        }
        match msg.payload {
            NetlinkPayload::Done(d) if d.code < 0 => {
                return Err(std::io::Error::from_raw_os_error(d.code.saturating_neg()))
                    .context("netlink dump failed");
            }
            NetlinkPayload::Done(_) => self.done = true,
            // The errno of any value (the library's own conversion panics on i32::MIN).
            NetlinkPayload::Error(e) if e.code.is_some() => {
                let errno = e.code.map_or(0, |c| c.get().saturating_abs());
                return Err(std::io::Error::from_raw_os_error(errno)).context("netlink request refused");
            }
            NetlinkPayload::Error(_) => self.done = true,
            NetlinkPayload::Overrun(_) => bail!("netlink overrun"),
            NetlinkPayload::InnerMessage(m) => {
                self.messages.push(m);
                self.done |= !self.dump;
            }
            _ => {}
        }
        Ok(())
    }
}

const NLMSG_HDRLEN: usize = 16;

fn nlmsg_align(len: usize) -> usize {
    (len + 3) & !3
}

/// A link as the kernel describes it.
pub fn link_from(msg: &LinkMessage) -> Link {
    let flags = msg.header.flags;
    let mut link = Link {
        ifindex: msg.header.index,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        ..Default::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::LinkInfo(infos) => link.kind = info_kind(infos),
            LinkAttribute::Carrier(c) => link.carrier = *c != 0,
            LinkAttribute::OperState(s) => link.oper_state = s.to_string(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) => link.mac = Some(mac_string(a)),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Link(l) => link.peer_ifindex = Some(*l),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            _ => {}
        }
    }
    link
}

fn info_kind(infos: &[LinkInfo]) -> Option<String> {
    infos.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k.to_string()),
        _ => None,
    })
}

/// `02:fc:00:00:00:05`.
pub fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An IPv4 address of a device; None for other families.
pub fn addr_from(msg: &AddressMessage) -> Option<Addr> {
    // IFA_LOCAL is the device's own address; IFA_ADDRESS is the peer's on point-to-point links.
    let pick = |local: bool| {
        msg.attributes.iter().find_map(|a| match (a, local) {
            (AddressAttribute::Local(std::net::IpAddr::V4(ip)), true)
            | (AddressAttribute::Address(std::net::IpAddr::V4(ip)), false) => Some(*ip),
            _ => None,
        })
    };
    let addr = pick(true).or_else(|| pick(false))?;
    Some(Addr {
        ifindex: msg.header.index,
        addr,
        prefix: msg.header.prefix_len,
    })
}

/// An IPv4 route; None for other families.
pub fn route_from(msg: &RouteMessage) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut route = Route {
        table: u32::from(msg.header.table),
        dst: Ipv4Addr::UNSPECIFIED,
        prefix: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
        kind: route_kind(msg.header.kind),
        metric: 0,
    };
    for attr in &msg.attributes {
        match attr {
            // RTA_TABLE carries the full id (the header's u8 says 252 for ids above 255).
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = Some(*ip),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Priority(p) => route.metric = *p,
            _ => {}
        }
    }
    Some(route)
}

/// The words `ip route` uses for a route type.
pub fn route_kind(kind: RouteType) -> String {
    match kind {
        RouteType::Unspec => "unspec".into(),
        RouteType::Unicast => "unicast".into(),
        RouteType::Local => "local".into(),
        RouteType::Broadcast => "broadcast".into(),
        RouteType::Anycast => "anycast".into(),
        RouteType::Multicast => "multicast".into(),
        RouteType::BlackHole => "blackhole".into(),
        RouteType::Unreachable => "unreachable".into(),
        RouteType::Prohibit => "prohibit".into(),
        RouteType::Throw => "throw".into(),
        RouteType::Nat => "nat".into(),
        RouteType::ExternalResolve => "xresolve".into(),
        RouteType::Other(n) => format!("type{n}"),
        _ => "unknown".into(),
    }
}

/// A root qdisc; None for the others (classes' children, ingress).
pub fn qdisc_from(msg: &TcMessage) -> Option<Qdisc> {
    if msg.header.parent != TcHandle::ROOT {
        return None;
    }
    let mut q = Qdisc {
        ifindex: u32::try_from(msg.header.index).ok()?,
        kind: String::new(),
        drops: 0,
        qlen: 0,
    };
    for a in &msg.attributes {
        match a {
            TcAttribute::Kind(k) => q.kind = k.clone(),
            TcAttribute::Stats(s) => (q.drops, q.qlen) = (s.drops, s.qlen),
            TcAttribute::Stats2(all) => {
                for s in all {
                    if let TcStats2::Queue(s) = s {
                        (q.drops, q.qlen) = (s.drops, s.qlen);
                    }
                }
            }
            _ => {}
        }
    }
    Some(q)
}

/// An IPv4 neighbour entry; None for other families.
pub fn neighbour_from(msg: &NeighbourMessage) -> Option<Neighbour> {
    let mut addr = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => addr = Some(*ip),
            NeighbourAttribute::LinkLayerAddress(l) if !l.is_empty() => mac = Some(mac_string(l)),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: msg.header.ifindex,
        addr: addr?,
        mac,
        state: neighbour_state(msg.header.state),
    })
}

/// The words `ip neigh` uses for a neighbour state.
pub fn neighbour_state(state: NeighbourState) -> String {
    match state {
        NeighbourState::Incomplete => "INCOMPLETE".into(),
        NeighbourState::Reachable => "REACHABLE".into(),
        NeighbourState::Stale => "STALE".into(),
        NeighbourState::Delay => "DELAY".into(),
        NeighbourState::Probe => "PROBE".into(),
        NeighbourState::Failed => "FAILED".into(),
        NeighbourState::Noarp => "NOARP".into(),
        NeighbourState::Permanent => "PERMANENT".into(),
        NeighbourState::None => "NONE".into(),
        NeighbourState::Other(n) => format!("0x{n:x}"),
        _ => "UNKNOWN".into(),
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART, NetlinkHeader};
    use netlink_packet_route::link::{InfoKind, State};

    use super::*;

    fn veth_msg() -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Broadcast;
        m.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Address(vec![0x02, 0xfc, 0, 0, 0, 6]),
            LinkAttribute::Link(42),
            LinkAttribute::LinkNetNsId(3),
            LinkAttribute::OperState(State::Up),
            LinkAttribute::Carrier(1),
            LinkAttribute::IfAlias("e2b-lab".into()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        m
    }

    /// Serialises replies the way the kernel sends them.
    fn wire(seq: u32, flags: u16, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), payload);
        packet.header.flags = flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn links_keep_what_the_path_needs() {
        let l = link_from(&veth_msg());
        assert_eq!(
            (l.ifindex, l.name.as_str(), l.kind.as_deref()),
            (7, "eth0", Some("veth"))
        );
        assert!(l.up && l.carrier);
        assert_eq!(l.oper_state, "UP");
        assert_eq!(l.mac.as_deref(), Some("02:fc:00:00:00:06"));
        assert_eq!(
            (l.peer_ifindex, l.link_netnsid, l.master),
            (Some(42), Some(3), None)
        );
        assert_eq!(l.alias.as_deref(), Some("e2b-lab"));
    }

    #[test]
    fn carrier_attribute_wins_over_lower_up() {
        let mut m = veth_msg();
        m.attributes.retain(|a| !matches!(a, LinkAttribute::Carrier(_)));
        m.attributes.push(LinkAttribute::Carrier(0));
        assert!(!link_from(&m).carrier);
    }

    #[test]
    fn a_multipart_dump_ends_at_done_and_skips_other_requests() {
        let multi = NLM_F_MULTIPART;
        let mut dgram = wire(
            5,
            multi,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg())),
        );
        dgram.extend(wire(
            4,
            multi,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg())),
        ));
        dgram.extend(wire(
            5,
            multi,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg())),
        ));
        let mut r = Replies {
            dump: true,
            ..Default::default()
        };
        r.absorb(&dgram, 5).unwrap();
        assert_eq!((r.messages.len(), r.done), (2, false));
        r.absorb(&wire(5, multi, NetlinkPayload::Done(DoneMessage::default())), 5)
            .unwrap();
        assert!(r.done && !r.interrupted);
    }

    #[test]
    fn interrupted_dumps_are_flagged() {
        let flags = NLM_F_MULTIPART | NLM_F_DUMP_INTR;
        let mut r = Replies {
            dump: true,
            ..Default::default()
        };
        r.absorb(
            &wire(
                1,
                flags,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg())),
            ),
            1,
        )
        .unwrap();
        assert!(r.interrupted);
    }

    #[test]
    fn errors_become_errnos_and_acks_end_requests() {
        let mut nack = ErrorMessage::default();
        nack.code = std::num::NonZeroI32::new(-libc::ENODEV);
        let mut r = Replies::default();
        let err = r.absorb(&wire(9, 0, NetlinkPayload::Error(nack)), 9).unwrap_err();
        assert!(is_errno(&err, libc::ENODEV), "{err:#}");
        let mut r = Replies::default();
        r.absorb(&wire(9, 0, NetlinkPayload::Error(ErrorMessage::default())), 9)
            .unwrap();
        assert!(r.done);
    }

    /// Found by the netlink fuzz target: an error code of i32::MIN has no negation.
    #[test]
    fn any_error_code_becomes_an_error_without_panic() {
        let mut nack = ErrorMessage::default();
        nack.code = std::num::NonZeroI32::new(i32::MIN);
        assert!(
            Replies::default()
                .absorb(&wire(9, 0, NetlinkPayload::Error(nack)), 9)
                .is_err()
        );
        let mut done = netlink_packet_core::DoneMessage::default();
        done.code = i32::MIN;
        let mut r = Replies {
            dump: true,
            ..Default::default()
        };
        assert!(
            r.absorb(&wire(9, NLM_F_MULTIPART, NetlinkPayload::Done(done)), 9)
                .is_err()
        );
    }

    #[test]
    fn a_single_reply_ends_a_plain_request() {
        let mut r = Replies::default();
        r.absorb(
            &wire(
                2,
                0,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg())),
            ),
            2,
        )
        .unwrap();
        assert!(r.done);
    }

    #[test]
    fn truncated_datagrams_are_errors() {
        let dgram = wire(
            1,
            0,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(veth_msg())),
        );
        let mut r = Replies::default();
        assert!(r.absorb(&dgram[..dgram.len() - 8], 1).is_err());
    }

    #[test]
    fn routes_addresses_and_neighbours_convert() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = 32;
        r.header.table = 254;
        r.header.kind = RouteType::BlackHole;
        r.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet([10, 11, 0, 1].into())),
            RouteAttribute::Gateway(RouteAddress::Inet([10, 12, 0, 3].into())),
            RouteAttribute::Table(1000),
        ];
        let r = route_from(&r).unwrap();
        assert_eq!(
            (r.dst, r.prefix, r.table, r.kind.as_str()),
            ([10, 11, 0, 1].into(), 32, 1000, "blackhole")
        );
        assert_eq!(r.gateway, Some([10, 12, 0, 3].into()));

        let mut a = AddressMessage::default();
        a.header.index = 3;
        a.header.prefix_len = 31;
        a.attributes = vec![
            AddressAttribute::Address([10, 12, 0, 2].into()),
            AddressAttribute::Local([10, 12, 0, 3].into()),
        ];
        assert_eq!(
            addr_from(&a),
            Some(Addr {
                ifindex: 3,
                addr: [10, 12, 0, 3].into(),
                prefix: 31
            })
        );

        let mut n = NeighbourMessage::default();
        n.header.ifindex = 4;
        n.header.state = NeighbourState::Failed;
        n.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
            [169, 254, 0, 21].into(),
        ))];
        let n = neighbour_from(&n).unwrap();
        assert_eq!((n.state.as_str(), n.mac), ("FAILED", None));
    }
}
