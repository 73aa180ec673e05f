//! `cargo xtask bench`: what the tracer costs, measured side by side in one run — the same
//! traffic through a lab sandbox path with the tracer attached and not, alternating, several
//! rounds — reported as medians and ratios. A benchmark, not a test: it asserts nothing.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use lab::{Fault, Lab, LabConfig, sh};

use crate::{setup, tasks};

#[derive(Args)]
pub struct BenchArgs {
    /// `watch`: the always-on watcher over many sandboxes instead of one `trace`.
    #[command(subcommand)]
    pub what: Option<What>,
    /// Rounds per configuration (attached / not attached alternate).
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Seconds of iperf3 per round.
    #[arg(long, default_value_t = 2)]
    pub seconds: u32,
    /// envd-like connections per round.
    #[arg(long, default_value_t = 300)]
    pub connections: u32,
    /// Compare deep mode (`trace --deep --pcapng`) with the default mode and with no tracer,
    /// in alternating rounds.
    #[arg(long)]
    pub deep: bool,
}

#[derive(clap::Subcommand)]
pub enum What {
    /// `tracer watch` on a lab of many sandboxes: incident latency, idle cost (throughput
    /// through one path, the watcher's CPU and RSS), and a failure storm.
    Watch(crate::bench_watch::WatchBenchArgs),
}

/// One round's measurements.
#[derive(Default, Clone, Copy)]
pub(crate) struct Round {
    /// iperf3 through the path, traffic the filter does not match (Gbit/s).
    pub(crate) gbps: f64,
    /// CPU time (all CPUs, without steal) spent per Gbit moved: what the tracer adds per
    /// packet, less sensitive than throughput to this VM's noisy neighbours.
    pub(crate) cpu_ms_per_gbit: f64,
    /// envd-like connections (matched, followed, decided) per second.
    pub(crate) conn_per_s: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(What::Watch(w)) = args.what {
        return crate::bench_watch::run(w);
    }
    setup::run()?;
    let tracer = tasks::build(true)?;
    let lab = Lab::up(LabConfig::default())?;
    let id = lab.sandbox_ids()[0].clone();
    let server = IperfServer::start()?;
    if args.deep {
        let result = deep(&args, &lab, &tracer, &id);
        drop(server);
        result?;
        return lab.down();
    }
    let result = measure(&args, &lab, &tracer, &id);
    drop(server);
    let (off, on) = result?;
    report(&off, &on);
    latency(&tracer, &id, lab)?;
    Ok(())
}

/// iperf3's server inside sandbox 0's namespace, on the ns side of the veth: the traffic
/// crosses veth-1/eth0 and the netfilter hooks of both namespaces, like envd's. Stopped on
/// drop.
pub(crate) struct IperfServer(std::process::Child);

impl IperfServer {
    pub(crate) fn start() -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", "ns-1", "iperf3", "-s", "-B", "10.12.0.3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        let server = Self(child);
        wait_for_iperf()?;
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(
    args: &BenchArgs,
    lab: &Lab,
    tracer: &std::path::Path,
    id: &str,
) -> Result<(Vec<Round>, Vec<Round>)> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let mut attach_ms = Vec::new();
    for r in 0..args.rounds {
        eprintln!("bench: round {}/{}", r + 1, args.rounds);
        off.push(round(args, lab)?);
        let t0 = Instant::now();
        let t = Attached::start(tracer, &["trace", "--vm", id])?;
        attach_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        on.push(round(args, lab)?);
        t.stop();
        let (a, b) = (off[off.len() - 1], on[on.len() - 1]);
        eprintln!(
            "bench:   without {:.2} Gbit/s {:.1} ms/Gbit {:.0} conn/s; with {:.2} Gbit/s {:.1} ms/Gbit {:.0} conn/s",
            a.gbps, a.cpu_ms_per_gbit, a.conn_per_s, b.gbps, b.cpu_ms_per_gbit, b.conn_per_s
        );
    }
    println!(
        "  start → attached (all programs, as `tracer trace --vm` prints it): median {:.0} ms",
        median(attach_ms)
    );
    profile(args, lab, tracer, id)?;
    Ok((off, on))
}

/// One more attached round with the kernel's run-time statistics on (they cost a clock read
/// per program run, so the paired rounds above run without): runs and ns per program, per
/// packet through the path.
fn profile(args: &BenchArgs, lab: &Lab, tracer: &std::path::Path, id: &str) -> Result<()> {
    let _stats = crate::bpfstats::Enabled::new()?;
    let t = Attached::start(tracer, &["trace", "--vm", id])?;
    let (s0, p0) = (crate::bpfstats::read(is_ours), path_packets()?);
    round(args, lab)?;
    let (s1, p1) = (crate::bpfstats::read(is_ours), path_packets()?);
    t.stop();
    println!(
        "bench: the tracer's programs in one attached round (kernel.bpf_stats_enabled=1), per packet through veth-1:"
    );
    crate::bpfstats::print_table(&crate::bpfstats::delta(&s0, &s1), p1 - p0);
    Ok(())
}

/// The tracer's programs, from the hook table (as the kernel keeps their names: cut at 15
/// characters).
fn is_ours(name: &str) -> bool {
    tracer_common::hooks::kernel_names().any(|o| name == o)
}

/// Packets through the sandbox's veth (both directions) so far.
fn path_packets() -> Result<u64> {
    let out = sh::run_in(Some("e2b-host"), "ip", &["-s", "-j", "link", "show", "veth-1"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    let s = &v[0]["stats64"];
    Ok(s["rx"]["packets"].as_u64().unwrap_or(0) + s["tx"]["packets"].as_u64().unwrap_or(0))
}

pub(crate) fn round(args: &BenchArgs, lab: &Lab) -> Result<Round> {
    iperf_round(args.seconds, args.connections, lab)
}

/// iperf3 through sandbox 0's path for `seconds`, then `connections` envd-like attempts.
pub(crate) fn iperf_round(seconds: u32, connections: u32, lab: &Lab) -> Result<Round> {
    let secs = seconds.to_string();
    let cpu0 = busy_ms()?;
    let out = sh::run_in(
        Some("e2b-host"),
        "iperf3",
        &["-c", "10.12.0.3", "-t", &secs, "-A", "0,1", "-J"],
    )?;
    let cpu = busy_ms()? - cpu0;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let sum = &v["end"]["sum_received"];
    let bps = sum["bits_per_second"].as_f64().context("iperf3 result")?;
    let gbits = sum["bytes"].as_f64().context("iperf3 bytes")? * 8.0 / 1e9;
    let start = Instant::now();
    let report = lab.connect(0, connections)?;
    let ok = report
        .attempts
        .iter()
        .filter(|a| matches!(a.result, lab::AttemptResult::Ok { .. }))
        .count();
    Ok(Round {
        gbps: bps / 1e9,
        cpu_ms_per_gbit: cpu / gbits,
        conn_per_s: ok as f64 / start.elapsed().as_secs_f64(),
    })
}

/// Busy CPU time of the machine so far in ms (user, nice, system, irq, softirq; not idle,
/// iowait or steal), from /proc/stat.
pub(crate) fn busy_ms() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat")?;
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    // SAFETY: trivial libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy * 1000.0 / hz)
}

/// The server takes a moment to listen; a bounded wait on the condition itself.
fn wait_for_iperf() -> Result<()> {
    let found = lab::testing::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        sh::run_in(Some("ns-1"), "ss", &["-ltn"])
            .ok()
            .filter(|o| o.contains(":5201"))
            .map(|_| ())
    });
    found.context("iperf3 server did not start")
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn report(off: &[Round], on: &[Round]) {
    // This machine is a VM with noisy neighbours: show the spread and the paired ratios too.
    let spread = |r: &[Round]| {
        let v: Vec<f64> = r.iter().map(|x| x.gbps).collect();
        (
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    let paired = median(off.iter().zip(on).map(|(a, b)| b.gbps / a.gbps).collect());
    let ((lo0, hi0), (lo1, hi1)) = (spread(off), spread(on));
    println!(
        "  throughput spread: {lo0:.1}–{hi0:.1} Gbit/s without, {lo1:.1}–{hi1:.1} with; median of paired ratios {paired:.3}"
    );
    let cpu = |r: &[Round]| median(r.iter().map(|x| x.cpu_ms_per_gbit).collect());
    println!(
        "  CPU per Gbit moved: {:.1} ms without, {:.1} ms with the tracer: ratio {:.3} ({:+.1} %)",
        cpu(off),
        cpu(on),
        cpu(on) / cpu(off),
        (cpu(on) / cpu(off) - 1.0) * 100.0
    );
    let g = |r: &[Round]| median(r.iter().map(|x| x.gbps).collect());
    let c = |r: &[Round]| median(r.iter().map(|x| x.conn_per_s).collect());
    println!("bench: {} rounds each, alternating; medians", off.len());
    println!(
        "  TCP throughput, not matched by the filter: {:.2} Gbit/s without, {:.2} with the tracer: ratio {:.3} ({:+.1} %)",
        g(off),
        g(on),
        g(on) / g(off),
        (g(on) / g(off) - 1.0) * 100.0
    );
    println!(
        "  envd-like connections (followed):          {:.0}/s without, {:.0}/s with the tracer: ratio {:.3} ({:+.1} %)",
        c(off),
        c(on),
        c(on) / c(off),
        (c(on) / c(off) - 1.0) * 100.0
    );
}

/// Deep mode beside the default mode: no tracer, `trace --vm`, `trace --vm --deep --pcapng`
/// in turn each round; then the deep programs' cost per packet, and what the capture holds.
fn deep(args: &BenchArgs, lab: &Lab, tracer: &std::path::Path, id: &str) -> Result<()> {
    let pcap = crate::tasks::target_dir().join("bench-deep.pcapng");
    let pcap_arg = pcap.to_string_lossy().into_owned();
    let deep_args = ["trace", "--vm", id, "--deep", "--json", "--pcapng", &pcap_arg];
    let (mut off, mut default, mut deep) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..args.rounds {
        eprintln!("bench: round {}/{}", r + 1, args.rounds);
        off.push(round(args, lab)?);
        let t = Attached::start(tracer, &["trace", "--vm", id])?;
        default.push(round(args, lab)?);
        t.stop();
        let t = Attached::start(tracer, &deep_args)?;
        deep.push(round(args, lab)?);
        t.stop();
    }
    println!(
        "bench: {} rounds each, alternating; medians; ratios to no tracer",
        off.len()
    );
    let m = |r: &[Round], f: fn(&Round) -> f64| median(r.iter().map(f).collect());
    type Metric = (&'static str, fn(&Round) -> f64);
    let metrics: [Metric; 3] = [
        ("TCP throughput, not followed (Gbit/s)", |x| x.gbps),
        ("CPU per Gbit moved (ms)", |x| x.cpu_ms_per_gbit),
        ("envd-like connections, followed (/s)", |x| x.conn_per_s),
    ];
    for (name, f) in metrics {
        let (a, b, c) = (m(&off, f), m(&default, f), m(&deep, f));
        println!(
            "  {name:<40} none {a:>8.2}   default {b:>8.2} (ratio {:.3})   deep {c:>8.2} (ratio {:.3})",
            b / a,
            c / a
        );
    }
    // One more deep round with BPF statistics on: the programs' cost per packet.
    let _stats = crate::bpfstats::Enabled::new()?;
    let t = Attached::start(tracer, &deep_args)?;
    let (s0, p0) = (crate::bpfstats::read(is_ours), path_packets()?);
    round(args, lab)?;
    let (s1, p1) = (crate::bpfstats::read(is_ours), path_packets()?);
    let lines = t.stop();
    println!(
        "bench: deep mode's programs in one round (kernel.bpf_stats_enabled=1), per packet through veth-1:"
    );
    crate::bpfstats::print_table(&crate::bpfstats::delta(&s0, &s1), p1 - p0);
    let journeys = lines
        .iter()
        .filter(|l| l.contains("\"type\":\"journey\""))
        .count();
    let size = std::fs::metadata(&pcap).map(|m| m.len()).unwrap_or(0);
    println!(
        "  capture of that round: {journeys} journeys, {:.1} KiB in {} ({:.0} bytes per journey)",
        size as f64 / 1024.0,
        pcap.display(),
        size as f64 / journeys.max(1) as f64
    );
    let _ = std::fs::remove_file(&pcap);
    Ok(())
}

/// From the decisive kernel event to the printed verdict, on a broken path.
fn latency(tracer: &std::path::Path, id: &str, mut lab: Lab) -> Result<()> {
    lab.break_fault(0, Fault::ForwardDrop)?;
    let t = Attached::start(tracer, &["trace", "--vm", id, "--json", "--all-hops"])?;
    lab.connect(0, 50)?;
    let lines = t.stop();
    let mut lat: Vec<f64> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "journey")
        .filter_map(|v| v["verdict_latency_us"].as_f64())
        .collect();
    if lat.is_empty() {
        bail!("no verdicts to time");
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  decisive kernel event → printed verdict: median {:.1} ms, max {:.1} ms over {} verdicts",
        median(lat.clone()) / 1000.0,
        lat.last().copied().unwrap_or(0.0) / 1000.0,
        lat.len()
    );
    lab.down()
}

/// The tracer running in the background, its stdout collected.
struct Attached {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Attached {
    fn start(tracer: &std::path::Path, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(tracer)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        // Wait for "attached" before measuring.
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 && !line.contains("attached") {
            line.clear();
        }
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || for _ in reader.lines() {});
        Ok(Self { child, lines })
    }

    fn stop(mut self) -> Vec<String> {
        // SAFETY: signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        self.lines.iter().collect()
    }
}
