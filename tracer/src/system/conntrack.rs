//! The conntrack table of a namespace, read over ctnetlink (deep mode: the flow's entry at the
//! verdict). Read-only: one dump request, bounded by the netlink receive timeout.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use serde::{Deserialize, Serialize};

use crate::{system::netns::Netns, system::netstate};

/// One conntrack entry, as `conntrack -L` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtEntry {
    pub orig: CtTuple,
    pub reply: CtTuple,
    /// `ip_conntrack_status` bit names (SEEN_REPLY, ASSURED, CONFIRMED, DST_NAT ...).
    pub status: Vec<String>,
    /// TCP state (SYN_SENT, SYN_RECV, ESTABLISHED ...).
    pub tcp_state: Option<String>,
    pub timeout_s: Option<u32>,
    pub mark: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtTuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl CtEntry {
    /// `tcp SYN_RECV src=.. dst=.. sport=.. dport=.. src=.. ... [ASSURED] timeout=58`.
    pub fn text(&self) -> String {
        let t = |t: &CtTuple| format!("src={} dst={} sport={} dport={}", t.src, t.dst, t.sport, t.dport);
        let mut s = format!(
            "tcp {} {} {}",
            self.tcp_state.as_deref().unwrap_or("?"),
            t(&self.orig),
            t(&self.reply)
        );
        if !self.status.is_empty() {
            s += &format!(" [{}]", self.status.join(","));
        }
        if let Some(m) = self.mark {
            s += &format!(" mark={m}");
        }
        if let Some(to) = self.timeout_s {
            s += &format!(" timeout={to}");
        }
        s
    }
}

/// The entry of namespace `ns` whose original tuple is `orig` (the flow as its first packet
/// had it, before any NAT), if there is one: one exact request, never a dump of the table
/// (a busy host's holds many thousands).
pub fn flow_entry(ns: &Netns, orig: &CtTuple) -> Result<Option<CtEntry>> {
    let socket = {
        let _inside = ns.enter()?;
        Socket::new(NETLINK_NETFILTER).context("open a ctnetlink socket")?
    };
    let mut socket = socket;
    socket.bind_auto().context("bind the ctnetlink socket")?;
    socket.connect(&SocketAddr::new(0, 0))?;
    netstate::set_recv_timeout(&socket, netstate::RECV_TIMEOUT)?;
    let header = NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
    let get = ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(orig))]);
    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(header, get)),
    );
    packet.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket
        .send(&bytes, 0)
        .with_context(|| format!("send a ctnetlink request in {}", ns.label()))?;
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(1 << 16);
    // The entry, then the ack; or an error (ENOENT: no such entry). Bounded by the receive
    // timeout and a few datagrams.
    for _ in 0..4 {
        buf.clear();
        socket
            .recv(&mut buf, 0)
            .with_context(|| format!("ctnetlink recv in {}", ns.label()))?;
        if parse_datagram(&buf, &mut out)? {
            break;
        }
    }
    Ok(out.pop())
}

/// A tuple as ctnetlink attributes.
fn tuple_attrs(t: &CtTuple) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(IpAddr::V4(t.src)),
            IPTuple::DestinationAddress(IpAddr::V4(t.dst)),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::SourcePort(t.sport),
            ProtoTuple::DestinationPort(t.dport),
        ]),
    ]
}

/// Parses one reply datagram into `out`; true at the end of the reply (done, the ack, or
/// "no such entry").
pub fn parse_datagram(mut buf: &[u8], out: &mut Vec<CtEntry>) -> Result<bool> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            bail!("malformed ctnetlink message ({len} bytes of {})", buf.len());
        }
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[..len])
            .map_err(|e| anyhow::anyhow!("ctnetlink message: {e}"))?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => match e.code.map(|c| c.get().saturating_neg()) {
                None | Some(libc::ENOENT) => return Ok(true),
                Some(errno) => bail!("ctnetlink: {}", std::io::Error::from_raw_os_error(errno)),
            },
            NetlinkPayload::InnerMessage(m) => {
                if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = m.inner
                    && let Some(e) = entry(&attrs)
                {
                    out.push(e);
                }
            }
            _ => {}
        }
        buf = &buf[(len + 3) & !3..];
    }
    Ok(false)
}

fn entry(attrs: &[ConntrackAttribute]) -> Option<CtEntry> {
    let (mut orig, mut reply, mut e) = (
        None,
        None,
        CtEntry {
            orig: CtTuple::empty(),
            reply: CtTuple::empty(),
            status: Vec::new(),
            tcp_state: None,
            timeout_s: None,
            mark: None,
        },
    );
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            ConntrackAttribute::CtaStatus(s) => {
                let ct = tracer_model::deep::CtRef {
                    status: s.bits(),
                    ..Default::default()
                };
                e.status = ct.status_names().into_iter().map(String::from).collect();
            }
            ConntrackAttribute::CtaTimeout(t) => e.timeout_s = Some(*t),
            ConntrackAttribute::CtaMark(m) => e.mark = Some(*m),
            ConntrackAttribute::CtaProtoInfo(p) => e.tcp_state = tcp_state(p),
            _ => {}
        }
    }
    e.orig = orig?;
    e.reply = reply?;
    Some(e)
}

impl CtTuple {
    fn empty() -> Self {
        Self {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            sport: 0,
            dport: 0,
        }
    }
}

/// A TCP/IPv4 tuple; None for other protocols.
fn tuple(parts: &[Tuple]) -> Option<CtTuple> {
    let mut t = CtTuple::empty();
    let mut tcp = false;
    for p in parts {
        match p {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(IpAddr::V4(a)) => t.src = *a,
                        IPTuple::DestinationAddress(IpAddr::V4(a)) => t.dst = *a,
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(Protocol::Tcp) => tcp = true,
                        ProtoTuple::SourcePort(s) => t.sport = *s,
                        ProtoTuple::DestinationPort(d) => t.dport = *d,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    tcp.then_some(t)
}

fn tcp_state(p: &[ProtoInfo]) -> Option<String> {
    const NAMES: [&str; 10] = [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "SYN_SENT2",
    ];
    p.iter().find_map(|i| match i {
        ProtoInfo::TCP(parts) => parts.iter().find_map(|x| match x {
            ProtoInfoTCP::State(s) => Some(
                NAMES
                    .get(*s as usize)
                    .map_or(format!("state#{s}"), |n| n.to_string()),
            ),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_netfilter::conntrack::Status;

    use super::*;

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<Tuple> {
        tuple_attrs(&CtTuple {
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
        })
    }

    fn datagram(msgs: Vec<NetlinkPayload<NetfilterMessage>>) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in msgs {
            let mut m = NetlinkMessage::new(NetlinkHeader::default(), payload);
            m.finalize();
            let mut b = vec![0; m.buffer_len()];
            m.serialize(&mut b);
            out.extend(b);
        }
        out
    }

    #[test]
    fn a_reply_becomes_an_entry_and_ends_at_the_ack() {
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple([10, 12, 0, 2], [10, 11, 0, 1], 50000, 49983)),
            ConntrackAttribute::CtaTupleReply(tuple([169, 254, 0, 21], [10, 12, 0, 2], 49983, 50000)),
            ConntrackAttribute::CtaStatus(Status::from_bits_retain((1 << 1) | (1 << 3) | (1 << 5))),
            ConntrackAttribute::CtaTimeout(59),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![ProtoInfoTCP::State(2)])]),
        ];
        let msg = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            ConntrackMessage::New(attrs),
        );
        let bytes = datagram(vec![NetlinkPayload::InnerMessage(msg)]);
        let mut out = Vec::new();
        assert!(
            !parse_datagram(&bytes, &mut out).unwrap(),
            "the ack is still to come"
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].text(),
            "tcp SYN_RECV src=10.12.0.2 dst=10.11.0.1 sport=50000 dport=49983 src=169.254.0.21 dst=10.12.0.2 sport=49983 dport=50000 [SEEN_REPLY,CONFIRMED,DST_NAT] timeout=59"
        );
        assert!(
            parse_datagram(&bytes[..bytes.len() - 4], &mut out).is_err(),
            "a cut message is an error"
        );
        // The ack ends the reply; "no such entry" is an empty answer; other errors are errors.
        let err = |code: i32| {
            let mut e = netlink_packet_core::ErrorMessage::default();
            e.code = std::num::NonZeroI32::new(code);
            datagram(vec![NetlinkPayload::Error(e)])
        };
        assert!(parse_datagram(&err(0), &mut out).unwrap());
        assert!(parse_datagram(&err(-libc::ENOENT), &mut out).unwrap());
        assert!(parse_datagram(&err(-libc::EPERM), &mut out).is_err());
        assert!(parse_datagram(&err(i32::MIN), &mut out).is_err());
        assert_eq!(out.len(), 1);
    }
}
