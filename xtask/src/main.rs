//! `cargo xtask <task>`: the developer tasks. See `cargo xtask --help`.
//!
//! xtask must build with the machine's default toolchain (stable 1.95 on a fresh machine),
//! because it is what installs the pinned ones: keep its dependencies light.
mod bench;
mod bench_watch;
mod bpfstats;
mod demo;
mod deploy_check;
mod faults;
mod fuzz;
mod kernel_matrix;
mod kernel_root_host;
mod kernel_selftest;
mod lab_cmd;
mod setup;
mod tasks;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for the envd path tracer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent): pinned toolchains, rust-src,
    /// bpf-linker, Debian packages, the QEMU guest image.
    Setup,
    /// Build the tracer (`target/<profile>/tracer`).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// cargo fmt --check and clippy -D warnings, host crates and the eBPF crate for its target;
    /// then deploy-check.
    Lint,
    /// Check deploy/ (alert rules and their promtool tests, the Grafana dashboard, the Vector
    /// and otel-collector snippets) against each other and the metrics the watcher registers.
    DeployCheck,
    /// Run every test: unit tests, then end-to-end tests on the lab (those need root).
    Test {
        /// Passed to cargo nextest as test filters.
        filters: Vec<String>,
        /// Instead: boot this Debian kernel (6.1, 6.12, ...; repeatable) under QEMU and run
        /// the end-to-end subset inside it (lab, `trace --vm --probe` on five faults, doctor,
        /// `trace --port`, detach). The image is built from apt's linux-image-amd64 of that
        /// version and cached in ~/.cache/tracer/kernels.
        #[arg(long, conflicts_with = "filters")]
        kernel: Vec<String>,
        /// QEMU's accelerator for --kernel. TCG by default: nested KVM does not run a guest
        /// inside a Firecracker VM such as the CI machine.
        #[arg(long, value_enum, default_value = "tcg", requires = "kernel")]
        accel: kernel_matrix::Accel,
        /// Give up on a kernel's VM after this many seconds.
        #[arg(long, default_value_t = 900, requires = "kernel")]
        kernel_timeout: u64,
        /// With --kernel (6.6+): the production layout instead. The lab's orchestrator side
        /// (the client, the veths' host ends, the routes and the host firewall) is built in the
        /// VM's root namespace, and `list`, `doctor`, `trace --vm --probe` (host-side, sandbox,
        /// reply-path drops and a missing DNAT, each against the e2b-host lab's verdict) and a
        /// short `watch` run there.
        #[arg(long, requires = "kernel")]
        root_host: bool,
    },
    /// The newcomer's first run: a lab sandbox with a broken path, and the tracer naming it.
    Demo {
        /// Fault to inject (see `cargo xtask lab break --list`).
        #[arg(long, default_value = "forward-drop")]
        fault: String,
    },
    /// The built-in lab: a simulated E2B sandbox network with injectable faults.
    Lab {
        #[command(subcommand)]
        cmd: lab_cmd::LabCmd,
    },
    /// Benchmark: throughput and connection rate with the tracer attached vs not.
    Bench(bench::BenchArgs),
    /// Fuzz every parser of external input (tests/fuzz) for a time budget each.
    Fuzz(fuzz::FuzzArgs),
    /// The fault campaign: random faults from a grammar injected into the lab, each judged
    /// by an independent client and by the tracer, graded against what was injected.
    Faults(faults::FaultsArgs),
    /// The workload of a kernel-matrix VM (run by `test --kernel` inside the VM).
    #[command(hide = true)]
    KernelSelftest(kernel_selftest::SelftestArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => tasks::build(release).map(|_| ()),
        Task::Lint => tasks::lint(),
        Task::DeployCheck => deploy_check::run(),
        Task::Test {
            filters,
            kernel,
            accel,
            kernel_timeout,
            root_host,
        } => {
            if kernel.is_empty() {
                tasks::test(&filters)
            } else {
                let mode = match root_host {
                    true => kernel_matrix::Mode::RootHost,
                    false => kernel_matrix::Mode::Lab,
                };
                kernel_matrix::run(
                    &kernel,
                    accel,
                    std::time::Duration::from_secs(kernel_timeout),
                    mode,
                )
            }
        }
        Task::Demo { fault } => demo::run(&fault),
        Task::Lab { cmd } => lab_cmd::run(cmd),
        Task::Bench(args) => bench::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Faults(args) => faults::run_campaign(args),
        Task::KernelSelftest(args) => kernel_selftest::run(args),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
