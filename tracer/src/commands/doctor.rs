//! `tracer doctor`: the configuration checks of one sandbox (`--vm`) or of every one
//! (`--all`), as a text checklist or `--json` (one report object for `--vm`, an array for
//! `--all`). Exit code 0 when nothing is wrong (warnings allowed), 1 when a problem was
//! found, 2 on usage or environment errors.
use anyhow::{Context as _, Result};

use crate::{
    cli::DoctorArgs,
    diagnose::{check, check_all, render},
    discovery::sandbox::{self, Sandbox},
    error::{EXIT_FOUND, EXIT_OK, EnvError, is_root},
    output::{Format, Output},
};

/// `tracer doctor`: exit 0 when nothing is wrong (warnings allowed), 1 when a problem was
/// found, 2 on usage or environment errors.
pub fn run(args: DoctorArgs) -> Result<i32> {
    if let Some(id) = &args.vm
        && !sandbox::is_valid_id(id)
    {
        return Err(EnvError::MalformedSandboxId(id.clone()).into());
    }
    // Reading other processes' fds and entering their namespaces needs root.
    if !is_root() {
        return Err(EnvError::NoPrivileges.into());
    }
    if let Some(arg) = &args.host_netns {
        sandbox::pin_host_arg(arg)?;
    }
    let connect = !args.no_connect;
    let mut out = Output::stdout(Format::from_json_flag(args.json));
    let reports = match &args.vm {
        Some(id) => vec![check(&crate::discovery::target::find_by_id(id)?, connect)],
        None => check_all(&every_sandbox()?, connect),
    };
    match (out.format, &args.vm, reports.first()) {
        (Format::Json, Some(_), Some(r)) => out.json_pretty(r),
        (Format::Json, _, _) => out.json_pretty(&reports),
        (Format::Text, _, _) => {
            let text = match args.all {
                true => render::all(&reports),
                false => reports.iter().map(render::sandbox).collect(),
            };
            let text = out.plain(&text).into_owned();
            out.text(&text)
        }
    }
    .context("write to stdout")?;
    let problems = reports.iter().any(|r| r.problems > 0);
    Ok(if problems { EXIT_FOUND } else { EXIT_OK })
}

/// Every sandbox with a running VMM. Namespaces without one are left out: E2B keeps a pool
/// of prepared slots that no VMM uses yet, and those are not broken.
fn every_sandbox() -> Result<Vec<Sandbox>> {
    let found = sandbox::discover_all()?;
    // So that `--vm` still finds a sandbox whose VMM dies later.
    crate::discovery::cache::remember(&found.iter().collect::<Vec<_>>());
    Ok(found)
}
