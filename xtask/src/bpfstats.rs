//! BPF run-time statistics for the benchmarks: `kernel.bpf_stats_enabled=1` while measuring
//! (restored after, whatever happens), and per program the kernel's run count and run time,
//! as `lab::bpf` reads them.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Statistics on while it lives; the previous setting comes back on drop.
pub struct Enabled {
    before: String,
}

impl Enabled {
    pub fn new() -> Result<Self> {
        let before = std::fs::read_to_string(SYSCTL).context("read kernel.bpf_stats_enabled")?;
        std::fs::write(SYSCTL, "1").context("enable kernel.bpf_stats_enabled")?;
        Ok(Self {
            before: before.trim().to_string(),
        })
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.before);
    }
}

/// Runs and ns of one program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    pub runs: u64,
    pub ns: u64,
}

/// Every loaded program whose name `keep` accepts, by name (programs with the same name are
/// summed: the tracer's netfilter slots of two namespaces share a program).
pub fn read(keep: impl Fn(&str) -> bool) -> BTreeMap<String, Stat> {
    let mut out: BTreeMap<String, Stat> = BTreeMap::new();
    for p in lab::bpf::loaded().into_iter().filter(|p| keep(&p.name)) {
        let s = out.entry(p.name).or_default();
        s.ns += p.run_time_ns;
        s.runs += p.run_cnt;
    }
    out
}

/// `after - before`, per program.
pub fn delta(before: &BTreeMap<String, Stat>, after: &BTreeMap<String, Stat>) -> BTreeMap<String, Stat> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            (
                k.clone(),
                Stat {
                    runs: a.runs.saturating_sub(b.runs),
                    ns: a.ns.saturating_sub(b.ns),
                },
            )
        })
        .collect()
}

/// The table: per program, runs per packet, ns per run, ns per packet; then the sums.
pub fn print_table(stats: &BTreeMap<String, Stat>, packets: u64) {
    let packets = packets.max(1) as f64;
    println!(
        "  {:<22} {:>14} {:>10} {:>12}",
        "program", "runs/packet", "ns/run", "ns/packet"
    );
    let (mut runs, mut ns) = (0u64, 0u64);
    for (name, s) in stats.iter().filter(|(_, s)| s.runs > 0) {
        runs += s.runs;
        ns += s.ns;
        println!(
            "  {:<22} {:>14.3} {:>10.0} {:>12.1}",
            name,
            s.runs as f64 / packets,
            s.ns as f64 / s.runs as f64,
            s.ns as f64 / packets
        );
    }
    println!(
        "  {:<22} {:>14.3} {:>10} {:>12.1}",
        "all",
        runs as f64 / packets,
        "",
        ns as f64 / packets
    );
}
