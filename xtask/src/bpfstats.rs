//! BPF run-time statistics for the benchmarks: `kernel.bpf_stats_enabled=1` while measuring
//! (restored after, whatever happens), and per program the kernel's run count and run time,
//! read with the bpf syscall (what `bpftool prog show` prints).
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
    const GET_NEXT_ID: libc::c_long = 11;
    const GET_FD_BY_ID: libc::c_long = 13;
    const OBJ_GET_INFO: libc::c_long = 15;
    let mut out: BTreeMap<String, Stat> = BTreeMap::new();
    let mut id: u32 = 0;
    loop {
        let mut attr = [0u32; 4];
        attr[0] = id;
        // SAFETY: attr is a valid bpf_attr prefix of 16 bytes.
        if unsafe { libc::syscall(libc::SYS_bpf, GET_NEXT_ID, attr.as_mut_ptr(), 16) } != 0 {
            break;
        }
        id = attr[1];
        let mut by_id = [0u32; 4];
        by_id[0] = id;
        // SAFETY: as above.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, GET_FD_BY_ID, by_id.as_mut_ptr(), 16) } as i32;
        if fd < 0 {
            continue;
        }
        // struct bpf_prog_info: name at 64, run_time_ns at 192, run_cnt at 200.
        let mut info = [0u8; 256];
        let mut req = [0u64; 2];
        req[0] = fd as u64 | ((info.len() as u64) << 32);
        req[1] = info.as_mut_ptr() as u64;
        // SAFETY: info is a buffer of the declared length, alive across the call.
        unsafe { libc::syscall(libc::SYS_bpf, OBJ_GET_INFO, req.as_mut_ptr(), 16) };
        // SAFETY: the fd we just got.
        unsafe { libc::close(fd) };
        let name = &info[64..80];
        let end = name.iter().position(|b| *b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&name[..end]).into_owned();
        if !keep(&name) {
            continue;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap_or([0; 8]));
        let s = out.entry(name).or_default();
        s.ns += u64_at(192);
        s.runs += u64_at(200);
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
