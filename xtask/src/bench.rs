//! `cargo xtask bench`: the tracer's cost, measured side by side (attached vs not) in one run.
use anyhow::{Result, bail};
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// Rounds per configuration.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
}

pub fn run(_args: BenchArgs) -> Result<()> {
    bail!("the benchmark is not written yet")
}
