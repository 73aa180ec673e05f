//! The namespace's routing and traffic-control state, read over rtnetlink for the engine's
//! inventory: links, addresses, routes of every table, policy rules with every selector,
//! neighbours, queue disciplines (root, ingress, clsact) and the classic filters on them.
use std::{collections::HashMap, net::IpAddr};

use anyhow::Result;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp},
    rule::{RuleAction, RuleAttribute, RuleMessage},
    tc::{
        TcActionAttribute, TcActionOption, TcAttribute, TcFilterBpfOption, TcFilterU32Option, TcHandle,
        TcMessage, TcMirrorActionType, TcOption,
    },
};
use tracer_model::{
    engine::inventory::{Addr, Link, Neighbour, PolicyRule, Qdisc, Route, TcFilter},
    tcp::nud_bits,
};

use crate::system::netstate::{self, Rtnl};

/// What rtnetlink says about one namespace.
pub struct Read {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub rules: Vec<PolicyRule>,
    pub neighbours: Vec<Neighbour>,
    pub qdiscs: Vec<Qdisc>,
    pub filters: Vec<TcFilter>,
    /// XDP program id per ifindex (IFLA_XDP).
    pub xdp: HashMap<u32, u32>,
}

pub fn read(rtnl: &mut Rtnl) -> Result<Read> {
    let snap = rtnl.snapshot()?;
    let names: HashMap<u32, String> = snap.links.iter().map(|l| (l.ifindex, l.name.clone())).collect();
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("ifindex {i}"));
    let links = snap
        .links
        .iter()
        .map(|l| Link {
            ifindex: l.ifindex,
            name: l.name.clone(),
            kind: l.kind.clone(),
            up: l.up,
            carrier: l.carrier,
            mtu: l.mtu,
            mac: l.mac.clone(),
            master: l.master,
        })
        .collect();
    let addrs = snap
        .addrs
        .iter()
        .map(|a| Addr {
            ifindex: a.ifindex,
            device: name(a.ifindex),
            addr: a.addr,
            prefix: a.prefix,
        })
        .collect();
    let routes = snap
        .routes
        .iter()
        .map(|r| Route {
            table: r.table,
            dst: r.dst,
            prefix: r.prefix,
            kind: r.kind.clone(),
            gateway: r.gateway,
            oif: r.oif,
            device: r.oif.map(name),
            metric: r.metric,
            prefsrc: None,
        })
        .collect();
    let neighbours = snap
        .neighbours
        .iter()
        .map(|n| Neighbour {
            ifindex: n.ifindex,
            device: name(n.ifindex),
            addr: n.addr,
            mac: n.mac.clone(),
            state: nud_bits(&n.state),
        })
        .collect();
    let mut rule_msg = RuleMessage::default();
    rule_msg.header.family = AddressFamily::Inet;
    let rules = rtnl
        .dump_messages(RouteNetlinkMessage::GetRule(rule_msg))
        .unwrap_or_default()
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRule(r) => policy_rule(r),
            _ => None,
        })
        .collect();
    let qdiscs: Vec<Qdisc> = rtnl
        .dump_messages(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()))
        .unwrap_or_default()
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) => qdisc(q, &name),
            _ => None,
        })
        .collect();
    let mut filters = Vec::new();
    for q in qdiscs
        .iter()
        .filter(|q| q.kind == "clsact" || q.kind == "ingress")
    {
        for (direction, minor) in [("ingress", TcHandle::MIN_INGRESS), ("egress", 0xfff3)] {
            if q.kind == "ingress" && direction == "egress" {
                continue;
            }
            filters.extend(read_filters(rtnl, q.ifindex, minor, direction, &name));
        }
    }
    let xdp = rtnl
        .dump_messages(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .unwrap_or_default()
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => xdp_prog(l).map(|id| (l.header.index, id)),
            _ => None,
        })
        .collect();
    Ok(Read {
        links,
        addrs,
        routes,
        rules,
        neighbours,
        qdiscs,
        filters,
        xdp,
    })
}

/// The XDP program on a link (IFLA_XDP), if any.
fn xdp_prog(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(x) => x.iter().find_map(|x| match x {
            LinkXdp::ProgId(id) | LinkXdp::SkbProgId(id) | LinkXdp::DrvProgId(id) if *id != 0 => Some(*id),
            _ => None,
        }),
        _ => None,
    })
}

fn read_filters(
    rtnl: &mut Rtnl,
    ifindex: u32,
    minor: u16,
    direction: &str,
    name: &impl Fn(u32) -> String,
) -> Vec<TcFilter> {
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    msg.header.parent = TcHandle { major: 0xffff, minor };
    rtnl.dump_messages(RouteNetlinkMessage::GetTrafficFilter(msg))
        .unwrap_or_default()
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => filter(f, direction, name),
            _ => None,
        })
        .collect()
}

fn filter(f: &TcMessage, direction: &str, name: &impl Fn(u32) -> String) -> Option<TcFilter> {
    let ifindex = u32::try_from(f.header.index).ok()?;
    // `info` holds the priority (high 16 bits) and the protocol.
    let priority = (f.header.info >> 16) as u16;
    let mut out = TcFilter {
        ifindex,
        device: name(ifindex),
        direction: direction.into(),
        kind: String::new(),
        priority,
        handle: u32::from(f.header.handle.major) << 16 | u32::from(f.header.handle.minor),
        actions: Vec::new(),
        program: None,
    };
    for a in &f.attributes {
        match a {
            TcAttribute::Kind(k) => out.kind = k.clone(),
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::U32(TcFilterU32Option::Action(acts)) => {
                            out.actions
                                .extend(acts.iter().filter_map(|a| action(&a.attributes, name)));
                        }
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => out.program = Some(*id),
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => out.actions.push(format!("bpf {n}")),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // The kernel also reports a filter's chain header without a kind: skip it.
    (!out.kind.is_empty()).then_some(out)
}

/// What an action does, as `tc` prints it.
fn action(attrs: &[TcActionAttribute], name: &impl Fn(u32) -> String) -> Option<String> {
    let kind = attrs.iter().find_map(|a| match a {
        TcActionAttribute::Kind(k) => Some(k.clone()),
        _ => None,
    })?;
    let detail = attrs.iter().find_map(|a| match a {
        TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcActionOption::Mirror(netlink_packet_route::tc::TcActionMirrorOption::Parms(p)) => {
                Some(format!(
                    "{} dev {}",
                    match p.eaction {
                        TcMirrorActionType::EgressRedir => "egress redirect",
                        TcMirrorActionType::EgressMirror => "egress mirror",
                        TcMirrorActionType::IngressRedir => "ingress redirect",
                        TcMirrorActionType::IngressMirror => "ingress mirror",
                        _ => "mirror",
                    },
                    name(p.ifindex)
                ))
            }
            _ => None,
        }),
        _ => None,
    });
    Some(match detail {
        Some(d) => format!("{kind} {d}"),
        None => kind,
    })
}

fn qdisc(q: &TcMessage, name: &impl Fn(u32) -> String) -> Option<Qdisc> {
    let ifindex = u32::try_from(q.header.index).ok()?;
    let parent = match q.header.parent {
        TcHandle::ROOT => "root".to_string(),
        p if p.major == 0xffff && p.minor == 0xfff1 => "ingress".into(),
        p => format!("{:x}:{:x}", p.major, p.minor),
    };
    let mut out = Qdisc {
        ifindex,
        device: name(ifindex),
        kind: String::new(),
        parent,
        handle: format!("{:x}:", q.header.handle.major),
        drops: 0,
        qlen: 0,
        limit: None,
    };
    for a in &q.attributes {
        match a {
            TcAttribute::Kind(k) => out.kind = k.clone(),
            TcAttribute::Stats(s) => (out.drops, out.qlen) = (s.drops, s.qlen),
            _ => {}
        }
    }
    Some(out)
}

fn policy_rule(msg: &RuleMessage) -> Option<PolicyRule> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let v4 = |a: &IpAddr| match a {
        IpAddr::V4(v) => Some(*v),
        _ => None,
    };
    let mut r = PolicyRule {
        table: Some(u32::from(msg.header.table)),
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
        tos: (msg.header.tos != 0).then_some(msg.header.tos),
        invert: msg.header.flags.bits() & 0x2 != 0,
        ..Default::default()
    };
    let mut fwmask = u32::MAX;
    for a in &msg.attributes {
        match a {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = Some(*t),
            RuleAttribute::Destination(a) => r.dst = v4(a).map(|a| (a, msg.header.dst_len)),
            RuleAttribute::Source(a) => r.src = v4(a).map(|a| (a, msg.header.src_len)),
            RuleAttribute::Iifname(n) => r.iif = Some(n.clone()),
            RuleAttribute::Oifname(n) => r.oif = Some(n.clone()),
            RuleAttribute::FwMark(m) => r.fwmark = Some((*m, fwmask)),
            RuleAttribute::FwMask(m) => fwmask = *m,
            RuleAttribute::UidRange(u) => r.uid_range = Some((u.start, u.end)),
            RuleAttribute::IpProtocol(p) => r.ipproto = Some(i32::from(*p) as u8),
            RuleAttribute::SourcePortRange(p) => r.sport = Some((p.start, p.end)),
            RuleAttribute::DestinationPortRange(p) => r.dport = Some((p.start, p.end)),
            _ => {}
        }
    }
    if let Some((m, _)) = r.fwmark {
        r.fwmark = Some((m, fwmask));
    }
    if r.action != "lookup" {
        r.table = None;
    }
    r.text = rule_text(&r);
    Some(r)
}

/// As `ip rule` prints it.
fn rule_text(r: &PolicyRule) -> String {
    let mut s = format!("{}:", r.priority);
    if r.invert {
        s += " not";
    }
    match r.src {
        Some((a, p)) if p > 0 => s += &format!(" from {a}/{p}"),
        _ => s += " from all",
    }
    if let Some((a, p)) = r.dst {
        s += &format!(" to {a}/{p}");
    }
    if let Some((m, mask)) = r.fwmark {
        s += &format!(" fwmark {m:#x}");
        if mask != u32::MAX {
            s += &format!("/{mask:#x}");
        }
    }
    if let Some(i) = &r.iif {
        s += &format!(" iif {i}");
    }
    if let Some(o) = &r.oif {
        s += &format!(" oif {o}");
    }
    if let Some((a, b)) = r.uid_range {
        s += &format!(" uidrange {a}-{b}");
    }
    if let Some(p) = r.ipproto {
        s += &format!(
            " ipproto {}",
            if p == 6 { "tcp".to_string() } else { p.to_string() }
        );
    }
    for (word, range) in [("sport", r.sport), ("dport", r.dport)] {
        match range {
            Some((a, b)) if a == b => s += &format!(" {word} {a}"),
            Some((a, b)) => s += &format!(" {word} {a}-{b}"),
            None => {}
        }
    }
    if let Some(t) = r.tos {
        s += &format!(" tos {t:#x}");
    }
    match r.table {
        Some(t) => s += &format!(" lookup {}", netstate::table_name(t)),
        None => s += &format!(" {}", r.action),
    }
    s
}
