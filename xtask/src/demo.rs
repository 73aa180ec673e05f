//! `cargo xtask demo`: a lab sandbox with a broken path, and the tracer naming the break.
use anyhow::{Result, anyhow};
use lab::{Fault, Lab, LabConfig};

use crate::{setup, tasks};

pub fn run(fault: &str) -> Result<()> {
    let fault = Fault::parse(fault)
        .ok_or_else(|| anyhow!("unknown fault {fault}; see `cargo xtask lab break --list`"))?;
    setup::run()?;
    let tracer = tasks::build(true)?;
    let mut lab = Lab::up(LabConfig::default())?;
    let id = lab.sandboxes()[0].id.clone();
    eprintln!("demo: sandbox {id} up; breaking it: {}", fault.explain());
    lab.break_fault(0, fault)?;
    eprintln!(
        "demo: the orchestrator would see: {}",
        lab.connect(0, 3)?.summary()
    );
    eprintln!("demo: $ tracer trace --vm {id} --probe");
    let status = std::process::Command::new(&tracer)
        .args(["trace", "--vm", &id, "--probe"])
        .status()?;
    eprintln!("demo: tracer exited with {status}; tearing the lab down");
    lab.down()
}
