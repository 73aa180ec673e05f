//! `tracer check`: what the running kernel offers the tracer.
use crate::{
    attach::bpf::{
        btf::KernelBtf,
        features::{Features, kernel_release, load_trial, render},
    },
    error::EnvError,
    output::{Format, Output},
};

/// `tracer check`: the feature table of the running kernel, and (as root) which programs its
/// verifier takes.
pub fn run(args: crate::cli::CheckArgs) -> anyhow::Result<i32> {
    let btf = KernelBtf::load().map_err(|e| EnvError::NoBtf(format!("{e:#}")))?;
    let f = Features::probe(&btf);
    let kernel = kernel_release();
    let verdict = f.require_path(&kernel);
    let trial = load_trial(&btf);
    drop(btf);
    let mut out = Output::stdout(Format::from_json_flag(args.json));
    if args.json {
        let (programs, note) = match &trial {
            Ok((t, _)) => (Some(t), None),
            Err(n) => (None, Some(n)),
        };
        out.json_pretty(&serde_json::json!({
            "kernel": kernel,
            "path": verdict.is_ok(),
            "features": f.rows,
            "programs": programs,
            "programs_note": note,
        }))?;
    } else {
        out.text(&render(&kernel, &f, &verdict, &trial))?;
    }
    Ok(if verdict.is_ok() {
        crate::error::EXIT_OK
    } else {
        crate::error::EXIT_KERNEL
    })
}
