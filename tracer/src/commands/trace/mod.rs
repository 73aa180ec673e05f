//! `tracer trace`: with a sandbox, follow its path and judge every attempt (`session`);
//! without one, print every dropped packet on the port (`droplog`).
pub mod droplog;
mod losses;
pub mod session;
mod setup;
pub mod withheld;

use anyhow::Result;

use crate::{
    attach::bpf::{
        Filter, Programs,
        btf::{KernelBtf, ReasonNames},
        drop_tracepoints,
        kallsyms::Kallsyms,
    },
    cli::TraceArgs,
    error::{EXIT_FOUND, EXIT_OK, EnvError, is_root},
    events::decode::Names,
    output::{Format, Output},
};

pub fn run(args: TraceArgs) -> Result<i32> {
    // A malformed id is refused before anything is loaded.
    if let Some(id) = &args.vm
        && !crate::discovery::sandbox::is_valid_id(id)
    {
        return Err(EnvError::MalformedSandboxId(id.clone()).into());
    }
    if !is_root() {
        return Err(EnvError::NoPrivileges.into());
    }
    if let Some(arg) = &args.host_netns {
        crate::discovery::sandbox::pin_host_arg(arg)?;
    }
    let started = std::time::Instant::now();
    match crate::discovery::target::sandbox_of(&args)? {
        Some(sb) => session::run(args, sb, started),
        None => run_drop_log(args),
    }
}

/// Without a sandbox: every dropped packet matching the filters, in any namespace.
fn run_drop_log(args: TraceArgs) -> Result<i32> {
    let btf = KernelBtf::load().map_err(|e| EnvError::NoBtf(format!("{e:#}")))?;
    crate::attach::bpf::features::Features::probe(&btf)
        .require_drops(&crate::attach::bpf::features::kernel_release())?;
    let names = Names::new(ReasonNames::load(&btf)?, Kallsyms::load()?);
    let filter = Filter {
        ports: args.ports.clone(),
        addrs: args.addrs.clone(),
        netns: Vec::new(),
        ring_bytes: args.ring_size,
        detect_any_addr: false,
        deep: false,
    };
    let mut programs = Programs::load(btf.offsets()?, &filter)?;
    programs.attach_tracepoints(drop_tracepoints())?;
    let events = programs.take_events()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = Output::stdout(Format::from_json_flag(args.json));
    let drops = rt.block_on(droplog::run(events, &programs, names, &args, out))?;
    Ok(if drops > 0 { EXIT_FOUND } else { EXIT_OK })
}
