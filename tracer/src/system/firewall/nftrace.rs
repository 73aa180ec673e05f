//! `--nft-trace`: the one place the tracer changes a ruleset, and only when asked. To name an
//! nft rule that has no counter, it subscribes to nf_tables trace events (netlink group
//! NFNLGRP_NFTRACE) in the namespace of the drop, adds a table of its own that sets `meta
//! nftrace` on this sandbox's envd packets only, makes one connection attempt like the
//! orchestrator's, reads which rule (or chain policy) dropped it, and removes the table again.
//!
//! The table is named after the process (`tracer-nftrace-<pid>`), so two tracers never share
//! one. It is removed by its guard, and by [`cleanup`] on every way out the tracer controls
//! (normal exit, SIGINT, SIGTERM, SIGHUP, SIGQUIT); a run killed with SIGKILL leaves it, and
//! the next run removes what dead runs left ([`remove_stale`]).
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use tracer_model::{
    path::ExpectedPath,
    rule::{RuleName, RuleNote, RuleText},
};

use super::{Rulesets, nft::NftChain};
use crate::{system::connect::ProbeSite, system::netns::Netns, system::tools};

/// Prefix of the tables the tracer adds; the owning process's pid follows.
pub const TABLE_PREFIX: &str = "tracer-nftrace-";
/// How long to wait for the trace of the dropped attempt.
const TRACE_WAIT: Duration = Duration::from_secs(2);

/// This process's table name.
pub fn table_name() -> String {
    format!("{TABLE_PREFIX}{}", std::process::id())
}

/// Tables added and not yet removed: what [`cleanup`] removes on the way out.
static LIVE: Mutex<Vec<Netns>> = Mutex::new(Vec::new());

/// Removes every trace table this process still has (called on every controlled exit; a
/// table whose guard is removing it at the same time is simply gone already).
pub fn cleanup() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for ns in live {
        let name = table_name();
        if let Err(e) = run_nft(&ns, &["delete", "table", "inet", &name], None)
            && !format!("{e:#}").contains("No such file")
        {
            eprintln!(
                "tracer: could not remove the nft trace table {name} in {}: {e:#}",
                ns.label()
            );
        }
    }
}

/// The temporary trace table; removed on drop.
struct TraceTable {
    ns: Netns,
}

impl TraceTable {
    fn add(ns: &Netns, path: &ExpectedPath) -> Result<Self> {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(ns.clone());
        let table = Self { ns: ns.clone() };
        run_nft(ns, &["-f", "-"], Some(&table_rules(path)))?;
        Ok(table)
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        let registered = LIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|n| n.inode == self.ns.inode);
        if !registered {
            // cleanup() removed it already.
            return;
        }
        delete_table(&self.ns, &table_name());
        // Only once it is really gone: an exit meanwhile still removes it.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = live.iter().position(|n| n.inode == self.ns.inode) {
            live.remove(i);
        }
    }
}

/// The trace table: `meta nftrace set 1` on envd packets to and from this sandbox's addresses
/// only, before every other hook function (priority -1000).
pub fn table_rules(path: &ExpectedPath) -> String {
    let (host, guest, port) = (path.host_ip, path.guest_ip, path.port);
    format!(
        "table inet {table} {{\n  chain pre {{\n    type filter hook prerouting priority -1000;\n    ip daddr {{ {host}, {guest} }} tcp dport {port} meta nftrace set 1\n    ip saddr {{ {host}, {guest} }} tcp sport {port} meta nftrace set 1\n  }}\n  chain out {{\n    type filter hook output priority -1000;\n    ip daddr {{ {host}, {guest} }} tcp dport {port} meta nftrace set 1\n  }}\n}}\n",
        table = table_name()
    )
}

fn delete_table(ns: &Netns, name: &str) {
    if let Err(e) = run_nft(ns, &["delete", "table", "inet", name], None) {
        eprintln!(
            "tracer: could not remove the nft trace table {name} in {}: {e:#}",
            ns.label()
        );
    }
}

fn run_nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut command = ns.command("nft");
    command.args(args);
    tools::run_ok(&mut command, stdin.map(str::as_bytes), tools::TOOL_TIMEOUT)
        .with_context(|| format!("nft {}", args.join(" ")))
        .map(drop)
}

/// Removes trace tables left in `ns` by runs that are gone (killed with SIGKILL), with a
/// notice; tables of live tracers are left alone.
pub fn remove_stale(ns: &Netns, rules: &Rulesets) {
    let Some(set) = &rules.nft else { return };
    for t in &set.tables {
        let Some(pid) = t
            .name
            .strip_prefix(TABLE_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if t.family != "inet" || pid == std::process::id() || is_live_tracer(pid) {
            continue;
        }
        eprintln!(
            "tracer: removing nft table inet {} in {}: left by a tracer run (pid {pid}) that is gone",
            t.name,
            ns.label()
        );
        delete_table(ns, &t.name);
    }
}

fn is_live_tracer(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"tracer"))
    })
}

/// The nft rule (or chain policy) that dropped envd packets in `ns`, from the trace of one
/// attempt made from the probe site. None when no trace showed a drop (or the attempt was
/// withheld: it is made only where probes may go).
pub fn resolve(ns: &Netns, site: &ProbeSite, path: &ExpectedPath) -> Option<RuleName> {
    match trace_once(ns, site, path) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("tracer: --nft-trace failed: {e:#}");
            None
        }
    }
}

fn trace_once(ns: &Netns, site: &ProbeSite, path: &ExpectedPath) -> Result<Option<RuleName>> {
    remove_stale(ns, &Rulesets::read(ns));
    // Subscribed before anything is traced: no event of the attempt can be missed.
    let socket = subscribe(ns)?;
    let _table = TraceTable::add(ns, path)?;
    let site = site.clone();
    let attempt = std::thread::spawn(move || site.attempt(crate::system::connect::ATTEMPT_TIMEOUT));
    let deadline = Instant::now() + TRACE_WAIT;
    let mut buf = vec![0u8; 64 * 1024];
    let drop = loop {
        if Instant::now() >= deadline {
            break None;
        }
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("read nft trace events"),
        };
        if let Some(d) = parse_datagram(&buf[..n.min(buf.len())])
            .into_iter()
            .find(TraceEvent::is_drop)
        {
            break Some(d);
        }
    };
    let _ = attempt.join();
    let Some(d) = drop else { return Ok(None) };
    Ok(Some(name_traced(&d, &Rulesets::read(ns))))
}

/// A NETLINK_NETFILTER socket in `ns`, in the nf_tables trace group.
fn subscribe(ns: &Netns) -> Result<Socket> {
    const NFNLGRP_NFTRACE: u32 = 9;
    let mut socket = {
        let _inside = ns.enter()?;
        Socket::new(NETLINK_NETFILTER).context("open a netfilter netlink socket")?
    };
    socket.bind_auto().context("bind the netfilter netlink socket")?;
    socket
        .add_membership(NFNLGRP_NFTRACE)
        .context("subscribe to nf_tables trace events")?;
    crate::system::netstate::set_recv_timeout(&socket, Duration::from_millis(100))?;
    Ok(socket)
}

/// One nf_tables trace event, as far as naming a drop needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// The table's family (`nfgen_family`: 1 inet, 2 ip, 5 netdev ...).
    pub family: u8,
    pub table: String,
    pub chain: String,
    /// NFT_TRACETYPE_*: 1 policy, 2 return, 3 rule.
    pub kind: u32,
    pub handle: Option<u64>,
    /// The verdict code of a rule event (NF_DROP = 0, NF_ACCEPT = 1, negative for jumps ...).
    pub verdict: Option<i32>,
    /// The chain policy of a policy event.
    pub policy: Option<u32>,
}

const NFT_TRACETYPE_POLICY: u32 = 1;
const NFT_TRACETYPE_RULE: u32 = 3;
const NF_DROP: i32 = 0;

impl TraceEvent {
    /// A rule that dropped the packet, or a chain whose drop policy did.
    pub fn is_drop(&self) -> bool {
        match self.kind {
            NFT_TRACETYPE_RULE => self.verdict == Some(NF_DROP),
            NFT_TRACETYPE_POLICY => self.policy == Some(NF_DROP as u32),
            _ => false,
        }
    }

    pub fn family_name(&self) -> &'static str {
        match self.family {
            1 => "inet",
            2 => "ip",
            3 => "arp",
            5 => "netdev",
            7 => "bridge",
            10 => "ip6",
            _ => "?",
        }
    }
}

/// The trace events of one netlink datagram (anything else, or anything malformed, is
/// skipped: this reads what the kernel sends, and must not panic on any input).
pub fn parse_datagram(mut d: &[u8]) -> Vec<TraceEvent> {
    const NLMSG_HDRLEN: usize = 16;
    const NFT_MSG_TRACE: u16 = (10 << 8) | 17;
    let mut out = Vec::new();
    while d.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
        let kind = u16::from_ne_bytes([d[4], d[5]]);
        if len < NLMSG_HDRLEN || len > d.len() {
            break;
        }
        // After the netlink header: struct nfgenmsg (family, version, resource id).
        if kind == NFT_MSG_TRACE
            && len >= NLMSG_HDRLEN + 4
            && let Some(ev) = trace_event(d[NLMSG_HDRLEN], &d[NLMSG_HDRLEN + 4..len])
        {
            out.push(ev);
        }
        d = &d[align4(len).min(d.len())..];
    }
    out
}

fn trace_event(family: u8, attrs: &[u8]) -> Option<TraceEvent> {
    const TABLE: u16 = 1;
    const CHAIN: u16 = 2;
    const RULE_HANDLE: u16 = 3;
    const TYPE: u16 = 4;
    const VERDICT: u16 = 5;
    const POLICY: u16 = 16;
    let mut ev = TraceEvent {
        family,
        table: String::new(),
        chain: String::new(),
        kind: 0,
        handle: None,
        verdict: None,
        policy: None,
    };
    for (t, v) in attributes(attrs) {
        match t {
            TABLE => ev.table = c_string(v),
            CHAIN => ev.chain = c_string(v),
            RULE_HANDLE => ev.handle = Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?)),
            TYPE => ev.kind = be32(v)?,
            VERDICT => {
                ev.verdict = attributes(v)
                    .find(|(t, _)| *t == 1)
                    .and_then(|(_, c)| be32(c))
                    .map(|c| c as i32)
            }
            POLICY => ev.policy = be32(v),
            _ => {}
        }
    }
    (!ev.table.is_empty() && !ev.chain.is_empty()).then_some(ev)
}

/// Netlink attributes: (type without the nested/byte-order flags, payload).
fn attributes(mut d: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if d.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([d[0], d[1]]) as usize;
        let kind = u16::from_ne_bytes([d[2], d[3]]) & 0x3fff;
        if len < 4 || len > d.len() {
            return None;
        }
        let payload = &d[4..len];
        d = &d[align4(len).min(d.len())..];
        Some((kind, payload))
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// The rule named by a traced drop, with its text from the ruleset.
fn name_traced(d: &TraceEvent, rules: &Rulesets) -> RuleName {
    let family = d.family_name();
    let chain: Option<&NftChain> = rules.nft.as_ref().and_then(|n| {
        n.chains
            .iter()
            .find(|c| c.family == family && c.table == d.table && c.name == d.chain)
    });
    let rule = match (d.kind, d.handle) {
        (NFT_TRACETYPE_RULE, Some(handle)) => Some(RuleText::Nft {
            text: chain
                .and_then(|c| c.rules.iter().find(|r| r.handle == handle))
                .map(|r| r.text.clone())
                .unwrap_or_else(|| "?".into()),
            handle,
        }),
        _ => Some(RuleText::NftPolicy {
            chain: d.chain.clone(),
            policy: "drop".into(),
        }),
    };
    RuleName {
        table: Some(format!("{family} {}", d.table)),
        chain: Some(d.chain.clone()),
        rule,
        note: Some(RuleNote::NftTrace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace message as the kernel sends it: nlmsghdr, nfgenmsg, attributes.
    fn message(family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            body.resize(align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((10u16 << 8) | 17).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    fn verdict(code: i32) -> Vec<u8> {
        let mut v = 8u16.to_ne_bytes().to_vec();
        v.extend_from_slice(&1u16.to_ne_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v
    }

    #[test]
    fn a_rule_drop_and_a_policy_drop_are_read() {
        let rule = message(
            2,
            &[
                (1, b"lab-fault\0".to_vec()),
                (2, b"pre\0".to_vec()),
                (3, 2u64.to_be_bytes().to_vec()),
                (4, 3u32.to_be_bytes().to_vec()),
                (0x8000 | 5, verdict(0)),
            ],
        );
        let accept = message(
            1,
            &[
                (1, b"t\0".to_vec()),
                (2, b"c\0".to_vec()),
                (4, 3u32.to_be_bytes().to_vec()),
                (0x8000 | 5, verdict(1)),
            ],
        );
        let policy = message(
            1,
            &[
                (1, b"t\0".to_vec()),
                (2, b"c\0".to_vec()),
                (4, 1u32.to_be_bytes().to_vec()),
                (16, 0u32.to_be_bytes().to_vec()),
            ],
        );
        let events = parse_datagram(&[rule, accept, policy].concat());
        assert_eq!(events.len(), 3);
        assert!(events[0].is_drop() && !events[1].is_drop() && events[2].is_drop());
        assert_eq!(
            (
                events[0].family_name(),
                events[0].table.as_str(),
                events[0].handle
            ),
            ("ip", "lab-fault", Some(2))
        );
    }

    #[test]
    fn malformed_datagrams_yield_nothing() {
        assert!(parse_datagram(&[]).is_empty());
        assert!(parse_datagram(&[0xff; 40]).is_empty());
        let mut m = message(2, &[(1, b"t\0".to_vec()), (2, b"c\0".to_vec())]);
        m.truncate(m.len() - 3);
        assert!(parse_datagram(&m).is_empty());
    }

    #[test]
    fn the_table_matches_this_sandbox_only() {
        let p = tracer_model::fixtures::path();
        let t = table_rules(&p);
        assert!(t.contains(&format!("table inet {TABLE_PREFIX}{}", std::process::id())));
        assert!(t.contains("ip daddr { 10.11.0.1, 169.254.0.21 } tcp dport 49983"));
        assert!(!t.lines().any(|l| l.trim_start().starts_with("tcp dport")), "{t}");
    }
}
