//! A NETLINK_ROUTE socket bound to one namespace ([`Rtnl`]): its requests and dumps (links,
//! addresses, routes, policy rules, queue disciplines, neighbours, nsids), each answered by
//! that namespace.
use std::{os::fd::AsRawFd as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::AddressMessage,
    link::LinkMessage,
    neighbour::NeighbourMessage,
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteHeader, RouteMessage},
    rule::RuleMessage,
    tc::TcMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{
    Addr, Link, Neighbour, Qdisc, Route, Snapshot,
    messages::{Replies, addr_from, is_errno, link_from, neighbour_from, qdisc_from, route_from},
    rules::{Rule, rule_from},
};
use crate::system::netns::Netns;

/// A kernel dump can be interrupted by a concurrent change (NLM_F_DUMP_INTR): retry it.
const DUMP_ATTEMPTS: usize = 5;
/// The kernel answers in microseconds; a socket that stays silent this long is broken, and
/// the tracer must not hang on it.
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Dump datagrams are at most 32 KiB (the kernel's largest dump skb); twice that is safe.
const RECV_BUF: usize = 64 * 1024;

/// A NETLINK_ROUTE socket bound to one namespace. Reuse it for several requests: opening one
/// costs two setns calls.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    pub(super) label: String,
}

impl Rtnl {
    /// A socket answered by namespace `ns`.
    pub fn open(ns: &Netns) -> Result<Self> {
        let socket = {
            let _inside = ns.enter()?;
            Socket::new(NETLINK_ROUTE).context("open a netlink socket")?
        };
        Self::setup(socket, ns.label())
    }

    fn setup(mut socket: Socket, label: String) -> Result<Self> {
        socket.bind_auto().context("bind the netlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connect the netlink socket")?;
        set_recv_timeout(&socket, RECV_TIMEOUT)?;
        Ok(Self {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            label,
        })
    }

    pub fn snapshot(&mut self) -> Result<Snapshot> {
        Ok(Snapshot {
            links: self.links()?,
            addrs: self.addrs()?,
            routes: self.routes()?,
            neighbours: self.neighbours()?,
            rules: self.rules().unwrap_or_default(),
        })
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        self.dump_as(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            |m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            },
        )
    }

    /// One link by ifindex, without dumping them all (a host namespace holds a veth per
    /// sandbox). None when there is no such link.
    pub fn link(&mut self, ifindex: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        match self.request(RouteNetlinkMessage::GetLink(msg)) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
                _ => None,
            })),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn addrs(&mut self) -> Result<Vec<Addr>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        self.dump_as(RouteNetlinkMessage::GetAddress(msg), |m| match m {
            RouteNetlinkMessage::NewAddress(a) => addr_from(a),
            _ => None,
        })
    }

    /// IPv4 routes of every table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        // RT_TABLE_UNSPEC in a dump request means "all tables".
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
        self.dump_as(RouteNetlinkMessage::GetRoute(msg), |m| match m {
            RouteNetlinkMessage::NewRoute(r) => route_from(r),
            _ => None,
        })
    }

    /// IPv4 policy routing rules (`ip rule`), by priority.
    pub fn rules(&mut self) -> Result<Vec<Rule>> {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        let mut rules = self.dump_as(RouteNetlinkMessage::GetRule(msg), |m| match m {
            RouteNetlinkMessage::NewRule(r) => rule_from(r),
            _ => None,
        })?;
        rules.sort_by_key(|r| r.priority);
        Ok(rules)
    }

    /// The root queue disciplines of every device.
    pub fn qdiscs(&mut self) -> Result<Vec<Qdisc>> {
        self.dump_as(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            |m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) => qdisc_from(q),
                _ => None,
            },
        )
    }

    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        self.dump_as(RouteNetlinkMessage::GetNeighbour(msg), |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => neighbour_from(n),
            _ => None,
        })
    }

    /// The nsid this socket's namespace uses for `target`; None when it assigned none. Asking
    /// never assigns one (RTM_GETNSID only reads).
    pub fn nsid_of(&mut self, target: &Netns) -> Result<Option<i32>> {
        let fd = target.fd()?;
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(fd.as_raw_fd() as u32));
        let replies = self.request(RouteNetlinkMessage::GetNsId(msg))?;
        let id = replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNsId(n) => n.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(*id),
                _ => None,
            }),
            _ => None,
        });
        Ok(id.filter(|id| *id >= 0))
    }

    /// A dump request, its replies as the library parses them (for readers of messages this
    /// module does not convert: the engine's inventory of rules, queues and filters).
    pub fn dump_messages(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        self.dump(msg)
    }

    /// A dump request, each reply converted by `convert` (replies it does not take are skipped).
    fn dump_as<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        convert: impl Fn(&RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>> {
        Ok(self.dump(msg)?.iter().filter_map(convert).collect())
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_ATTEMPTS {
            let (replies, interrupted) = self.exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        bail!(
            "netlink dump in {} kept changing under us ({DUMP_ATTEMPTS} attempts)",
            self.label
        )
    }

    pub(super) fn request(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        Ok(self.exchange(msg, NLM_F_REQUEST)?.0)
    }

    /// Sends one request and collects its replies: (messages, dump interrupted).
    fn exchange(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send(msg, flags, seq)?;
        let mut replies = Replies {
            dump: flags & NLM_F_DUMP == NLM_F_DUMP,
            ..Default::default()
        };
        while !replies.done {
            self.recv()?;
            replies
                .absorb(&self.buf, seq)
                .with_context(|| format!("netlink reply in {}", self.label))?;
        }
        Ok((replies.messages, replies.interrupted))
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Result<()> {
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .with_context(|| format!("send a netlink request in {}", self.label))?;
        Ok(())
    }

    /// Receives one datagram into `self.buf`.
    fn recv(&mut self) -> Result<()> {
        self.buf.clear();
        self.buf.reserve(RECV_BUF);
        // MSG_TRUNC: the kernel reports the datagram's real length, so a truncation shows.
        let n = self
            .socket
            .recv(&mut self.buf, libc::MSG_TRUNC)
            .with_context(|| format!("netlink recv in {}", self.label))?;
        if n > self.buf.len() {
            bail!("netlink datagram of {n} bytes truncated to {}", self.buf.len());
        }
        Ok(())
    }
}

pub(crate) fn set_recv_timeout(socket: &Socket, timeout: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on a valid fd with a pointer to a live timeval of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("set the netlink receive timeout");
    }
    Ok(())
}
