//! Read-only snapshots of one network namespace: links, IPv4 addresses, routes (all tables)
//! and neighbours, read over rtnetlink (never by parsing `ip` output), plus namespace ids and
//! sysctls.
//!
//! A netlink socket belongs to the namespace it was created in, whatever thread uses it later:
//! [`Rtnl::open`] enters the namespace only for the `socket()` call, then every request on it
//! is answered by that namespace.
use std::{fs, net::Ipv4Addr, os::fd::AsRawFd as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
    tc::{TcAttribute, TcHandle, TcMessage, TcStats2},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use serde::Serialize;

use crate::system::netns::Netns;

/// The main routing table (what `ip route` shows).
pub const RT_TABLE_MAIN: u32 = 254;
/// The local table (addresses of this namespace, broadcast): never the route *to* a peer.
pub const RT_TABLE_LOCAL: u32 = 255;

/// A kernel dump can be interrupted by a concurrent change (NLM_F_DUMP_INTR): retry it.
const DUMP_ATTEMPTS: usize = 5;
/// The kernel answers in microseconds; a socket that stays silent this long is broken, and
/// the tracer must not hang on it.
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Dump datagrams are at most 32 KiB (the kernel's largest dump skb); twice that is safe.
const RECV_BUF: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    /// Policy routing rules (empty when they could not be read).
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// "veth", "tun", "bridge", ... (IFLA_INFO_KIND); None for devices without one (lo, most
    /// physical NICs).
    pub kind: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier (IFLA_CARRIER, else IFF_LOWER_UP). For a tap: some process has it open.
    pub carrier: bool,
    pub oper_state: String,
    pub mtu: u32,
    pub mac: Option<String>,
    /// ifindex of the bridge (or bond, VRF ...) this link is a port of.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, the peer's ifindex, in the namespace named by `link_netnsid`
    /// (or in this one when that is None).
    pub peer_ifindex: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace, as an nsid of *this* namespace.
    pub link_netnsid: Option<i32>,
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addr {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// unicast, local, broadcast, blackhole, unreachable, prohibit, ...
    pub kind: String,
    /// RTA_PRIORITY: among routes of the same prefix, the lowest wins.
    pub metric: u32,
}

/// A device's root queue discipline and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Qdisc {
    pub ifindex: u32,
    /// `noqueue`, `pfifo_fast`, `fq_codel`, `tbf`, `pfifo`, ...
    pub kind: String,
    /// Packets it dropped since it was created.
    pub drops: u32,
    /// Packets waiting in it now.
    pub qlen: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub mac: Option<String>,
    /// REACHABLE, STALE, DELAY, PROBE, FAILED, INCOMPLETE, NOARP, PERMANENT, NONE.
    pub state: String,
}

impl Snapshot {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, i: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == i)
    }

    pub fn addrs_of(&self, ifindex: u32) -> Vec<&Addr> {
        self.addrs.iter().filter(|a| a.ifindex == ifindex).collect()
    }

    /// The main-table route the kernel would pick for `ip` (longest prefix, then lowest
    /// metric). Policy routing rules are not consulted: E2B uses none.
    pub fn route_to(&self, ip: Ipv4Addr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.table == RT_TABLE_MAIN && prefix_contains(r.dst, r.prefix, ip))
            .min_by_key(|r| (std::cmp::Reverse(r.prefix), r.metric))
    }
}

pub use tracer_model::net::prefix_contains;

/// Everything [`Snapshot`] holds, read from namespace `ns`.
pub fn snapshot(ns: &Netns) -> Result<Snapshot> {
    Rtnl::open(ns)?
        .snapshot()
        .with_context(|| format!("read the network state of {}", ns.label()))
}

/// The nsid `in_ns` uses for `target` (as in IFLA_LINK_NETNSID of links in `in_ns`). None when
/// `in_ns` has assigned it none.
pub fn nsid_of(in_ns: &Netns, target: &Netns) -> Result<Option<i32>> {
    Rtnl::open(in_ns)?.nsid_of(target)
}

/// Reads a sysctl (`net.ipv4.ip_forward`, `net.ipv4.conf.eth0.rp_filter`) as namespace `ns`
/// sees it. The /proc/sys/net tree is resolved against the namespace of the *reading thread*,
/// so it is read while this thread is inside `ns` (the `sysctl_follows_the_thread` test checks
/// that on the running kernel).
pub fn sysctl(ns: &Netns, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    let _inside = ns.enter()?;
    let text = fs::read_to_string(&path).with_context(|| format!("read {key} in {}", ns.label()))?;
    Ok(text.trim().to_string())
}

/// `net.ipv4.conf.eth0.rp_filter` → `/proc/sys/net/ipv4/conf/eth0/rp_filter`. A key with
/// slashes is taken as a path already (sysctl's way to name devices with dots: `eth0.100`).
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        bail!("{key:?} is not a sysctl name");
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// A NETLINK_ROUTE socket bound to one namespace. Reuse it for several requests: opening one
/// costs two setns calls.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    label: String,
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

    fn request(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
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

fn is_errno(err: &anyhow::Error, errno: i32) -> bool {
    errno_of(err) == Some(errno)
}

/// The errno a netlink request was refused with, if that is what the error is.
fn errno_of(err: &anyhow::Error) -> Option<i32> {
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
struct Replies {
    dump: bool,
    messages: Vec<RouteNetlinkMessage>,
    done: bool,
    interrupted: bool,
}

impl Replies {
    /// Takes in one datagram (possibly several messages). Messages of other requests (late
    /// answers to an earlier, abandoned one) are skipped.
    fn absorb(&mut self, datagram: &[u8], seq: u32) -> Result<()> {
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

/// One policy routing rule, as far as the route of a locally made connection depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub priority: u32,
    pub dst: Option<(Ipv4Addr, u8)>,
    pub src: Option<(Ipv4Addr, u8)>,
    /// Matches the tracer cannot evaluate for a given connection (iif, oif, fwmark, ports,
    /// uid ranges ...): the rule may or may not apply.
    pub conditional: bool,
    pub table: u32,
    /// `lookup`, `blackhole`, `unreachable`, `prohibit`, `goto`, `nop`.
    pub action: String,
}

impl Rule {
    /// As `ip rule` prints it.
    pub fn text(&self) -> String {
        let mut s = format!("{}:", self.priority);
        match self.src {
            Some((a, p)) => s += &format!(" from {a}/{p}"),
            None => s += " from all",
        }
        if let Some((a, p)) = self.dst {
            s += &format!(" to {a}/{p}");
        }
        if self.conditional {
            s += " (and more matches)";
        }
        match self.action.as_str() {
            "lookup" => s += &format!(" lookup {}", table_name(self.table)),
            other => s += &format!(" {other}"),
        }
        s
    }
}

/// `main`, `local`, `default`, or the number.
pub fn table_name(t: u32) -> String {
    match t {
        RT_TABLE_MAIN => "main".into(),
        RT_TABLE_LOCAL => "local".into(),
        253 => "default".into(),
        n => n.to_string(),
    }
}

pub fn rule_from(msg: &RuleMessage) -> Option<Rule> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut r = Rule {
        priority: 0,
        dst: None,
        src: None,
        conditional: false,
        table: u32::from(msg.header.table),
        action: match msg.header.action {
            RuleAction::ToTable => "lookup",
            RuleAction::Goto => "goto",
            RuleAction::Nop => "nop",
            RuleAction::Blackhole => "blackhole",
            RuleAction::Unreachable => "unreachable",
            RuleAction::Prohibit => "prohibit",
            _ => "other",
        }
        .into(),
    };
    let v4 = |a: &std::net::IpAddr| match a {
        std::net::IpAddr::V4(v) => Some(*v),
        _ => None,
    };
    for attr in &msg.attributes {
        match attr {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Destination(a) => r.dst = v4(a).map(|a| (a, msg.header.dst_len)),
            RuleAttribute::Source(a) => r.src = v4(a).map(|a| (a, msg.header.src_len)),
            RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::UidRange(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_)
            | RuleAttribute::TunId(_) => r.conditional = true,
            _ => {}
        }
    }
    if msg.header.tos != 0 {
        r.conditional = true;
    }
    Some(r)
}

/// What refuses to route a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker<'a> {
    /// A policy rule whose action is blackhole/unreachable/prohibit.
    Rule(&'a Rule),
    /// A blackhole/unreachable/prohibit route, reached through this rule.
    Route(&'a Route, &'a Rule),
}

impl Blocker<'_> {
    /// As `ip rule`/`ip route` would name it.
    pub fn text(&self) -> String {
        match self {
            Self::Rule(r) => format!("policy rule {}", r.text()),
            Self::Route(x, r) => format!(
                "route {} {}/{} in table {} (reached by rule {})",
                x.kind,
                x.dst,
                x.prefix,
                table_name(x.table),
                r.text()
            ),
        }
    }
}

/// Why a connection to `dst` (from `src`) cannot be routed: the first policy rule that
/// applies, and what it leads to. None when it leads to an ordinary route (or nothing
/// decides). Rules with matches the tracer cannot evaluate are passed over.
pub fn route_blocker<'a>(
    rules: &'a [Rule],
    routes: &'a [Route],
    dst: Ipv4Addr,
    src: Option<Ipv4Addr>,
) -> Option<Blocker<'a>> {
    const REFUSING: [&str; 3] = ["blackhole", "unreachable", "prohibit"];
    for r in rules {
        let applies = !r.conditional
            && r.dst.is_none_or(|(a, p)| prefix_contains(a, p, dst))
            && r.src
                .is_none_or(|(a, p)| src.is_none_or(|s| prefix_contains(a, p, s)));
        if !applies {
            continue;
        }
        match r.action.as_str() {
            a if REFUSING.contains(&a) => return Some(Blocker::Rule(r)),
            "lookup" => {
                let best = routes
                    .iter()
                    .filter(|x| x.table == r.table && prefix_contains(x.dst, x.prefix, dst))
                    .min_by_key(|x| (std::cmp::Reverse(x.prefix), x.metric));
                match best {
                    Some(x) if REFUSING.contains(&x.kind.as_str()) => return Some(Blocker::Route(x, r)),
                    Some(_) => return None,
                    None => {}
                }
            }
            _ => {}
        }
    }
    None
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
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_route::link::{InfoKind, State};

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

    fn route(dst: [u8; 4], prefix: u8, table: u32, metric: u32, oif: u32) -> Route {
        Route {
            table,
            dst: dst.into(),
            prefix,
            gateway: None,
            oif: Some(oif),
            kind: "unicast".into(),
            metric,
        }
    }

    #[test]
    fn route_lookup_is_longest_prefix_then_metric_in_main() {
        let s = Snapshot {
            routes: vec![
                route([0, 0, 0, 0], 0, RT_TABLE_MAIN, 0, 1),
                route([10, 11, 0, 0], 16, RT_TABLE_MAIN, 0, 2),
                route([10, 11, 0, 5], 32, RT_TABLE_MAIN, 100, 3),
                route([10, 11, 0, 5], 32, RT_TABLE_MAIN, 10, 4),
                route([10, 11, 0, 6], 32, RT_TABLE_LOCAL, 0, 5),
            ],
            ..Default::default()
        };
        let oif = |ip: [u8; 4]| s.route_to(ip.into()).and_then(|r| r.oif);
        assert_eq!(oif([10, 11, 0, 5]), Some(4));
        assert_eq!(oif([10, 11, 0, 6]), Some(2));
        assert_eq!(oif([192, 168, 1, 1]), Some(1));
        assert_eq!(Snapshot::default().route_to(Ipv4Addr::LOCALHOST), None);
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

    #[test]
    fn sysctl_names_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert!(sysctl_path("net.ipv4..x").is_err());
        assert!(sysctl_path("net/../../etc/passwd").is_err());
    }

    #[test]
    fn prefixes() {
        assert!(prefix_contains([10, 12, 0, 2].into(), 31, [10, 12, 0, 3].into()));
        assert!(!prefix_contains([10, 12, 0, 2].into(), 31, [10, 12, 0, 4].into()));
        assert!(prefix_contains([0, 0, 0, 0].into(), 0, [1, 2, 3, 4].into()));
        assert!(prefix_contains([1, 2, 3, 4].into(), 32, [1, 2, 3, 4].into()));
    }

    /// Root-only: checks against real namespaces that snapshots, nsids and sysctls are read in
    /// the namespace asked for, not the caller's.
    mod live {
        use super::super::*;
        use std::process::Command;

        struct TempNs(String);
        impl TempNs {
            fn new(tag: &str) -> Self {
                let name = format!("h2-{tag}-{}", std::process::id());
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                sh(&["ip", "netns", "add", &name]);
                Self(name)
            }
            fn ns(&self) -> Netns {
                Netns::named(&self.0).unwrap()
            }
        }
        impl Drop for TempNs {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            }
        }
        fn sh(argv: &[&str]) {
            let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{argv:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// Two namespaces joined by a veth pair, as E2B's ns-N and host.
        fn pair(tag: &str) -> (TempNs, TempNs) {
            let (a, b) = (TempNs::new(&format!("{tag}a")), TempNs::new(&format!("{tag}b")));
            sh(&[
                "ip", "-n", &a.0, "link", "add", "veth-9", "type", "veth", "peer", "name", "eth0", "netns",
                &b.0,
            ]);
            sh(&["ip", "-n", &a.0, "addr", "add", "10.12.0.18/31", "dev", "veth-9"]);
            sh(&["ip", "-n", &b.0, "addr", "add", "10.12.0.19/31", "dev", "eth0"]);
            sh(&["ip", "-n", &a.0, "link", "set", "veth-9", "up"]);
            sh(&["ip", "-n", &b.0, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &b.0, "route", "add", "default", "via", "10.12.0.18"]);
            (a, b)
        }

        #[test]
        fn snapshot_and_nsid_find_the_peer_namespace() {
            if !lab::testing::require_root("snapshot_and_nsid_find_the_peer_namespace") {
                return;
            }
            let (host, sbx) = pair("snap");
            let s = snapshot(&sbx.ns()).unwrap();
            let eth0 = s.link("eth0").expect("eth0");
            assert_eq!(eth0.kind.as_deref(), Some("veth"));
            assert!(eth0.up);
            assert_eq!(s.addrs_of(eth0.ifindex)[0].addr, Ipv4Addr::new(10, 12, 0, 19));
            let default = s.route_to(Ipv4Addr::new(10, 11, 0, 9)).expect("default route");
            assert_eq!(
                (default.gateway, default.oif),
                (Some(Ipv4Addr::new(10, 12, 0, 18)), Some(eth0.ifindex))
            );
            assert!(
                s.routes
                    .iter()
                    .any(|r| r.table == RT_TABLE_LOCAL && r.kind == "local"),
                "all tables"
            );
            let nsid = nsid_of(&sbx.ns(), &host.ns()).unwrap();
            assert_eq!(
                nsid, eth0.link_netnsid,
                "the veth's IFLA_LINK_NETNSID names the host namespace"
            );
            let own = Netns::current().unwrap();
            assert_ne!(nsid_of(&sbx.ns(), &own).unwrap(), eth0.link_netnsid);
            let peer = Rtnl::open(&host.ns())
                .unwrap()
                .link(eth0.peer_ifindex.unwrap())
                .unwrap();
            assert_eq!(peer.map(|l| l.name), Some("veth-9".to_string()));
            assert_eq!(Rtnl::open(&host.ns()).unwrap().link(999_999).unwrap(), None);
        }

        #[test]
        fn sysctl_follows_the_thread() {
            if !lab::testing::require_root("sysctl_follows_the_thread") {
                return;
            }
            let (a, b) = pair("sysctl");
            sh(&[
                "ip",
                "netns",
                "exec",
                &a.0,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &b.0,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=0",
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &b.0,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.eth0.rp_filter=2",
            ]);
            // Alternate, so a cached /proc/sys entry of one namespace would show in the other.
            for _ in 0..3 {
                assert_eq!(sysctl(&a.ns(), "net.ipv4.ip_forward").unwrap(), "1");
                assert_eq!(sysctl(&b.ns(), "net.ipv4.ip_forward").unwrap(), "0");
                assert_eq!(sysctl(&b.ns(), "net.ipv4.conf.eth0.rp_filter").unwrap(), "2");
                assert!(
                    sysctl(&a.ns(), "net.ipv4.conf.eth0.rp_filter").is_err(),
                    "no eth0 in a"
                );
                assert_eq!(
                    sysctl(&a.ns(), "net.ipv4.conf.veth-9.rp_filter").unwrap().len(),
                    1
                );
            }
        }
    }
}
