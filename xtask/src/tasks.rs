//! build, lint, test.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{
    setup,
    toolchain::{Pins, cargo, cargo_nightly, run, workspace_root},
};

/// Builds the tracer and the lab's VMM; returns the tracer binary.
pub fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo()?;
    cmd.args(["build", "-p", "tracer", "-p", "lab-vmm"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("tracer"))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn lint() -> Result<()> {
    setup::run()?;
    run(cargo()?.args(["fmt", "--all", "--check"]))?;
    // The fuzz targets are a crate of their own (built only by cargo fuzz).
    run(cargo()?
        .args(["fmt", "--check", "--manifest-path"])
        .arg(workspace_root().join("tests/fuzz/Cargo.toml")))?;
    run(cargo()?.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The kernel programs, for their own target.
    let pins = Pins::read()?;
    run(cargo_nightly()?
        .args([
            "clippy",
            "-p",
            "tracer-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("PATH", path_with_linker(&pins.nightly)))?;
    crate::fuzz::check()?;
    crate::deploy_check::run()?;
    eprintln!("lint: clean");
    Ok(())
}

fn path_with_linker(nightly: &str) -> std::ffi::OsString {
    let mut dirs = vec![setup::bpf_linker_dir(nightly).join("bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Every test: unit tests (no root needed) and the end-to-end tests on the lab (root).
pub fn test(filters: &[String]) -> Result<()> {
    setup::run()?;
    build(false)?;
    let mut cmd = cargo()?;
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    // The test build of the tracer carries the hooks the end-to-end tests need.
    cmd.args(["--features", "tracer/test-hooks"]);
    cmd.args(filters);
    // The end-to-end tests find the VMM here (the tracer they get from cargo).
    cmd.env("LAB_VMM_BIN", target_dir().join("debug/lab-vmm"));
    run(&mut cmd)
}

fn has_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
