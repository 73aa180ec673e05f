//! The text checklist: per check a status marker (✓ ok, ✗ problem, ! warning), what was
//! checked, the evidence, and the fix.
use std::fmt::Write as _;

use super::{SandboxReport, Status};

/// One sandbox's full checklist.
pub fn sandbox(r: &SandboxReport) -> String {
    let mut s = header(r);
    for c in &r.checks {
        let _ = writeln!(s, "  {} {}", c.status.marker(), c.title);
        let _ = writeln!(s, "      {}", c.evidence);
        if c.status != Status::Ok
            && let Some(fix) = &c.fix
        {
            let _ = writeln!(s, "      fix: {fix}");
        }
    }
    if !r.connect {
        let _ = writeln!(s, "  - envd reachability not tested (--no-connect)");
    }
    for n in &r.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    let _ = writeln!(s, "  {}\n", totals(r));
    s
}

/// `--all`: full checklists for sandboxes with something to say, one line for the others,
/// and a summary.
pub fn all(reports: &[SandboxReport]) -> String {
    if reports.is_empty() {
        return "no Firecracker sandboxes on this host\n".into();
    }
    let mut s = String::new();
    for r in reports {
        if r.problems + r.warnings > 0 {
            s += &sandbox(r);
        } else {
            let _ = writeln!(
                s,
                "✓ {} ({}): all {} checks passed",
                r.label(),
                r.netns,
                r.checks.len()
            );
        }
    }
    let broken: Vec<String> = reports
        .iter()
        .filter(|r| r.problems > 0)
        .map(|r| r.label())
        .collect();
    let warned = reports
        .iter()
        .filter(|r| r.problems == 0 && r.warnings > 0)
        .count();
    let _ = write!(
        s,
        "\n{} sandboxes: {} ok, {} with warnings only, {} with problems",
        reports.len(),
        reports.len() - broken.len() - warned,
        warned,
        broken.len()
    );
    if !broken.is_empty() {
        let _ = write!(s, " ({})", broken.join(", "));
    }
    s.push('\n');
    s
}

fn header(r: &SandboxReport) -> String {
    let mut parts = vec![match r.pid {
        Some(p) => format!("VMM pid {p}"),
        None => "no VMM running".into(),
    }];
    parts.push(match r.slot {
        Some(n) => format!("namespace {} (slot {n})", r.netns),
        None => format!("namespace {}", r.netns),
    });
    if let (Some(ns), Some(v)) = (&r.host_ns, &r.host_veth) {
        parts.push(format!("host side {ns}/{v}"));
    }
    if let Some(ip) = r.host_ip {
        parts.push(format!("host IP {ip} → guest {}", r.guest_ip));
    }
    if let Some(d) = r.datapath {
        parts.push(format!("datapath {}", d.name()));
    }
    let mut s = format!("sandbox {}: {}\n", r.label(), parts.join(", "));
    if let Some(tap) = &r.tap {
        let _ = writeln!(s, "  ({tap} lives in {}, not in the root namespace)", r.netns);
    }
    s
}

fn totals(r: &SandboxReport) -> String {
    match (r.problems, r.warnings) {
        (0, 0) => format!("all {} checks passed", r.checks.len()),
        (p, w) => format!(
            "{p} problem{}, {w} warning{} ({} checks)",
            if p == 1 { "" } else { "s" },
            if w == 1 { "" } else { "s" },
            r.checks.len()
        ),
    }
}
