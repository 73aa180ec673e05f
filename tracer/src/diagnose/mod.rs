//! The configuration checks behind `tracer doctor` and the trace's tie-in: a read-only
//! preflight of a sandbox's network. It reads the configuration
//! of the path (processes, devices, addresses, routes, sysctls, firewall rules, conntrack,
//! neighbours) and names what is wrong, each with its evidence and a fix. It changes nothing;
//! its only traffic is a short connection attempt to envd from the host side, like the
//! orchestrator's (50 ms each, at most three, stopping at the first answer; skipped with
//! `--no-connect`).
//!
//! It also guards against the classic misdiagnosis: `tap0` lives in the sandbox's namespace,
//! so `ip link` in the root namespace does not show it, and creating one there fixes nothing.
mod checks;
mod explain;
mod facts;
pub mod render;

use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use serde::Serialize;

pub use explain::explain;
pub use facts::{DEFAULT_GUEST_IP, ENVD_PORT};

use crate::{discovery::sandbox::Sandbox, system::firewall::Rulesets};

/// Sandboxes checked at once by `--all`: most of the time goes to iptables/nft children and
/// netlink round trips, so a few more than the cores keeps them busy.
const MAX_WORKERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Problem,
    Warning,
}

impl Status {
    /// The checklist marker.
    pub fn marker(self) -> &'static str {
        match self {
            Self::Ok => "✓",
            Self::Problem => "✗",
            Self::Warning => "!",
        }
    }
}

/// One check: what was checked, what was found and where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier (`tap_reader`, `forward_policy` ...).
    pub id: &'static str,
    pub status: Status,
    /// What was checked.
    pub title: String,
    /// What was read, where; for a problem, a sentence that says what is wrong.
    pub evidence: String,
    pub fix: Option<String>,
    /// The namespace the check is about.
    pub netns: Option<String>,
    pub device: Option<String>,
}

impl Check {
    pub fn new(id: &'static str, title: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Ok,
            title: title.into(),
            evidence: String::new(),
            fix: None,
            netns: None,
            device: None,
        }
    }

    pub fn netns(mut self, ns: impl Into<String>) -> Self {
        self.netns = Some(ns.into());
        self
    }

    pub fn device(mut self, dev: Option<&str>) -> Self {
        self.device = dev.map(str::to_string);
        self
    }

    pub fn ok(mut self, evidence: impl Into<String>) -> Self {
        self.status = Status::Ok;
        self.evidence = evidence.into();
        self
    }

    pub fn problem(mut self, evidence: impl Into<String>, fix: impl Into<String>) -> Self {
        self.status = Status::Problem;
        self.evidence = evidence.into();
        self.fix = Some(fix.into());
        self
    }

    pub fn warning(mut self, evidence: impl Into<String>, fix: impl Into<String>) -> Self {
        self.status = Status::Warning;
        self.evidence = evidence.into();
        self.fix = Some(fix.into());
        self
    }
}

/// The checks of one sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxReport {
    pub id: Option<String>,
    pub pid: Option<u32>,
    pub netns: String,
    pub slot: Option<u32>,
    pub tap: Option<String>,
    pub host_ns: Option<String>,
    pub host_veth: Option<String>,
    pub host_ip: Option<Ipv4Addr>,
    pub guest_ip: Ipv4Addr,
    /// E2B's datapath (`v1`, `v2`), when the namespace's NAT rules say.
    pub datapath: Option<crate::system::firewall::nat::Datapath>,
    /// Whether the envd connection attempt was made.
    pub connect: bool,
    pub problems: usize,
    pub warnings: usize,
    /// What discovery noticed on the way (inconsistencies, a VMM that is gone).
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
}

impl SandboxReport {
    fn new(f: &facts::Facts, connect: bool, checks: Vec<Check>) -> Self {
        let count = |s| checks.iter().filter(|c| c.status == s).count();
        Self {
            id: f.sb.id.clone(),
            pid: f.sb.pid,
            netns: f.sb.netns.label(),
            slot: f.sb.slot,
            tap: f.sb.tap.clone(),
            host_ns: f.sb.host_ns.as_ref().map(|n| n.label()),
            host_veth: f.sb.host_veth.clone(),
            host_ip: f.host_ip,
            guest_ip: f.guest_ip,
            datapath: f.sb.datapath,
            connect,
            problems: count(Status::Problem),
            warnings: count(Status::Warning),
            notes: f.sb.warnings.clone(),
            checks,
        }
    }

    pub fn label(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.netns.clone())
    }
}

/// Checks one sandbox (reading its host side afresh).
pub fn check(sb: &Sandbox, connect: bool) -> SandboxReport {
    check_shared(sb, connect, &facts::Shared::default())
}

/// Like [`check`], with rulesets read just before by the caller (by namespace inode).
pub fn check_with_rules(sb: &Sandbox, connect: bool, rules: HashMap<u32, Arc<Rulesets>>) -> SandboxReport {
    check_shared(sb, connect, &facts::Shared::with_rules(rules))
}

fn check_shared(sb: &Sandbox, connect: bool, shared: &facts::Shared) -> SandboxReport {
    let f = facts::gather(sb, connect, shared);
    SandboxReport::new(&f, connect, checks::all(&f))
}

/// Checks many sandboxes on a few threads, sharing what their host side has in common. The
/// reports come back in the order of `sandboxes`.
pub fn check_all(sandboxes: &[Sandbox], connect: bool) -> Vec<SandboxReport> {
    let shared = facts::Shared::default();
    crate::system::pool::map(
        sandboxes,
        MAX_WORKERS,
        || (),
        |_, sb| Some(check_shared(sb, connect, &shared)),
    )
}
