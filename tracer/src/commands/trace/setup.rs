//! Attaching a trace: the programs loaded and tcx on the path's devices (the attach plan's),
//! and the one stderr line that says so.
use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use tracer_model::path::ExpectedPath;

use crate::{
    attach::{
        bpf::{Filter, Programs},
        plan::PathPlan,
    },
    cli::TraceArgs,
};

/// Everything attached for one sandbox.
pub(super) struct Attached {
    pub(super) programs: Programs,
    /// Devices on the path whose programs could not be attached, and why.
    pub(super) blind_spots: Vec<String>,
    /// ifindex → device name, per namespace inode (to name netfilter in/out devices).
    pub(super) ifnames: HashMap<u32, HashMap<u32, String>>,
    pub(super) devices: usize,
}

/// The one stderr line that says what is attached (tests and scripts wait for "attached").
pub(super) fn announce(path: &ExpectedPath, devices: usize, attach_time: Duration, probe: bool) {
    let mode = if probe {
        "probing"
    } else {
        "watching (Ctrl-C to stop)"
    };
    let (host, namespaces) = match &path.host_ns {
        Some(h) if !path.host_veth.is_empty() => (format!("{} {}", h.label(), path.host_veth), 2),
        Some(h) => (h.label(), 2),
        None => ("host side not known".to_string(), 1),
    };
    eprintln!(
        "tracer: sandbox {} — {host} → {} {} ({} → {}); attached to {devices} devices, {namespaces} namespace{} in {} ms; {mode}",
        path.sandbox_id.as_deref().unwrap_or("-"),
        path.sandbox_ns.label(),
        path.tap,
        path.host_ip,
        path.guest_ip,
        if namespaces == 1 { "" } else { "s" },
        attach_time.as_millis(),
    );
}

/// Loads the programs and attaches them to the path's devices only (the netfilter slots
/// follow once the rulesets are read).
pub(super) fn attach(
    path: &ExpectedPath,
    plan: &PathPlan<'_>,
    args: &TraceArgs,
) -> Result<(Attached, Filter)> {
    let mut addrs = plan.addrs.clone();
    // One sandbox is followed: its guest's address names nothing of another sandbox's.
    addrs.push(path.guest_ip);
    addrs.extend(&args.addrs);
    let filter = Filter {
        ports: args.ports.clone(),
        netns: plan.namespaces().collect(),
        addrs,
        ring_bytes: args.ring_size,
        detect_any_addr: false,
        deep: args.deep(),
    };
    let mut programs = Programs::open(&filter)?;
    programs.attach_tracepoints(tracer_common::hooks::tracepoints(None))?;
    let devices = plan.attach_devices(&mut programs)?;
    for b in &devices.blind_spots {
        eprintln!(
            "tracer: warning: could not attach to {}",
            crate::output::escape(b)
        );
    }
    Ok((
        Attached {
            programs,
            blind_spots: devices.blind_spots,
            ifnames: devices.ifnames.into_iter().collect(),
            devices: devices.attached.len(),
        },
        filter,
    ))
}
