//! `cargo xtask bench watch`: `tracer watch` over a lab of many sandboxes, with the
//! orchestrator stand-in looping over all of them. Three numbers an operator asks before
//! leaving it on every node:
//!
//! 1. idle cost: throughput through one sandbox's path, watcher attached vs not, alternating
//!    rounds in one run (ratio), with the watcher's own CPU and RSS;
//! 2. first failed attempt → incident printed, for sandboxes broken one at a time while the
//!    orchestrator retries them every ~55 ms (median, max);
//! 3. a failure storm: every sandbox broken at once: incidents produced, how the zoom-in
//!    queue behaves, CPU, RSS, events lost.
//!
//! A benchmark, not a test: it asserts nothing.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;
use lab::{Fault, Lab, LabConfig};
use serde_json::Value;

use crate::{
    bench::{IperfServer, iperf_round, median},
    setup, tasks,
};

#[derive(Args)]
pub struct WatchBenchArgs {
    /// Sandboxes in the lab.
    #[arg(long, default_value_t = 200)]
    pub sandboxes: u32,
    /// Rounds per configuration for the idle cost (watcher / no watcher alternate).
    #[arg(long, default_value_t = 6)]
    pub rounds: u32,
    /// Seconds of iperf3 per round.
    #[arg(long, default_value_t = 2)]
    pub seconds: u32,
    /// Sandboxes broken one at a time for the incident latency.
    #[arg(long, default_value_t = 10)]
    pub broken: usize,
    /// Which phases to run: idle, latency, storm (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "idle,latency,storm")]
    pub phases: Vec<String>,
    /// Which failure storms: `slots` (a rule in every sandbox's namespace: as many places as
    /// sandboxes) and `node` (one host-side rule that breaks every sandbox).
    #[arg(long, value_delimiter = ',', default_value = "slots,node")]
    pub storms: Vec<String>,
}

pub fn run(args: WatchBenchArgs) -> Result<()> {
    setup::run()?;
    let tracer = tasks::build(true)?;
    eprintln!("bench watch: building a lab of {} sandboxes", args.sandboxes);
    let started = Instant::now();
    let mut lab = Lab::up(LabConfig {
        sandboxes: args.sandboxes,
        ..Default::default()
    })?;
    eprintln!("bench watch: lab up in {:.0} s", started.elapsed().as_secs_f64());
    let server = IperfServer::start()?;
    let result = phases(&args, &mut lab, &tracer);
    drop(server);
    result?;
    lab.down()
}

fn phases(args: &WatchBenchArgs, lab: &mut Lab, tracer: &std::path::Path) -> Result<()> {
    let on = |p: &str| args.phases.iter().any(|x| x == p);
    if on("idle") {
        idle(args, lab, tracer)?;
    }
    if on("latency") {
        latency(args, lab, tracer)?;
    }
    if on("storm") {
        for kind in &args.storms {
            storm(lab, tracer, kind)?;
        }
    }
    Ok(())
}

/// Watcher attached vs not, the stand-in looping over every (healthy) sandbox throughout.
fn idle(args: &WatchBenchArgs, lab: &Lab, tracer: &std::path::Path) -> Result<()> {
    let orchestrator = lab.orchestrator_loop();
    let (mut off, mut on, mut cpu, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..args.rounds {
        eprintln!("bench watch: idle round {}/{}", r + 1, args.rounds);
        off.push(iperf_round(args.seconds, 50, lab)?);
        let w = Watcher::start(tracer, &[])?;
        let (cpu0, t0) = (w.cpu_s(), Instant::now());
        on.push(iperf_round(args.seconds, 50, lab)?);
        cpu.push((w.cpu_s() - cpu0) / t0.elapsed().as_secs_f64() * 100.0);
        rss.push(w.rss_mb());
        w.stop();
    }
    let rounds = orchestrator.stop()?;
    let ratio = median(off.iter().zip(&on).map(|(a, b)| b.gbps / a.gbps).collect());
    let g = |v: &[crate::bench::Round]| median(v.iter().map(|x| x.gbps).collect());
    let c = |v: &[crate::bench::Round]| median(v.iter().map(|x| x.cpu_ms_per_gbit).collect());
    println!(
        "bench watch: {} sandboxes, the stand-in looping over all of them ({rounds} rounds)",
        args.sandboxes
    );
    println!(
        "  idle: throughput through one sandbox's path {:.2} Gbit/s without, {:.2} with the watcher; median of paired ratios {ratio:.3}",
        g(&off),
        g(&on)
    );
    println!(
        "  idle: CPU per Gbit {:.1} ms without, {:.1} ms with ({:+.1} %); watcher CPU {:.1} % of a core (median), RSS {:.0} MB (max)",
        c(&off),
        c(&on),
        (c(&on) / c(&off) - 1.0) * 100.0,
        median(cpu),
        rss.iter().copied().fold(0.0, f64::max)
    );
    Ok(())
}

/// Sandboxes broken one at a time while the stand-in keeps looping; each broken one is also
/// retried every ~55 ms as the orchestrator does during a sandbox's start.
fn latency(args: &WatchBenchArgs, lab: &mut Lab, tracer: &std::path::Path) -> Result<()> {
    let w = Watcher::start(tracer, &[])?;
    let orchestrator = lab.orchestrator_loop();
    let ids = lab.sandbox_ids();
    let ips = lab.host_ips();
    let mut lat = Vec::new();
    for k in 0..args.broken.min(ids.len().saturating_sub(1)) {
        let i = 1 + k * (ids.len() - 1) / args.broken.max(1);
        lab.break_fault(i, Fault::ForwardDrop)?;
        let retry = retry_for_10s(ips[i]);
        let v = w.next(
            &|v| v["type"] == "incident" && v["sandbox"]["id"] == ids[i].as_str(),
            Duration::from_secs(30),
        );
        let _ = retry.join();
        match v {
            Some((v, printed_unix_ms)) => {
                let first = unix_ms(v["first_failure"].as_str().unwrap_or(""));
                lat.push(printed_unix_ms - first);
            }
            None => eprintln!("bench watch: no incident for sandbox {}", ids[i]),
        }
        lab.heal(i)?;
    }
    orchestrator.stop()?;
    w.stop();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  first failed attempt → incident printed: median {:.0} ms, max {:.0} ms over {} sandboxes broken one at a time",
        median(lat.clone()),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.len()
    );
    Ok(())
}

/// Every sandbox broken at once (as fast as the lab applies the rule), then every one
/// started as the orchestrator does: its own retry loop, every ~55 ms for 10 s.
/// The orchestrator's budget for a sandbox's first connection: incidents later than this
/// came after it gave up.
const BUDGET_S: f64 = 10.0;

/// Every sandbox broken at once, each retried like the orchestrator does: how many incidents
/// come within the budget, how many carry their own hop timeline and how many rest on a
/// confirmed shared localization. `kind`: `slots` (a FORWARD drop in every sandbox's
/// namespace) or `node` (one host-side OUTPUT drop of envd's SYNs).
fn storm(lab: &mut Lab, tracer: &std::path::Path, kind: &str) -> Result<()> {
    let n = lab.sandbox_ids().len();
    let w = Watcher::start(tracer, &["--metrics", "127.0.0.1:9464"])?;
    let host_rule = ["OUTPUT", "-p", "tcp", "--dport", "49983", "-j", "DROP"];
    match kind {
        "node" => {
            lab::sh::run_in(Some("e2b-host"), "iptables", &[&["-I"], &host_rule[..]].concat())?;
        }
        _ => {
            for i in 0..n {
                lab.break_fault(i, Fault::ForwardDrop)?;
            }
        }
    }
    let start = Instant::now();
    let start_ms = now_unix_ms();
    let retries: Vec<_> = lab.host_ips().into_iter().map(retry_for_10s).collect();
    let (mut at, mut hops, mut shared, mut max_queue, mut rss) = (Vec::new(), 0usize, 0usize, 0i64, 0f64);
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    let cpu0 = w.cpu_s();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at.len() < n && Instant::now() < deadline {
        if let Some((v, when)) = w.next(&|v| v["type"] == "incident", Duration::from_millis(500)) {
            at.push((when - start_ms) / 1000.0);
            hops += usize::from(v["hops"].as_array().is_some_and(|h| !h.is_empty()));
            shared += usize::from(v["localized"] == "shared");
            *outcomes
                .entry(v["outcome"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        if let Some(q) = metric(&w.metrics(), "tracer_zoom_queued") {
            max_queue = max_queue.max(q as i64);
        }
        rss = rss.max(w.rss_mb());
    }
    let took = start.elapsed().as_secs_f64();
    let cpu = (w.cpu_s() - cpu0) / took * 100.0;
    let metrics = w.metrics();
    for r in retries {
        let _ = r.join();
    }
    w.stop();
    match kind {
        "node" => {
            lab::sh::run_in(Some("e2b-host"), "iptables", &[&["-D"], &host_rule[..]].concat())?;
        }
        _ => {
            for i in 0..n {
                lab.heal(i)?;
            }
        }
    }
    let within = at.iter().filter(|t| **t <= BUDGET_S).count();
    let last = at.iter().copied().fold(0.0, f64::max);
    println!(
        "  failure storm `{kind}` ({n} sandboxes failing at once, each retried every ~55 ms for 10 s): {}/{n} incidents, {within} within {BUDGET_S:.0} s (last at {last:.1} s); {hops} with their own hop timeline, {shared} on a confirmed shared localization ({outcomes:?}); zoom-in queue up to {max_queue}; watcher CPU {cpu:.0} % of a core, RSS {rss:.0} MB; events lost {}",
        at.len(),
        metric(&metrics, "tracer_events_lost_total").unwrap_or(f64::NAN)
    );
    Ok(())
}

/// The orchestrator's start-up retries for one sandbox: every ~55 ms for 10 s, until one works.
fn retry_for_10s(ip: Ipv4Addr) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = lab::connect::connect("e2b-host", ip, 49983, 180, true);
    })
}

/// A sample value of the exposition, by series name (first match).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `2026-11-30T18:06:45.833Z` → unix ms.
fn unix_ms(rfc3339: &str) -> f64 {
    let parse = || -> Option<f64> {
        let (date, time) = rfc3339.trim_end_matches('Z').split_once('T')?;
        let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
        let t: Vec<f64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
        let (y, m, day) = (d[0], d[1], d[2]);
        // Days from civil (Howard Hinnant).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some((days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]) * 1000.0)
    };
    parse().unwrap_or(f64::NAN)
}

fn now_unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// `tracer watch` in the lab's orchestrator namespace, its lines timestamped as they arrive.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<(String, f64)>,
}

impl Watcher {
    fn start(tracer: &std::path::Path, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", "e2b-host"])
            .arg(tracer)
            .arg("watch")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut reader = BufReader::new(child.stderr.take().context("stderr")?);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 && !line.contains("sandboxes (scan") {
            line.clear();
        }
        // TRACER_LOG=debug with BENCH_WATCH_STDERR=FILE keeps the watcher's timings.
        let keep = std::env::var_os("BENCH_WATCH_STDERR").and_then(|p| std::fs::File::create(p).ok());
        std::thread::spawn(move || {
            let mut keep = keep;
            for l in reader.lines().map_while(Result::ok) {
                if let Some(f) = keep.as_mut() {
                    let _ = writeln!(f, "{:.3} {l}", now_unix_ms() / 1000.0);
                }
            }
        });
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((l, now_unix_ms()));
            }
        });
        Ok(Self { child, lines })
    }

    /// The next line satisfying `pred` within `timeout`, with when it was read (unix ms).
    fn next(&self, pred: &dyn Fn(&Value) -> bool, timeout: Duration) -> Option<(Value, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (l, at) = self.lines.recv_timeout(left).ok()?;
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && pred(&v)
            {
                return Some((v, at));
            }
        }
    }

    fn cpu_s(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let f: Vec<f64> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default();
        // SAFETY: trivial libc call.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / hz
    }

    fn rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    /// The metrics exposition, fetched inside the lab's namespace.
    fn metrics(&self) -> String {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                "e2b-host",
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:9464/metrics",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn stop(mut self) {
        // SAFETY: signal to our own child (ip netns exec execs the tracer).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_reads() {
        assert_eq!(unix_ms("1970-01-01T00:00:01.500Z"), 1500.0);
        assert_eq!(unix_ms("2000-02-29T00:00:00.000Z"), 951_782_400_000.0);
        let text = "# TYPE x gauge\ntracer_zoom_queued 3\ntracer_zoom_queued_other 9\n";
        assert_eq!(metric(text, "tracer_zoom_queued"), Some(3.0));
    }
}
