//! lab-vmm: the lab's stand-in for a Firecracker process.
//!
//! Started inside a sandbox's network namespace (like `ip netns exec ns-N firecracker
//! --api-sock ...`), it attaches to the namespace's existing persistent `tap0` and puts a
//! guest behind it: either a userspace TCP/IP stack (fast, tiny) or a real Linux under
//! QEMU. Its command line carries `--api-sock`, so sandbox discovery finds it in
//! /proc/<pid>/cmdline exactly as it finds Firecracker. stdout carries one line, `READY`;
//! everything else goes to stderr.

mod arp;
mod control;
mod cpio;
mod guest_build;
mod http;
mod kernel_vm;
mod qemu;
mod sys;
mod tap;
mod userspace;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "lab-vmm",
    about = "The lab's Firecracker stand-in: holds tap0 and runs a guest behind it",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Assemble the QEMU guest (vmlinuz, initramfs.cpio.gz) from Debian packages.
    BuildGuest {
        /// Output directory; left alone when it already holds a guest built from the same inputs.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a Debian kernel bootable under QEMU for the kernel matrix (`cargo xtask test
    /// --kernel`): vmlinuz, an initramfs that runs a command on the machine's own root
    /// filesystem (shared read-only over 9p), and the kernel's module tree.
    BuildKernelVm {
        /// The upstream line, as `apt-cache madison linux-image-amd64` lists it: 6.1, 6.12, ...
        #[arg(long)]
        kernel: String,
        /// Output directory; left alone when it already holds that kernel built the same way.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Control socket path (Firecracker's flag, e.g. /tmp/fc-<sandboxID>-<rand>.sock).
    #[arg(long, required = true)]
    api_sock: Option<PathBuf>,
    /// The existing persistent tap device to attach to.
    #[arg(long, default_value = "tap0")]
    tap: String,
    /// What answers behind the tap.
    #[arg(long, value_enum, default_value_t = GuestKind::Userspace)]
    guest: GuestKind,
    #[arg(long, default_value = "169.254.0.21")]
    guest_ip: Ipv4Addr,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=32))]
    prefix: u8,
    #[arg(long, default_value = "169.254.0.22")]
    gateway: Ipv4Addr,
    #[arg(long, default_value = "02:fc:00:00:00:05", value_parser = parse_mac)]
    guest_mac: [u8; 6],
    /// envd's port.
    #[arg(long, default_value_t = 49983)]
    port: u16,
    /// Guest kernel (qemu only; see `build-guest`).
    #[arg(long, required_if_eq("guest", "qemu"))]
    kernel: Option<PathBuf>,
    /// Guest initramfs (qemu only; see `build-guest`).
    #[arg(long, required_if_eq("guest", "qemu"))]
    initrd: Option<PathBuf>,
    /// The QEMU binary (qemu only).
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GuestKind {
    /// smoltcp on the tap, in this process.
    Userspace,
    /// Linux under QEMU (TCG), handed the tap as fd 3.
    Qemu,
}

/// The guest's side of the tap link.
pub struct GuestNet {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub port: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::BuildGuest { out }) => guest_build::build(&out),
        Some(Sub::BuildKernelVm { kernel, out }) => kernel_vm::build(&kernel, &out),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-vmm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    // First, before any thread exists, so every thread inherits the blocked mask and the
    // signals reach only the signalfd.
    let signals = sys::SignalFd::termination()?;
    let api_sock = args.api_sock.context("--api-sock is required")?;
    let tap = tap::Tap::attach(&args.tap)?;
    let control = control::Control::start(&api_sock)?;
    let net = GuestNet {
        ip: args.guest_ip,
        prefix: args.prefix,
        gateway: args.gateway,
        mac: args.guest_mac,
        port: args.port,
    };
    match args.guest {
        GuestKind::Userspace => userspace::run(tap, &net, &control, &signals),
        GuestKind::Qemu => {
            let qemu = qemu::QemuArgs {
                binary: args.qemu,
                kernel: args.kernel.context("--kernel is required with --guest qemu")?,
                initrd: args.initrd.context("--initrd is required with --guest qemu")?,
            };
            qemu::run(tap, &net, &qemu, &control, &signals)
        }
    }
}

/// Tells the parent that the guest answers on its port: the only line on stdout.
pub fn announce_ready() {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "READY").and_then(|()| out.flush()) {
        eprintln!("lab-vmm: cannot print READY: {e}");
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address like 02:fc:00:00:00:05"));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("bad MAC byte {part:?} in {s:?}"))?;
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("02:fc:00:00:00:05").unwrap();
        assert_eq!(format_mac(&mac), "02:fc:00:00:00:05");
        assert!(parse_mac("02:fc:00").is_err());
        assert!(parse_mac("02:fc:00:00:00:zz").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
