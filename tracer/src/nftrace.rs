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

use anyhow::{Context as _, Result, bail};

use crate::{netns::Netns, path::ExpectedPath, verdict::DropInfo};

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
    use std::io::Write as _;
    let mut child = ns
        .command("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .spawn()
        .context("run nft")?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Kills and reaps the monitor on every path out.
struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fills chain and rule of `d` from nft trace events; the ruleset is unchanged afterwards.
pub fn resolve(ns: &Netns, path: &ExpectedPath, d: &mut DropInfo) {
    match trace_once(ns, path) {
        Ok(Some((table, chain, rule))) => {
            d.table = Some(table);
            d.chain = Some(chain);
            d.rule = Some(rule);
            d.rule_note = Some("named with --nft-trace (a temporary trace table, removed again)".into());
        }
        Ok(None) => {}
        Err(e) => eprintln!("tracer: --nft-trace failed: {e:#}"),
    }
}

fn trace_once(ns: &Netns, path: &ExpectedPath) -> Result<Option<(String, String, String)>> {
    let mut child = ns
        .command("nft")
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
    let host = Netns::named(&path.host_ns.name.clone().unwrap_or_default()).ok();
    let target = SocketAddrV4::new(path.host_ip, path.port);
    std::thread::spawn(move || {
        let _inside = host.as_ref().map(Netns::enter);
        crate::probe::attempt(target)
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
