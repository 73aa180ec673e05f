//! The JSON records of a trace (schema in the README), built from a judged journey. The same
//! records are what text output is rendered from, and what `tracer report` reads back.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tracer_model::{
    engine::{ActorId, How, Role},
    facts::ReaderFact,
    hook::Hook,
    hop::{Hop, HopKind},
    journey::{Journey, Leg},
    path::ExpectedPath,
    rule::RuleName,
    verdict::{
        Direction, FindingKind, LateFate, MisdirectedBy, Outcome, QueueKind, ReplyKind, ResetBy,
        UnreachableKind, Verdict,
    },
};

use super::{
    deep::{DeepContext, DeepRecord},
    evidence::{Evidence, EvidenceRecord},
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
    /// Deep mode (`--deep`): the packet and skb at this hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep: Option<DeepRecord>,
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
    /// The error the client or the route lookup got (EACCES, ENETUNREACH ...).
    #[serde(default)]
    pub errno: Option<String>,
}

/// Where an attempt went instead of its sandbox (`misdirected`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MisdirectedRecord {
    /// `route` (the host side's route, read before a probe that was then not sent) or
    /// `events` (its packets were seen there).
    pub by: MisdirectedBy,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub out_device: Option<String>,
    pub sandbox_id: Option<String>,
    pub answered: bool,
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

/// The VMM process as /proc showed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReaderRecord {
    pub pid: u32,
    pub comm: String,
    pub state: String,
    pub holds_tap: bool,
}

impl From<&ReaderFact> for ReaderRecord {
    fn from(r: &ReaderFact) -> Self {
        Self {
            pid: r.pid,
            comm: r.comm.clone(),
            state: r.state.to_string(),
            holds_tap: r.holds_tap,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueuedRecord {
    pub queue: QueueKind,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// The process that should read the tap (null: none holds it).
    pub reader: Option<ReaderRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    pub reply: ReplyKind,
    /// ms from the SYN to the reply.
    pub reply_ms: f64,
    /// ms from the SYN to the client giving up.
    pub timeout_ms: f64,
    /// ms from the client giving up to the reply.
    pub after_timeout_ms: f64,
    /// What became of the reply: `{kind: dropped|reset, netns, device, reason}`.
    pub fate: Option<LateFateRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LateFateRecord {
    pub kind: String,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub reason: Option<String>,
}

/// Reply delays of a group of attempts, in ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelaySummary {
    pub count: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl DelaySummary {
    pub fn of(delays: &[f64]) -> Option<Self> {
        let mut d: Vec<f64> = delays.iter().copied().filter(|x| x.is_finite()).collect();
        if d.is_empty() {
            return None;
        }
        d.sort_by(|a, b| a.total_cmp(b));
        Some(Self {
            count: d.len(),
            min: d[0],
            median: d[d.len() / 2],
            max: d[d.len() - 1],
        })
    }
}

/// One decided journey (or group of identical ones) in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JourneyRecord {
    #[serde(rename = "type")]
    pub kind: String,
    /// The record layout ([`SCHEMA_VERSION`]; 1 when absent: written by an older tracer).
    #[serde(default = "schema_v1")]
    pub schema_version: u32,
    pub sandbox: Option<SandboxRef>,
    pub outcome: Outcome,
    pub summary: String,
    pub fix: Option<String>,
    /// The clauses `summary` and `fix` are made of, each with the ids of the `evidence`
    /// items it is written from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clauses: Vec<ClauseRecord>,
    pub drop: Option<DropRecord>,
    pub reset: Option<ResetRecord>,
    pub unreachable: Option<UnreachableRecord>,
    /// For `queued`: where the packet waits, and who should read it.
    #[serde(default)]
    pub queued: Option<QueuedRecord>,
    /// For `late`: when the reply came and what became of it.
    #[serde(default)]
    pub late: Option<LateRecord>,
    /// For `misdirected`: where the attempt went instead.
    #[serde(default)]
    pub misdirected: Option<MisdirectedRecord>,
    /// ms from the SYN to the first reply (connected, reset, late).
    #[serde(default)]
    pub reply_ms: Option<f64>,
    pub findings: Vec<FindingRecord>,
    pub cause: Option<FindingRecord>,
    pub explained_by: Vec<String>,
    /// What the verdict rests on, one typed item each: the deciding event(s) and the facts
    /// read at decision time (and where they were read).
    #[serde(default, deserialize_with = "super::evidence::compat")]
    pub evidence: Vec<EvidenceRecord>,
    pub client: Option<String>,
    pub target: Option<String>,
    /// How many attempts ended this way, and when.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// µs from the kernel event that decided the outcome to this record (report latency).
    pub verdict_latency_us: u64,
    /// In `repeat` records of `late` and `connected` attempts: their reply delays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_delays_ms: Option<DelaySummary>,
    /// Events the kernel could not queue (ring buffer full) while this attempt ran: when
    /// not 0, the verdict may rest on fewer events than it should.
    #[serde(default)]
    pub lost_events: u64,
    /// Places on the path the tracer could not attach to (a device whose tcx attach failed):
    /// events there are missing, and the verdict says less about them.
    #[serde(default)]
    pub blind_spots: Vec<String>,
    pub hops: Vec<HopRecord>,
    /// Index in `hops` of the hop where it went wrong (null: none, or connected).
    #[serde(default)]
    pub failing_hop: Option<usize>,
    /// Deep mode (`--deep`): the flow's conntrack entries, routes and neighbours, read at the
    /// verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep: Option<DeepContext>,
    /// Who acted on the packet where it failed (a rule, a process, a route), when known.
    /// Newer records carry it; a malformed value reads as none rather than losing the record.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<ActorRecord>,
    /// Where the journey first differed from the expected path, when known.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub divergence: Option<DivergenceRecord>,
}

/// One clause of the summary or the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClauseRecord {
    /// `cause`, `effect`, `actors` (of the summary) or `fix`.
    pub part: super::sentences::Part,
    pub text: String,
    /// Ids of the `evidence` items it rests on.
    pub evidence: Vec<usize>,
}

/// The clauses of a verdict's summary and fix.
pub fn clauses(f: super::sentences::Facts<'_>) -> Vec<ClauseRecord> {
    let summary = super::sentences::summary_clauses(f);
    let fix = super::sentences::fix_clause(f).map(|c| (super::sentences::Part::Fix, c));
    summary
        .into_iter()
        .chain(fix)
        .map(|(part, c)| ClauseRecord {
            part,
            text: c.text,
            evidence: c.evidence,
        })
        .collect()
}

/// One actor: who acted on the packet, where, and how the engine singled it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActorRecord {
    /// `cause`, `candidate` (one of several the events cannot tell apart), `effect` (it
    /// acted on a packet already wrong).
    pub role: Option<Role>,
    /// `counter`, `evaluated`, `event`, `state`.
    pub how: Option<How>,
    /// The identity's kind: `firewall_rule`, `route`, `policy_rule`, `neighbour`, `sysctl`,
    /// `bpf_program`, ...
    pub kind: Option<String>,
    pub netns: Option<String>,
    pub device: Option<String>,
    /// Where it acts on the path.
    pub place: Option<String>,
    /// What it does to this packet.
    pub does: Option<String>,
    /// Its name, one clause.
    pub text: Option<String>,
    /// The typed identity (its fields depend on `kind`).
    pub id: Option<ActorId>,
    /// The evidence item it rests on.
    pub evidence: Option<usize>,
}

/// The first hop where the packet differed from its expected path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DivergenceRecord {
    pub leg: Option<Leg>,
    /// Index in `hops`.
    pub hop: Option<usize>,
    /// The last hop of the same leg before it that matched (index in `hops`).
    pub last_match: Option<usize>,
    /// `namespace`, `point`, `device`, `destination`, `source`, `conntrack`, `ttl`, `mark`,
    /// `l2_destination`.
    pub field: Option<String>,
    /// Strings in practice; any JSON value is kept and shown as JSON.
    pub expected: serde_json::Value,
    pub observed: serde_json::Value,
    pub netns: Option<String>,
    pub device: Option<String>,
    pub point: Option<String>,
}

/// The version of the record layout: 2 added `divergence`, `actors`, typed `evidence`, and
/// the `misdirected` outcome. Records without it are version 1.
pub const SCHEMA_VERSION: u32 = 2;

fn schema_v1() -> u32 {
    1
}

/// Reads an optional part of a record written by another version of the tracer: a value of
/// another shape becomes the default, so the rest of the record still renders.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
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
    /// Deep mode: what was read at the verdict.
    pub context: Option<&'a DeepContext>,
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
    pub queued: Option<QueuedRecord>,
    pub late: Option<LateRecord>,
    pub misdirected: Option<MisdirectedRecord>,
    pub findings: Vec<FindingRecord>,
    pub cause: Option<FindingRecord>,
    pub evidence: Vec<EvidenceRecord>,
    pub actors: Vec<ActorRecord>,
    pub divergence: Option<DivergenceRecord>,
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
                errno: u.errno.clone(),
            }),
            queued: v.queued.as_ref().map(|q| QueuedRecord {
                queue: q.queue,
                netns: q.netns.clone(),
                device: q.device.clone(),
                reader: q.reader.as_ref().map(ReaderRecord::from),
            }),
            late: v.late.as_ref().map(|l| LateRecord {
                reply: l.reply,
                reply_ms: l.reply_ms,
                timeout_ms: l.timeout_ms,
                after_timeout_ms: l.after_timeout_ms,
                fate: l.fate.as_ref().map(|f| match f {
                    LateFate::Dropped {
                        reason,
                        netns,
                        device,
                    } => LateFateRecord {
                        kind: "dropped".into(),
                        netns: netns.clone(),
                        device: device.clone(),
                        reason: Some(reason.name().to_string()),
                    },
                    LateFate::ResetBy { netns } => LateFateRecord {
                        kind: "reset".into(),
                        netns: netns.clone(),
                        device: None,
                        reason: None,
                    },
                }),
            }),
            misdirected: v.misdirected.as_ref().map(|m| MisdirectedRecord {
                by: m.by,
                netns: m.netns.clone(),
                device: m.device.clone(),
                out_device: m.out_device.clone(),
                sandbox_id: m.sandbox_id.clone(),
                answered: m.answered,
            }),
            findings: v.findings.iter().map(finding).collect(),
            cause: v.cause.as_ref().map(finding),
            evidence: Evidence::of(j.journey, v, path).items,
            actors: actor_records(v, &Evidence::of(j.journey, v, path)),
            divergence: v.divergence.as_ref().map(|d| divergence_record(j.journey, d)),
        }
    }

    /// What makes two verdicts "the same failure" for aggregation (timings apart: attempts
    /// that are late by different amounts are the same problem).
    pub fn signature(&self, outcome: Outcome) -> String {
        let late = self.late.as_ref().map(|l| (l.reply, &l.fate));
        serde_json::to_string(&(
            outcome,
            &self.drop,
            &self.reset,
            &self.unreachable,
            &self.queued,
            late,
            &self.misdirected,
            &self.findings,
            self.actors.iter().map(|a| (&a.role, &a.id)).collect::<Vec<_>>(),
            self.divergence.as_ref().map(|d| (&d.field, &d.netns, &d.point)),
        ))
        .unwrap_or_default()
    }
}

fn actor_records(v: &Verdict, e: &Evidence) -> Vec<ActorRecord> {
    v.actors
        .iter()
        .enumerate()
        .map(|(i, a)| ActorRecord {
            role: Some(a.role),
            how: Some(a.how),
            kind: Some(super::evidence::id_kind(&a.id).to_string()),
            netns: a.netns.clone(),
            device: a.device.clone(),
            place: Some(a.place.clone()),
            does: Some(a.does.clone()),
            text: Some(a.id.name()),
            id: Some(a.id.clone()),
            evidence: e.actors.get(i).copied(),
        })
        .collect()
}

fn divergence_record(j: &Journey, d: &tracer_model::engine::Divergence) -> DivergenceRecord {
    let h = j.hops.get(d.hop).map(|(_, h)| h);
    DivergenceRecord {
        leg: Some(d.leg),
        hop: Some(d.hop),
        last_match: d.last_match,
        field: serde_json::to_value(d.field)
            .ok()
            .and_then(|v| v.as_str().map(String::from)),
        expected: d.expected.clone().into(),
        observed: d.observed.clone().into(),
        netns: h.map(Hop::ns_label),
        device: h.and_then(|h| h.device.clone()),
        point: h.map(point_name),
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

/// One hop as JSON; `deep`: with deep mode's packet and skb facts.
pub fn hop_record(leg: Leg, h: &Hop, t0: u64, deep: bool) -> HopRecord {
    HopRecord {
        t_us: (h.ts_ns.saturating_sub(t0)) as f64 / 1000.0,
        leg,
        netns: h.ns_label(),
        device: h.device.clone(),
        point: point_name(h),
        tuple: h.is_packet().then(|| Tuple(&h.pkt).to_string()),
        flags: h.is_packet().then(|| flags_str(h.pkt.flags)),
        detail: detail(h),
        deep: h.deep.as_deref().filter(|_| deep).map(DeepRecord::from_hop),
    }
}
