//! The JSON records of a trace (schema in the README), built from a judged journey. The same
//! records are what text output is rendered from, and what `tracer report` reads back.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tracer_model::{
    hook::Hook,
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::ExpectedPath,
    rule::RuleName,
    verdict::{Direction, FindingKind, Outcome, ResetBy, UnreachableKind, Verdict},
};

use super::{
    format::{Tuple, flags_str},
    sentences::{self, Facts},
};

/// The sandbox part of a JSON record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRef {
    pub id: Option<String>,
    pub netns: String,
    pub tap: String,
    pub guest_ip: String,
    pub host_ip: String,
    pub pid: Option<u32>,
}

impl SandboxRef {
    pub fn from_path(p: &ExpectedPath) -> Self {
        Self {
            id: p.sandbox_id.clone(),
            netns: p.sandbox_ns.label(),
            tap: p.tap.clone(),
            guest_ip: p.guest_ip.to_string(),
            host_ip: p.host_ip.to_string(),
            pid: p.vmm_pid,
        }
    }
}

/// One hop in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HopRecord {
    /// µs since the journey's first event.
    pub t_us: f64,
    pub leg: Leg,
    pub netns: String,
    pub device: Option<String>,
    /// e.g. `tcx/ingress`, `nf/FORWARD`, `drop`, `xmit`.
    pub point: String,
    pub tuple: Option<String>,
    pub flags: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DropRecord {
    pub direction: Direction,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub out_device: Option<String>,
    pub hook: Option<Hook>,
    pub table: Option<String>,
    pub chain: Option<String>,
    pub rule: Option<String>,
    /// Why chain/rule are null, when they are.
    pub rule_note: Option<String>,
    pub reason: String,
    pub function: Option<String>,
    pub location: Option<String>,
    pub priority_window: Option<(i32, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResetRecord {
    pub by: ResetBy,
    pub netns: Option<String>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnreachableRecord {
    pub kind: UnreachableKind,
    pub address: Ipv4Addr,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FindingRecord {
    pub kind: FindingKind,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub hook: Option<Hook>,
    pub table: Option<String>,
    pub detail: String,
}

/// One decided journey (or group of identical ones) in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JourneyRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub sandbox: Option<SandboxRef>,
    pub outcome: Outcome,
    pub summary: String,
    pub fix: Option<String>,
    pub drop: Option<DropRecord>,
    pub reset: Option<ResetRecord>,
    pub unreachable: Option<UnreachableRecord>,
    pub findings: Vec<FindingRecord>,
    pub cause: Option<FindingRecord>,
    pub explained_by: Vec<String>,
    pub client: Option<String>,
    pub target: Option<String>,
    /// How many attempts ended this way, and when.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// µs from the kernel event that decided the outcome to this record (report latency).
    pub verdict_latency_us: u64,
    /// Events the kernel could not queue (ring buffer full) while this attempt ran: when
    /// not 0, the verdict may rest on fewer events than it should.
    #[serde(default)]
    pub lost_events: u64,
    pub hops: Vec<HopRecord>,
}

/// A journey with everything known about its outcome: the verdict, the rule naming found for
/// a netfilter drop, and the doctor's findings that explain it.
#[derive(Clone, Copy)]
pub struct Judged<'a> {
    pub journey: &'a Journey,
    pub verdict: &'a Verdict,
    pub rule: Option<&'a RuleName>,
    pub explained_by: &'a [String],
    /// Events lost while the journey ran.
    pub lost_events: u64,
}

impl Judged<'_> {
    pub fn facts<'b>(&'b self, path: Option<&'b ExpectedPath>) -> Facts<'b> {
        Facts {
            journey: self.journey,
            verdict: self.verdict,
            rule: self.rule,
            path,
        }
    }
}

/// The verdict's parts as JSON records (the aggregation key, and the record's fields).
pub struct VerdictParts {
    pub drop: Option<DropRecord>,
    pub reset: Option<ResetRecord>,
    pub unreachable: Option<UnreachableRecord>,
    pub findings: Vec<FindingRecord>,
    pub cause: Option<FindingRecord>,
}

impl VerdictParts {
    pub fn new(j: &Judged<'_>, path: Option<&ExpectedPath>) -> Self {
        let f = j.facts(path);
        let v = j.verdict;
        let finding = |x: &tracer_model::verdict::Finding| FindingRecord {
            kind: x.kind,
            netns: x.netns.clone(),
            device: x.device.clone(),
            hook: x.hook,
            table: x.table.clone(),
            detail: sentences::finding_detail(x, path),
        };
        Self {
            drop: v.drop.as_ref().map(|d| DropRecord {
                direction: d.direction,
                netns: d.netns.clone(),
                device: d.device.clone(),
                out_device: d.out_device.clone(),
                hook: d.hook,
                table: f.table(),
                chain: j.rule.and_then(|r| r.chain.clone()),
                rule: j.rule.and_then(|r| r.rule.as_ref()).map(|r| r.render()),
                rule_note: j.rule.and_then(|r| r.note.as_ref()).map(sentences::rule_note),
                reason: d.reason.name().to_string(),
                function: d.function.clone(),
                location: d.location.clone(),
                priority_window: d.priority_window,
            }),
            reset: v.reset.as_ref().map(|r| ResetRecord {
                by: r.by,
                netns: r.netns.clone(),
                device: r.device.clone(),
            }),
            unreachable: v.unreachable.as_ref().map(|u| UnreachableRecord {
                kind: u.kind,
                address: u.address,
                netns: u.netns.clone(),
                device: u.device.clone(),
                state: u.state.clone(),
            }),
            findings: v.findings.iter().map(finding).collect(),
            cause: v.cause.as_ref().map(finding),
        }
    }

    /// What makes two verdicts "the same failure" for aggregation.
    pub fn signature(&self, outcome: Outcome) -> String {
        serde_json::to_string(&(
            outcome,
            &self.drop,
            &self.reset,
            &self.unreachable,
            &self.findings,
        ))
        .unwrap_or_default()
    }
}

pub fn point_name(h: &Hop) -> String {
    match &h.kind {
        HopKind::Drop { .. } => "drop".into(),
        HopKind::Consumed => "consumed".into(),
        HopKind::Tcx { ingress: true } => "tcx/ingress".into(),
        HopKind::Tcx { ingress: false } => "tcx/egress".into(),
        HopKind::Xmit => "xmit".into(),
        HopKind::Receive => "receive".into(),
        HopKind::Netfilter { hook, .. } => format!("nf/{}", hook.name()),
        HopKind::Socket { .. } => "socket".into(),
        HopKind::SendReset { .. } => "send-reset".into(),
        HopKind::RecvReset => "recv-reset".into(),
        HopKind::Route { .. } => "route".into(),
        HopKind::Neigh { .. } => "neigh".into(),
    }
}

pub fn detail(h: &Hop) -> Option<String> {
    match &h.kind {
        HopKind::Drop { reason } => Some(format!(
            "{reason}{}",
            h.location
                .as_ref()
                .map(|l| format!(" at {l}"))
                .unwrap_or_default()
        )),
        HopKind::Consumed => h.location.as_ref().map(|l| format!("freed normally at {l}")),
        HopKind::Netfilter {
            priority,
            slot,
            in_dev,
            out_dev,
            ..
        } => Some(format!(
            "{}{}",
            match *slot as usize {
                0 => "entered the hook".to_string(),
                s if s + 1 == tracer_common::NF_SLOT_PRIORITIES.len() => "passed every table".to_string(),
                _ => format!("passed priority {priority}"),
            },
            match (in_dev, out_dev) {
                (Some(i), Some(o)) => format!(", {i} → {o}"),
                (Some(i), None) => format!(", in {i}"),
                (None, Some(o)) => format!(", out {o}"),
                _ => String::new(),
            }
        )),
        HopKind::Socket { old, new, .. } => Some(format!("{old} → {new}")),
        HopKind::SendReset { reason } => Some(format!("stack answers RST ({reason})")),
        HopKind::RecvReset => Some("socket received RST".into()),
        HopKind::Route { table, error, .. } => Some(if *error == 0 {
            format!("table {table}: found")
        } else {
            format!("table {table}: no route (err {error})")
        }),
        HopKind::Neigh {
            address, old, new, ..
        } => Some(format!("{address}: {old} → {new}")),
        _ => None,
    }
}

pub fn hop_record(leg: Leg, h: &Hop, t0: u64) -> HopRecord {
    HopRecord {
        t_us: (h.ts_ns.saturating_sub(t0)) as f64 / 1000.0,
        leg,
        netns: h.ns_label(),
        device: h.device.clone(),
        point: point_name(h),
        tuple: h.is_packet().then(|| Tuple(&h.pkt).to_string()),
        flags: h.is_packet().then(|| flags_str(h.pkt.flags)),
        detail: detail(h),
    }
}
