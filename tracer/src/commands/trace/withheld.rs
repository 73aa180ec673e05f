//! Probes the tracer did not send, turned into verdicts: the host side could not be verified,
//! or the route read just before a connect led off it. Such a verdict rests only on what was
//! read (the problem in plain words, the kernel's route answer); nothing is attached for it.
use anyhow::Result;
use tracer_model::{
    facts::{PeerSide, ProbeRoute, ReadFacts, RouteAnswer},
    journey::Journey,
    path::ExpectedPath,
    verdict,
};

use crate::{
    cli::TraceArgs,
    error::EXIT_FOUND,
    events::decode::Clock,
    output::{Format, Output},
    report::{Judged, Reporter},
    system::connect::Withheld,
    system::netns::Netns,
};

/// `--probe` for a sandbox whose host side is not known: one verdict saying so, no packet
/// sent, nothing attached. Exit 1 (a failure of the path was found: it has no host side).
pub fn host_side_unknown(args: &TraceArgs, path: &ExpectedPath, why: &str) -> Result<i32> {
    eprintln!(
        "tracer: no probe was sent: the host side of {} is not known ({})",
        path.sandbox_ns.label(),
        crate::output::escape(why)
    );
    let journey = Journey::withheld(0, path.host_ip, path.port, Clock::now_mono_ns());
    let facts = ReadFacts {
        host_side_problem: Some(why.to_string()),
        ..Default::default()
    };
    let v = verdict::decide(&journey, Some(path), &facts);
    let out = Output::stdout(Format::from_json_flag(args.json));
    let mut reporter = Reporter::new(out, false, Some(path));
    reporter.add(Judged {
        journey: &journey,
        verdict: &v,
        rule: None,
        explained_by: &[],
        lost_events: 0,
        context: None,
    })?;
    Ok(EXIT_FOUND)
}

/// What a withheld probe read, as the model's facts: the route (or the problem with the host
/// side), and where the route's device leads.
pub fn facts(w: &Withheld, path: &ExpectedPath, host_inode: u32) -> (Option<ProbeRoute>, Option<String>) {
    let route = |netns_label: &str, answer, leads_to| ProbeRoute {
        netns: host_inode,
        netns_label: netns_label.to_string(),
        dst: path.host_ip,
        answer,
        expected_device: path.host_veth.clone(),
        leads_to,
    };
    match w {
        Withheld::HostSide(why) => (None, Some(why.clone())),
        Withheld::NoRoute { netns, errno } => (Some(route(netns, Err(*errno), None)), None),
        Withheld::Elsewhere(e) => {
            let crate::system::connect::Elsewhere {
                netns,
                route: got,
                device,
                leads_to,
            } = e.as_ref();
            let answer = RouteAnswer {
                kind: got.kind.clone(),
                table: got.table,
                device: device.clone(),
                via: got.gateway,
            };
            let peer = leads_to.as_ref().map(|(ns, dev)| peer_side(ns, dev.clone()));
            (Some(route(netns, Ok(answer), peer)), None)
        }
    }
}

/// The far end of a veth, and whether a sandbox runs there (a VMM in that namespace, or an
/// E2B slot name).
fn peer_side(ns: &Netns, device: Option<String>) -> PeerSide {
    let running = crate::discovery::sandbox::running_in(ns.inode);
    let slot = ns
        .name
        .as_deref()
        .and_then(crate::discovery::sandbox::slot_from_netns);
    PeerSide {
        netns: ns.inode,
        netns_label: ns.label(),
        device,
        sandbox: running.is_some() || slot.is_some(),
        sandbox_id: running.and_then(|(id, _)| id),
    }
}
