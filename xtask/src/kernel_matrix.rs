//! `cargo xtask test --kernel <version>`: the end-to-end subset (kernel_selftest.rs) on
//! another kernel, booted under QEMU.
//!
//! The VM runs a Debian kernel (`lab-vmm build-kernel-vm`, cached in
//! ~/.cache/tracer/kernels/<version>) on this machine's own root filesystem, shared read-only
//! over 9p under a tmpfs overlay: the workspace's release binaries, iptables, nft and the lab
//! are there as they are here, and nothing the VM does reaches the host's files. The VM has
//! no network device at all. Its serial console comes back on a pipe; the `KTEST` lines are
//! the results, the whole console goes to target/kernel-test/<version>.log.
//!
//! The VM's kernel command line carries [`lab::topology::KERNEL_MATRIX_TOKEN`]: with
//! `--root-host` the workload builds the lab in the VM's own root namespace (the production
//! layout), which the lab allows only where that token is and no network hardware exists.
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;

use crate::{kernel_selftest::Expect, setup, tasks, toolchain};

/// The kernels `cargo xtask setup` prepares, and what the tracer can do on each. Another
/// version works as well when apt knows a `linux-image-amd64` of it (see the README).
pub const KERNELS: &[(&str, Expect)] = &[("6.1", Expect::Refuse), ("6.12", Expect::Full)];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// Emulation: works everywhere, including inside a VM without nested virtualization.
    Tcg,
    /// Hardware virtualization (needs a working /dev/kvm).
    Kvm,
}

/// Where a kernel's VM image is cached.
pub fn image_dir(version: &str) -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/tracer/kernels").join(version)
}

/// Builds (or finds up to date) the VM image of `version` with `vmm` (lab-vmm).
pub fn build_image(vmm: &Path, version: &str) -> Result<PathBuf> {
    let dir = image_dir(version);
    toolchain::run(
        Command::new(vmm)
            .args(["build-kernel-vm", "--kernel", version, "--out"])
            .arg(&dir),
    )?;
    Ok(dir)
}

/// What the tracer can do on `version`: tcx (6.6) is what `trace --vm` needs last.
fn expectation(version: &str) -> Result<Expect> {
    if let Some((_, e)) = KERNELS.iter().find(|(v, _)| *v == version) {
        return Ok(*e);
    }
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok(if (major, minor) >= (6, 6) {
            Expect::Full
        } else {
            Expect::Refuse
        }),
        _ => bail!("--kernel takes an upstream line such as 6.1 or 6.12, not {version:?}"),
    }
}

/// Which self-test the VM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// kernel_selftest.rs: the lab with its `e2b-host` namespace.
    Lab,
    /// kernel_root_host.rs: the orchestrator side in the VM's root namespace, as on a node.
    RootHost,
}

pub fn run(versions: &[String], accel: Accel, timeout: Duration, mode: Mode) -> Result<()> {
    if mode == Mode::RootHost {
        for version in versions {
            ensure!(
                expectation(version)? == Expect::Full,
                "--root-host traces sandboxes, which needs tcx and netfilter links (Linux 6.6+); {version} has neither"
            );
        }
    }
    setup::run()?;
    let tracer = tasks::build(true)?;
    let release = tracer.parent().context("no target dir")?.to_path_buf();
    let vmm = release.join("lab-vmm");
    let runner = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut failed = Vec::new();
    for version in versions {
        let expect = expectation(version)?;
        let image = build_image(&vmm, version)?;
        let start = Instant::now();
        let mut command = vec![
            runner.to_str().context("non-UTF-8 path")?,
            "kernel-selftest",
            "--expect",
            match expect {
                Expect::Full => "full",
                Expect::Refuse => "refuse",
            },
            "--tracer",
            tracer.to_str().context("non-UTF-8 path")?,
            "--vmm",
            vmm.to_str().context("non-UTF-8 path")?,
        ];
        let name = match mode {
            Mode::Lab => version.clone(),
            Mode::RootHost => {
                command.push("--root-host");
                format!("{version}-root-host")
            }
        };
        let result = boot(&image, &name, accel, timeout, &command);
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(passed) => eprintln!("kernel {name}: {passed} steps passed in {secs:.0} s"),
            Err(e) => {
                eprintln!("kernel {name}: FAILED after {secs:.0} s: {e:#}");
                failed.push(name);
            }
        }
    }
    ensure!(failed.is_empty(), "kernel matrix failed on {}", failed.join(", "));
    Ok(())
}

/// Boots the image with `command` as the VM's workload; Ok(steps passed) when it reported
/// `KTEST done` without a failure. `name` names the run (its log is target/kernel-test/NAME.log).
fn boot(image: &Path, name: &str, accel: Accel, timeout: Duration, command: &[&str]) -> Result<u32> {
    ensure!(
        command.iter().all(|a| !a.contains(char::is_whitespace)),
        "the kernel command line cannot carry paths with spaces: {command:?}"
    );
    let log_path = tasks::target_dir()
        .join("kernel-test")
        .join(format!("{name}.log"));
    std::fs::create_dir_all(log_path.parent().context("log dir")?)?;
    let mut log =
        std::fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let release = std::fs::read_to_string(image.join("release"))?.trim().to_string();
    eprintln!(
        "kernel {name}: booting {release} under QEMU ({accel:?}); console in {}",
        log_path.display()
    );
    // The token marks this VM (see the module's comment); the kernel ignores it.
    let append = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 {} -- {}",
        lab::topology::KERNEL_MATRIX_TOKEN,
        command.join(" ")
    );
    let mut qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                match accel {
                    Accel::Tcg => "tcg",
                    Accel::Kvm => "kvm",
                },
            ])
            .args(["-M", "q35", "-cpu", "max", "-smp", "2", "-m", "2048"])
            // No default devices: no NIC (the VM has no network), no display, no monitor.
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initramfs.cpio.gz"))
            .args(["-append", &append])
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=kmod,security_model=none,readonly=on",
                image.join("modules").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start qemu-system-x86_64 (`cargo xtask setup` installs it)")?,
    );
    let (tx, lines) = mpsc::channel();
    for pipe in [
        qemu.0
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        qemu.0
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let (mut passed, mut failures, mut done, mut tail) = (0, Vec::new(), false, Vec::new());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("no result within {timeout:?}; see {}", log_path.display())
            }
        };
        let line = line.trim_end_matches('\r').to_string();
        let _ = writeln!(log, "{line}");
        if let Some(r) = line.strip_prefix("KTEST ") {
            eprintln!("  {r}");
            if r.starts_with("ok ") {
                passed += 1;
            } else if r.starts_with("FAIL ") {
                failures.push(r.to_string());
            } else if r.starts_with("done ") {
                done = true;
            }
        } else if let Some(r) = line.strip_prefix("KTEST| ") {
            eprintln!("  | {r}");
        } else if line.starts_with("KTEST-INIT") {
            eprintln!("  {line}");
        }
        tail.push(line);
        if tail.len() > 30 {
            tail.remove(0);
        }
    }
    let status = qemu.0.wait()?;
    if !done || !failures.is_empty() {
        bail!(
            "{} (qemu {status}); last console lines:\n{}",
            if done {
                format!("{} step(s) failed", failures.len())
            } else {
                "the VM stopped before reporting its result".into()
            },
            tail.join("\n")
        );
    }
    Ok(passed)
}

/// The QEMU process, killed if still running when dropped (timeout, error, Ctrl-C unwinding).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_follow_tcx() {
        assert_eq!(expectation("6.1").unwrap(), Expect::Refuse);
        assert_eq!(expectation("6.12").unwrap(), Expect::Full);
        assert_eq!(expectation("6.5").unwrap(), Expect::Refuse);
        assert_eq!(expectation("6.8").unwrap(), Expect::Full);
        assert!(expectation("latest").is_err());
    }
}
