//! `cargo xtask fuzz`: runs every cargo-fuzz target (tests/fuzz: every parser of external
//! input the tracer has) for a time budget each, from the committed seed corpus, and says
//! how many inputs each ran and whether anything crashed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    toolchain::{Pins, workspace_root},
};

pub const TARGETS: &[&str] = &[
    "iptables_save",
    "nft_json",
    "proc_text",
    "netlink",
    "kernel_events",
    "cache_file",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Targets to run (default: all).
    targets: Vec<String>,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    setup::run()?;
    let pins = Pins::read()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    let mut report = Vec::new();
    for t in targets {
        if !TARGETS.contains(&t) {
            bail!("no fuzz target {t}; targets: {}", TARGETS.join(", "));
        }
        let corpus = corpus_dir(t)?;
        let log = run_target(&pins, t, &corpus, args.seconds)?;
        let execs = last_count(&log);
        eprintln!("fuzz: {t}: {execs} inputs in {} s, no crash", args.seconds);
        report.push((t, execs));
    }
    let total: u64 = report.iter().map(|(_, n)| n).sum();
    eprintln!("fuzz: {} targets, {total} inputs, no crash", report.len());
    Ok(())
}

/// A working corpus outside the repository, seeded from tests/fuzz/seeds/<target>.
fn corpus_dir(target: &str) -> Result<PathBuf> {
    let dir = crate::tasks::target_dir().join("fuzz-corpus").join(target);
    fs::create_dir_all(&dir)?;
    let seeds = workspace_root().join("tests/fuzz/seeds").join(target);
    for e in fs::read_dir(&seeds)
        .with_context(|| format!("read {}", seeds.display()))?
        .flatten()
    {
        fs::copy(e.path(), dir.join(e.file_name()))?;
    }
    Ok(dir)
}

/// `cargo +nightly fuzz <sub> --fuzz-dir tests/fuzz`, with cargo-fuzz on PATH.
fn cargo_fuzz(pins: &Pins, sub: &str) -> Result<Command> {
    let bin_dir = setup::cargo_fuzz_bin()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut path = vec![bin_dir];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut cmd = Command::new("cargo");
    cmd.env("PATH", std::env::join_paths(path)?)
        .arg(format!("+{}", pins.nightly))
        .args(["fuzz", sub, "--fuzz-dir"])
        .arg(workspace_root().join("tests/fuzz"))
        .current_dir(workspace_root());
    Ok(cmd)
}

/// Type-checks every fuzz target, so a target that no longer compiles is named as such (and
/// caught by `cargo xtask lint`) instead of passing for a crash.
pub fn check() -> Result<()> {
    let pins = Pins::read()?;
    let status = cargo_fuzz(&pins, "check")?
        .stdin(Stdio::null())
        .status()
        .context("run cargo fuzz check")?;
    if !status.success() {
        bail!("the fuzz targets in tests/fuzz do not compile (cargo fuzz check failed above)");
    }
    Ok(())
}

fn run_target(pins: &Pins, target: &str, corpus: &Path, seconds: u64) -> Result<String> {
    let artifacts = crate::tasks::target_dir().join("fuzz-artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    let out = cargo_fuzz(pins, "run")?
        .arg(target)
        .arg(corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-rss_limit_mb=2048")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("run cargo fuzz")?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        if log.contains("could not compile") {
            bail!("fuzz target {target} does not compile:\n{log}");
        }
        bail!(
            "fuzz target {target} failed (a crash is kept in {}):\n{}",
            artifacts.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(log)
}

/// The last `#N` execution count libFuzzer printed.
fn last_count(log: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix('#')?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn execution_counts_are_read_from_libfuzzer() {
        let log = "#2\tINITED cov: 10\n#4096\tpulse  cov: 20\n#91234\tDONE   cov: 30 exec/s: 3000\n";
        assert_eq!(super::last_count(log), 91234);
    }

    #[test]
    fn every_target_has_seeds_and_a_source() {
        let root = crate::toolchain::workspace_root().join("tests/fuzz");
        for t in super::TARGETS {
            assert!(root.join(format!("fuzz_targets/{t}.rs")).exists(), "{t}");
            let seeds = std::fs::read_dir(root.join("seeds").join(t))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(seeds > 0, "{t} has no seed corpus");
        }
    }
}
