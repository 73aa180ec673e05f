//! `tracer trace`: attach, read events, report.
use std::{io::Write as _, time::Duration};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};

use crate::{
    btf::{KernelBtf, ReasonNames},
    cli::TraceArgs,
    drops::DropRecord,
    error::{EXIT_FOUND, EXIT_OK, EnvError, is_root},
    events::{Clock, Names, decode},
    kallsyms::Kallsyms,
    probes::{DROP_TRACEPOINTS, Filter, Probes},
};

pub fn run(args: TraceArgs) -> Result<i32> {
    // A malformed id is refused before anything is loaded.
    if let Some(id) = &args.vm
        && !crate::sandbox::is_valid_id(id)
    {
        return Err(EnvError::MalformedSandboxId(id.clone()).into());
    }
    if !is_root() {
        return Err(EnvError::NoPrivileges.into());
    }
    let started = std::time::Instant::now();
    match crate::target::sandbox_of(&args)? {
        Some(sb) => crate::session::run(args, sb, started),
        None => run_drop_log(args),
    }
}

/// Without a sandbox: every dropped packet matching the filters, in any namespace.
fn run_drop_log(args: TraceArgs) -> Result<i32> {
    let btf = KernelBtf::load().map_err(|e| EnvError::NoBtf(format!("{e:#}")))?;
    let names = Names::new(ReasonNames::load(&btf)?, Kallsyms::load()?);
    let filter = Filter {
        ports: args.ports.clone(),
        addrs: args.addrs.clone(),
        netns: Vec::new(),
    };
    let mut probes = Probes::load(btf.offsets()?, &filter)?;
    probes.attach_tracepoints(DROP_TRACEPOINTS)?;
    let events = probes.take_events()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let drops = rt.block_on(drop_log(events, names, &args))?;
    report_lost(&probes)?;
    Ok(if drops > 0 { EXIT_FOUND } else { EXIT_OK })
}

/// Prints each dropped packet until the duration ends or a signal arrives. Returns how many.
async fn drop_log(events: RingBuf<MapData>, mut names: Names, args: &TraceArgs) -> Result<u64> {
    let clock = Clock::new();
    let mut fd = crate::events::ring_fd(events)?;
    let stop_signal = crate::events::stop_signal()?;
    tokio::pin!(stop_signal);
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    eprintln!(
        "tracer: attached; following TCP port {} — Ctrl-C to stop",
        args.ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut count = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(ev) = decode(&item) else { continue };
                    let rec = DropRecord::new(&ev, &mut names, &clock);
                    if args.json {
                        writeln!(out, "{}", serde_json::to_string(&rec)?)?;
                    } else {
                        writeln!(out, "{}", rec.line(&ev))?;
                    }
                    count += 1;
                }
                out.flush()?;
                guard.clear_ready();
            }
            _ = &mut stop_signal => break,
            _ = &mut deadline => break,
        }
    }
    Ok(count)
}

pub fn report_lost(probes: &Probes) -> Result<()> {
    let lost = probes.lost_events()?;
    if lost > 0 {
        eprintln!("tracer: {lost} events were lost (ring buffer full); results may be incomplete");
    }
    Ok(())
}
