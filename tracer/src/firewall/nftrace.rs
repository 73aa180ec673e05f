//! `--nft-trace`: the one place the tracer changes a ruleset, and only when asked. To name an
//! nft rule that has no counter, it adds a table that sets `meta nftrace` on envd packets in
//! the namespace of the drop, reads `nft monitor trace` while one probe attempt runs, and
//! removes the table again — also on Ctrl-C or a panic (the guard's Drop).
use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddrV4,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use tracer_model::{
    path::ExpectedPath,
    rule::{RuleName, RuleNote, RuleText},
};

use crate::netns::Netns;

/// Name of the table the tracer adds (and removes).
pub const TABLE: &str = "tracer-nftrace";

/// The temporary trace table; removed on drop.
struct TraceTable {
    ns: Netns,
}

impl TraceTable {
    fn add(ns: &Netns, port: u16) -> Result<Self> {
        let rules = format!(
            "table inet {TABLE} {{\n  chain pre {{ type filter hook prerouting priority -1000; tcp dport {port} meta nftrace set 1; tcp sport {port} meta nftrace set 1; }}\n  chain out {{ type filter hook output priority -1000; tcp dport {port} meta nftrace set 1; }}\n}}\n"
        );
        run_nft(ns, &["-f", "-"], Some(&rules))?;
        Ok(Self { ns: ns.clone() })
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        if let Err(e) = run_nft(&self.ns, &["delete", "table", "inet", TABLE], None) {
            eprintln!(
                "tracer: could not remove the nft trace table {TABLE} in {}: {e:#}",
                self.ns.label()
            );
        }
    }
}

fn run_nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut command = ns.command("nft");
    command.args(args);
    crate::cmd::run_ok(&mut command, stdin.map(str::as_bytes), crate::cmd::TOOL_TIMEOUT)
        .with_context(|| format!("nft {}", args.join(" ")))
        .map(drop)
}

/// Kills and reaps the monitor on every path out.
struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The nft rule that dropped envd packets in `ns`, from nft trace events of one attempt made
/// from `host` (the ruleset is unchanged afterwards). None when no trace named a drop.
pub fn resolve(ns: &Netns, host: &Netns, path: &ExpectedPath) -> Option<RuleName> {
    match trace_once(ns, host, path) {
        Ok(Some((table, chain, rule))) => Some(RuleName {
            table: Some(table),
            chain: Some(chain),
            rule: Some(RuleText::from_nft_listing(&rule)),
            note: Some(RuleNote::NftTrace),
        }),
        Ok(None) => None,
        Err(e) => {
            eprintln!("tracer: --nft-trace failed: {e:#}");
            None
        }
    }
}

fn trace_once(ns: &Netns, host: &Netns, path: &ExpectedPath) -> Result<Option<(String, String, String)>> {
    let mut monitor = ns.command("nft");
    crate::cmd::die_with_parent(&mut monitor);
    let mut child = monitor
        .args(["-a", "monitor", "trace"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start nft monitor trace")?;
    let stdout = child.stdout.take().context("monitor stdout")?;
    let _monitor = Monitor(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let _table = TraceTable::add(ns, path.port)?;
    // One attempt like the orchestrator's, from the host side.
    let host = host.clone();
    let target = SocketAddrV4::new(path.host_ip, path.port);
    std::thread::spawn(move || {
        let _inside = host.enter();
        crate::connect::attempt(target)
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(found) = parse_drop(&line) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// `trace id 3c0a ip lab-fault pre rule tcp dport 49983 drop (verdict drop)` →
/// ("ip lab-fault", "pre", "tcp dport 49983 drop # handle N").
pub fn parse_drop(line: &str) -> Option<(String, String, String)> {
    let rest = line.strip_prefix("trace id ")?;
    let mut words = rest.split_whitespace();
    let _id = words.next()?;
    let (family, table, chain) = (words.next()?, words.next()?, words.next()?);
    let after = rest.split_once(&format!(" {chain} rule "))?.1;
    let verdict = after.rsplit_once("(verdict ")?.1.trim_end_matches(')');
    if !verdict.starts_with("drop") && !verdict.starts_with("reject") {
        return None;
    }
    let rule = after.rsplit_once(" (verdict ")?.0.trim().to_string();
    Some((format!("{family} {table}"), chain.to_string(), rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_drop_verdict_line() {
        let l = "trace id 3c0a9e5f ip lab-fault pre rule tcp dport 49983 drop # handle 2 (verdict drop)";
        let (t, c, r) = parse_drop(l).unwrap();
        assert_eq!(
            (t.as_str(), c.as_str(), r.as_str()),
            ("ip lab-fault", "pre", "tcp dport 49983 drop # handle 2")
        );
    }

    #[test]
    fn ignores_accepts_and_packet_lines() {
        assert!(parse_drop("trace id 3c0a ip t c packet: iif \"eth0\" ip saddr 10.12.0.2").is_none());
        assert!(parse_drop("trace id 3c0a inet slot-firewall PREROUTE_FILTER rule ct state established accept (verdict accept)").is_none());
    }
}
