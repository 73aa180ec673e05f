//! `cargo xtask faults`: the fault campaign. Random faults from a grammar injected into the
//! lab one at a time, each judged by an independent client and by the tracer, and graded (see
//! `tests/lab/src/campaign`). Prints a table per actor family and leg; `--json` prints one
//! summary object; `--min-right` and false claims make it fail (CI).
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use lab::{
    GuestKind, IptablesBackend, Network,
    campaign::{self, Options, report},
};

use crate::{
    lab_cmd::{Backend, Datapaths, Guest},
    setup, tasks,
    toolchain::{cargo, run},
};

#[derive(Args)]
pub struct FaultsArgs {
    /// How many random faults.
    #[arg(long = "random", default_value_t = 30)]
    pub faults: u32,
    /// The campaign's seed: the same seed gives the same faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// E2B's datapath of the lab: v1, v2, or mixed (faults alternate between a v1 and a v2
    /// sandbox).
    #[arg(long, value_enum, default_value_t = Datapaths::Mixed)]
    pub network: Datapaths,
    #[arg(long, value_enum, default_value_t = Backend::Nft)]
    pub iptables: Backend,
    #[arg(long, value_enum, default_value_t = Guest::Userspace)]
    pub guest: Guest,
    /// Rerun one fault: SEED:INDEX (as the report prints it).
    #[arg(long, value_parser = parse_key)]
    pub replay: Option<(u64, u32)>,
    /// Each attempt's timeout (the client's and the probe's), in ms. Default: 50 (the
    /// orchestrator's), 1000 with the QEMU guest.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print one JSON summary object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the table as Markdown (and every case as JSON lines beside it).
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Fail when fewer graded faults than this percentage are right (CI's floor).
    #[arg(long)]
    pub min_right: Option<f64>,
    /// Fail on any false claim.
    #[arg(long)]
    pub no_false_claims: bool,
}

fn parse_key(s: &str) -> Result<(u64, u32), String> {
    let (a, b) = s.split_once(':').ok_or("expected SEED:INDEX")?;
    Ok((
        a.parse().map_err(|_| "bad seed")?,
        b.parse().map_err(|_| "bad index")?,
    ))
}

pub fn run_campaign(args: FaultsArgs) -> Result<()> {
    setup::run()?;
    let tracer = tasks::build(false)?;
    // The other agent whose BPF programs some faults load.
    run(cargo()?.args(["build", "-p", "lab", "--bin", "lab-agent"]))?;
    // SAFETY: set before any thread of ours reads the environment.
    unsafe {
        std::env::set_var("LAB_AGENT_BIN", tasks::target_dir().join("debug/lab-agent"));
        std::env::set_var("LAB_VMM_BIN", tasks::target_dir().join("debug/lab-vmm"));
    }
    let guest = match args.guest {
        Guest::Userspace => GuestKind::Userspace,
        Guest::Qemu => GuestKind::Qemu,
    };
    let opts = Options {
        faults: args.faults,
        seed: args.seed,
        network: match args.network {
            Datapaths::V1 => Network::V1,
            Datapaths::V2 => Network::V2,
            Datapaths::Mixed => Network::Mixed,
        },
        iptables: match args.iptables {
            Backend::Nft => IptablesBackend::Nft,
            Backend::Legacy => IptablesBackend::Legacy,
        },
        guest,
        replay: args.replay,
        tracer,
        timeout: Duration::from_millis(args.timeout_ms.unwrap_or(match guest {
            GuestKind::Qemu => 1000,
            _ => 50,
        })),
        verbose: !args.json,
    };
    let started = std::time::Instant::now();
    let results = campaign::run(&opts)?;
    let summary = report::summary(&results);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", report::markdown(&summary));
        for c in results
            .cases
            .iter()
            .filter(|c| c.grade != campaign::grade::Grade::Right)
        {
            println!("{}\n    summary: {}", report::line(c), c.summary);
        }
        eprintln!(
            "faults: {} faults in {:.0} s",
            results.cases.len(),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report::markdown(&summary))
            .with_context(|| format!("write {}", path.display()))?;
        let lines: Vec<String> = results
            .cases
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        std::fs::write(path.with_extension("jsonl"), lines.join("\n") + "\n")?;
    }
    if args.no_false_claims && summary.all.false_claims > 0 {
        bail!(
            "{} false claims: {}",
            summary.all.false_claims,
            summary.false_claim_keys.join(", ")
        );
    }
    if let Some(min) = args.min_right {
        let pct = if summary.all.faults == 0 {
            0.0
        } else {
            100.0 * f64::from(summary.all.right) / f64::from(summary.all.faults)
        };
        if pct < min {
            bail!("{pct:.0}% of the graded faults are right, below the floor of {min}%");
        }
    }
    Ok(())
}
