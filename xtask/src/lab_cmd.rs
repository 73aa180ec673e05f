//! `cargo xtask lab ...`: the lab from the command line. The lab stays up between commands
//! (its state lives in /run/e2b-lab) until `lab down`.
use anyhow::{Result, anyhow};
use clap::{Subcommand, ValueEnum};
use lab::{Fault, GuestKind, IptablesBackend, Lab, LabConfig, Network, Topology};

#[derive(Subcommand)]
pub enum LabCmd {
    /// Build the lab: e2b-host plus N sandboxes (ns-1..ns-N) with guests.
    Up {
        #[arg(long, default_value_t = 1)]
        sandboxes: u32,
        #[arg(long, value_enum, default_value_t = Guest::Userspace)]
        guest: Guest,
        #[arg(long, value_enum, default_value_t = Backend::Nft)]
        iptables: Backend,
        #[arg(long, value_enum, default_value_t = Wiring::E2b)]
        topology: Wiring,
        /// E2B's datapath: v1 (iptables NAT), v2 (nft NAT and v2-host-firewall), or mixed
        /// (odd slots v1, even slots v2: a node mid-rollout).
        #[arg(long, value_enum, default_value_t = Datapaths::V1)]
        network: Datapaths,
    },
    /// Show the sandboxes: id, slot, namespace, addresses, guest, health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove everything the lab made (also leftovers of crashed runs). Safe to run twice.
    Down,
    /// The orchestrator stand-in: new connection per attempt to host IP:49983, POST /init,
    /// 50 ms timeout, 5 ms between attempts.
    Connect {
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(long, default_value_t = 20)]
        attempts: u32,
        #[arg(long)]
        json: bool,
    },
    /// Inject a fault (`--list` explains them).
    Break {
        #[arg(required_unless_present = "list")]
        fault: Option<String>,
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(long)]
        list: bool,
    },
    /// Revert every fault of a sandbox.
    Heal {
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// End a sandbox and, after E2B's delay (3 s), start a new one with a new id in the same
    /// namespace, as E2B's slot pool does.
    Recycle {
        #[arg(long)]
        sandbox: Option<String>,
        /// Time between the end of the old sandbox and the start of the new one.
        #[arg(long, default_value = "3", value_name = "SECONDS")]
        delay: f64,
        /// The new id (default: a random one, `i` + 20 like E2B's).
        #[arg(long)]
        new_id: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Guest {
    Userspace,
    Qemu,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Backend {
    Nft,
    Legacy,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Datapaths {
    V1,
    V2,
    Mixed,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Wiring {
    E2b,
    Bridge,
}

pub fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up {
            sandboxes,
            guest,
            iptables,
            topology,
            network,
        } => {
            let config = LabConfig {
                sandboxes,
                guest: match guest {
                    Guest::Userspace => GuestKind::Userspace,
                    Guest::Qemu => GuestKind::Qemu,
                },
                iptables: match iptables {
                    Backend::Nft => IptablesBackend::Nft,
                    Backend::Legacy => IptablesBackend::Legacy,
                },
                topology: match topology {
                    Wiring::E2b => Topology::E2b,
                    Wiring::Bridge => Topology::Bridge,
                },
                network: match network {
                    Datapaths::V1 => Network::V1,
                    Datapaths::V2 => Network::V2,
                    Datapaths::Mixed => Network::Mixed,
                },
                // The root-host layout runs only inside the kernel-matrix VM (test --kernel V
                // --root-host): never from here.
                host: lab::HostNs::Named,
            };
            let start = std::time::Instant::now();
            let lab = Lab::up(config)?;
            eprintln!("lab: up in {:.2}s", start.elapsed().as_secs_f64());
            print_status(&lab, false)?;
            lab.keep()
        }
        LabCmd::Status { json } => print_status(&Lab::open()?, json),
        LabCmd::Down => {
            lab::lab::down_all()?;
            eprintln!("lab: down");
            Ok(())
        }
        LabCmd::Connect {
            sandbox,
            attempts,
            json,
        } => {
            let lab = Lab::open()?;
            let i = lab.pick(sandbox.as_deref())?;
            let report = lab.connect(i, attempts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for (n, a) in report.attempts.iter().enumerate() {
                    println!("attempt {:>3}: {:?} in {} µs", n + 1, a.result, a.latency_us);
                }
                println!("{}", report.summary());
            }
            if report.succeeded() {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        LabCmd::Break { list: true, .. } => {
            for f in Fault::ALL {
                println!("{:<28} {}", f.name(), f.explain());
            }
            Ok(())
        }
        LabCmd::Break { fault, sandbox, .. } => {
            let name = fault.unwrap_or_default();
            let fault = Fault::parse(&name)
                .ok_or_else(|| anyhow!("unknown fault {name}; see `cargo xtask lab break --list`"))?;
            let mut lab = Lab::open()?;
            let i = lab.pick(sandbox.as_deref())?;
            lab.break_fault(i, fault)?;
            eprintln!(
                "lab: {} broken in sandbox {}",
                fault.name(),
                lab.sandboxes()[i].id
            );
            Ok(())
        }
        LabCmd::Recycle {
            sandbox,
            delay,
            new_id,
        } => {
            let mut lab = Lab::open()?;
            let i = lab.pick(sandbox.as_deref())?;
            let old = lab.sandboxes()[i].id.clone();
            let identity = new_id.map(|id| (id, lab::lab::random_alnum(lab::lab::RAND_LEN)));
            let id = lab.recycle(i, std::time::Duration::from_secs_f64(delay.max(0.0)), identity)?;
            eprintln!(
                "lab: sandbox {old} ended; {id} started in {}",
                lab.sandboxes()[i].slot.netns()
            );
            Ok(())
        }
        LabCmd::Heal { sandbox } => {
            let mut lab = Lab::open()?;
            let i = lab.pick(sandbox.as_deref())?;
            lab.heal(i)?;
            eprintln!("lab: sandbox {} healed", lab.sandboxes()[i].id);
            Ok(())
        }
    }
}

fn print_status(lab: &Lab, json: bool) -> Result<()> {
    let status = lab.status();
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "{:<22} {:>4} {:<8} {:<12} {:<14} {:<8} {:<3} {:>8}  {:<7} faults",
        "sandbox", "slot", "netns", "host ip", "guest ip", "veth", "dp", "pid", "healthy"
    );
    for s in status {
        let faults: Vec<&str> = s.faults.iter().map(|f| f.name()).collect();
        println!(
            "{:<22} {:>4} {:<8} {:<12} {:<14} {:<8} {:<3} {:>8}  {:<7} {}",
            s.id,
            s.slot,
            s.netns,
            s.host_ip,
            s.guest_ip,
            s.veth,
            match s.datapath {
                lab::Datapath::V1 => "v1",
                lab::Datapath::V2 => "v2",
            },
            s.guest_pid.map(|p| p.to_string()).unwrap_or("-".into()),
            s.healthy,
            faults.join(",")
        );
    }
    Ok(())
}
