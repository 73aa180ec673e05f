//! `cargo xtask setup`: installs what the build and the tests need. Idempotent: a second run
//! only checks (well under 5 s).
//!
//! Runs on the machine's default toolchain on a fresh machine: installing the pinned ones is
//! its first job.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::toolchain::{self, Pins, cargo, output, workspace_root};

/// bpf-linker release known to work with the pinned nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz release (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Debian packages: iptables/nftables (lab rules, rule lookup), busybox-static (QEMU guest),
/// iperf3 (bench), curl (an independent HTTP client for the end-to-end tests), prometheus (a
/// real server scraping the watcher in a test, and promtool), qemu-system-x86 (QEMU guest, from
/// backports so the machine's qemu-utils stays), kmod (depmod for the kernel matrix's images,
/// and the modprobe their kernels call).
const PACKAGES: &[&str] = &[
    "iptables",
    "kmod",
    "nftables",
    "busybox-static",
    "iperf3",
    "curl",
    "prometheus",
    // Reads deep mode's pcapng captures back in the tests.
    "tshark",
    // Renders `tracer report --format html` in the end-to-end test (headless, over DevTools).
    "chromium",
];
const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86"];

pub fn run() -> Result<()> {
    let start = Instant::now();
    let pins = Pins::read()?;
    let mut done = Vec::new();
    toolchains(&pins, &mut done)?;
    bpf_linker(&pins, &mut done)?;
    cargo_fuzz(&mut done)?;
    debian_packages(&mut done)?;
    toolchain_file(&mut done)?;
    guest_image(&mut done)?;
    kernel_images(&mut done)?;
    if done.is_empty() {
        eprintln!(
            "setup: everything in place ({:.1}s)",
            start.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "setup: {} ({:.1}s)",
            done.join("; "),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn toolchains(pins: &Pins, done: &mut Vec<String>) -> Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    for (name, components) in [
        (&pins.stable, "clippy,rustfmt"),
        (&pins.nightly, "rust-src,clippy,rustfmt"),
    ] {
        let present = installed.lines().any(|l| l.starts_with(&format!("{name}-")));
        let missing = if present {
            missing_components(name, components)?
        } else {
            vec![]
        };
        if present && missing.is_empty() {
            continue;
        }
        eprintln!("setup: installing toolchain {name} ({components})");
        toolchain::run(Command::new("rustup").args([
            "toolchain",
            "install",
            name,
            "--profile",
            "minimal",
            "--component",
            components,
        ]))?;
        done.push(format!("installed {name}"));
    }
    Ok(())
}

fn missing_components(toolchain: &str, wanted: &str) -> Result<Vec<String>> {
    let list =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", toolchain]))?;
    Ok(wanted
        .split(',')
        .filter(|c| !list.lines().any(|l| l == *c || l.starts_with(&format!("{c}-"))))
        .map(str::to_string)
        .collect())
}

/// Where bpf-linker lives: keyed by the nightly, whose LLVM it links (tracer/build.rs looks
/// there too).
pub fn bpf_linker_dir(nightly: &str) -> PathBuf {
    cache_dir().join(format!("bpf-linker-{nightly}"))
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/tracer")
}

fn bpf_linker(pins: &Pins, done: &mut Vec<String>) -> Result<()> {
    let root = bpf_linker_dir(&pins.nightly);
    let bin = root.join("bin/bpf-linker");
    if bin.exists()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {}'s LLVM (~1 min)",
        pins.nightly
    );
    let prefix = llvm_prefix(&pins.nightly)?;
    toolchain::run(
        cargo()?
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--root",
            ])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )?;
    done.push("built bpf-linker".into());
    Ok(())
}

/// cargo-fuzz, cached outside the repository.
pub fn cargo_fuzz_bin() -> PathBuf {
    cache_dir()
        .join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"))
        .join("bin/cargo-fuzz")
}

fn cargo_fuzz(done: &mut Vec<String>) -> Result<()> {
    let bin = cargo_fuzz_bin();
    if bin.exists() {
        return Ok(());
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (~1 min)");
    let root = bin.parent().and_then(Path::parent).unwrap_or(&bin).to_path_buf();
    toolchain::run(
        cargo()?
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
                "--force",
                "--root",
            ])
            .arg(&root),
    )?;
    done.push("built cargo-fuzz".into());
    Ok(())
}

/// A directory whose lib/ holds the nightly's own libLLVM (DESIGN §4: no Debian package has
/// the LLVM the nightly uses, so bpf-linker links the one rustup ships).
fn llvm_prefix(nightly: &str) -> Result<PathBuf> {
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&libdir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}", libdir.display()))?;
    let prefix = cache_dir().join(format!("llvm-{nightly}"));
    let dst = prefix.join("lib");
    fs::create_dir_all(&dst)?;
    for name in [
        Path::new("libLLVM.so"),
        Path::new(lib.file_name().unwrap_or_default()),
    ] {
        let link = dst.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    Ok(prefix)
}

fn is_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "installed")
}

fn debian_packages(done: &mut Vec<String>) -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !is_installed(p)).collect();
    let missing_bpo: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() && missing_bpo.is_empty() {
        return Ok(());
    }
    // SAFETY: trivial syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "Debian packages {:?} are missing; run `sudo cargo xtask setup`",
            [missing.clone(), missing_bpo.clone()].concat()
        );
    }
    let suite = ensure_backports()?;
    eprintln!(
        "setup: apt-get install {}",
        [missing.clone(), missing_bpo.clone()].concat().join(" ")
    );
    toolchain::run(Command::new("apt-get").args(["update", "-qq"]))?;
    let apt = |extra: &[&str], pkgs: &[&str]| -> Result<()> {
        if pkgs.is_empty() {
            return Ok(());
        }
        toolchain::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(extra)
                .args(pkgs),
        )
    };
    // Packages with a service (prometheus) must not start it: the machine's network and
    // processes are not ours to change. policy-rc.d tells Debian's maintainer scripts so.
    let _no_services = NoServiceStarts::install()?;
    apt(&[], &missing)?;
    apt(&["-t", &suite], &missing_bpo)?;
    // Nor start at the next boot: tests run their own Prometheus, in a lab namespace.
    if missing.contains(&"prometheus") {
        let _ = fs::remove_file("/etc/systemd/system/multi-user.target.wants/prometheus.service");
    }
    done.push(format!(
        "installed {}",
        [missing, missing_bpo].concat().join(", ")
    ));
    Ok(())
}

/// `/usr/sbin/policy-rc.d` answering "no" (101) while packages install; removed on drop, and
/// only if it was not there before.
struct NoServiceStarts(Option<&'static str>);

impl NoServiceStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn install() -> Result<Self> {
        if Path::new(Self::PATH).exists() {
            return Ok(Self(None));
        }
        fs::write(
            Self::PATH,
            "#!/bin/sh\n# cargo xtask setup: no service starts while installing\nexit 101\n",
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(Self::PATH, fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(Self::PATH)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// Makes sure the distribution's backports suite is an apt source; returns its name.
fn ensure_backports() -> Result<String> {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .ok_or_else(|| anyhow!("cannot tell the Debian release from /etc/os-release"))?;
    let suite = format!("{codename}-backports");
    let listed = fs::read_dir("/etc/apt/sources.list.d")?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().contains("disabled"))
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .chain(fs::read_to_string("/etc/apt/sources.list").ok())
        .any(|t| t.contains(&suite));
    if !listed {
        let path = format!("/etc/apt/sources.list.d/{suite}.sources");
        fs::write(
            &path,
            format!(
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )
        .with_context(|| format!("write {path}"))?;
    }
    Ok(suite)
}

/// Points rustup at .toolchain/ for plain `cargo` commands in this checkout: the pinned stable
/// when installed, else the machine's default (so `cargo xtask` always starts). The path is
/// absolute, hence generated rather than committed.
fn toolchain_file(done: &mut Vec<String>) -> Result<()> {
    let root = workspace_root();
    let root = root.canonicalize().unwrap_or(root);
    let wanted = format!(
        "# Written by `cargo xtask setup` (not committed: the path is absolute).\n[toolchain]\npath = \"{}\"\n",
        root.join(".toolchain").display()
    );
    let path = root.join("rust-toolchain.toml");
    if fs::read_to_string(&path).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    fs::write(&path, wanted)?;
    done.push("wrote rust-toolchain.toml".into());
    Ok(())
}

/// The QEMU guest (Debian cloud kernel + busybox initramfs), cached outside the repo.
fn guest_image(done: &mut Vec<String>) -> Result<()> {
    let dir = lab::guest::guest_image_dir();
    let before = fs::metadata(dir.join("initramfs.cpio.gz"))
        .and_then(|m| m.modified())
        .ok();
    toolchain::run(cargo()?.args(["build", "-q", "-p", "lab-vmm"]))?;
    let vmm = lab::guest::vmm_binary()?;
    toolchain::run(Command::new(vmm).arg("build-guest").arg("--out").arg(&dir))?;
    let after = fs::metadata(dir.join("initramfs.cpio.gz"))
        .and_then(|m| m.modified())
        .ok();
    if before != after {
        done.push(format!("built the QEMU guest in {}", dir.display()));
    }
    Ok(())
}

/// The kernel matrix's images (`cargo xtask test --kernel`), cached outside the repo.
fn kernel_images(done: &mut Vec<String>) -> Result<()> {
    let vmm = lab::guest::vmm_binary()?;
    for (version, _) in crate::kernel_matrix::KERNELS {
        let stamp = crate::kernel_matrix::image_dir(version).join("stamp");
        let before = fs::read_to_string(&stamp).ok();
        crate::kernel_matrix::build_image(&vmm, version)?;
        if fs::read_to_string(&stamp).ok() != before {
            done.push(format!("built the {version} kernel image"));
        }
    }
    Ok(())
}
