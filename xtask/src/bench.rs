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
    /// Rounds per configuration (attached / not attached alternate).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Seconds of iperf3 per round.
    #[arg(long, default_value_t = 3)]
    pub seconds: u32,
    /// envd-like connections per round.
    #[arg(long, default_value_t = 300)]
    pub connections: u32,
}

/// One round's measurements.
#[derive(Default, Clone, Copy)]
struct Round {
    /// iperf3 through the path, traffic the filter does not match (Gbit/s).
    gbps: f64,
    /// envd-like connections (matched, followed, decided) per second.
    conn_per_s: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    setup::run()?;
    let tracer = tasks::build(true)?;
    let lab = Lab::up(LabConfig::default())?;
    let id = lab.sandbox_ids()[0].clone();
    // iperf3 server inside the sandbox namespace, on the ns side of the veth: the traffic
    // crosses veth-1/eth0 and the netfilter hooks of both namespaces, like envd's.
    let mut server = Command::new("ip")
        .args(["netns", "exec", "ns-1", "iperf3", "-s", "-B", "10.12.0.3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start iperf3 server")?;
    let result = measure(&args, &lab, &tracer, &id);
    let _ = server.kill();
    let _ = server.wait();
    let (off, on) = result?;
    report(&off, &on);
    latency(&tracer, &id, lab)?;
    Ok(())
}

fn measure(
    args: &BenchArgs,
    lab: &Lab,
    tracer: &std::path::Path,
    id: &str,
) -> Result<(Vec<Round>, Vec<Round>)> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    wait_for_iperf()?;
    for r in 0..args.rounds {
        eprintln!("bench: round {}/{}", r + 1, args.rounds);
        off.push(round(args, lab)?);
        let t = Attached::start(tracer, &["trace", "--vm", id])?;
        on.push(round(args, lab)?);
        t.stop();
    }
    Ok((off, on))
}

fn round(args: &BenchArgs, lab: &Lab) -> Result<Round> {
    let out = sh::run_in(
        Some("e2b-host"),
        "iperf3",
        &["-c", "10.12.0.3", "-t", &args.seconds.to_string(), "-J"],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")?;
    let start = Instant::now();
    let report = lab.connect(0, args.connections)?;
    let ok = report
        .attempts
        .iter()
        .filter(|a| matches!(a.result, lab::AttemptResult::Ok { .. }))
        .count();
    Ok(Round {
        gbps: bps / 1e9,
        conn_per_s: ok as f64 / start.elapsed().as_secs_f64(),
    })
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn report(off: &[Round], on: &[Round]) {
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
