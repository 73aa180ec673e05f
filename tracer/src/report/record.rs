//! The JSON records of a trace (schema in the README): their types, as `parts` builds them
//! from a judged journey. The same records are what text output is rendered from, and what
//! `tracer report` reads back.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tracer_model::{
    engine::{ActorId, How, Role},
    facts::ReaderFact,
    hook::Hook,
    journey::Leg,
    path::ExpectedPath,
    verdict::{
        Direction, FindingKind, MisdirectedBy, Outcome, QueueKind, ReplyKind, ResetBy, UnreachableKind,
    },
};

pub use super::hops::HopRecord;
use super::{deep::DeepContext, evidence::EvidenceRecord};

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
    /// Where the time went (absent when the SYN's last sighting and the reply's first are not
    /// on one device): `{to_guest_ms, guest_ms, waited: {ms, netns, device}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<LateSplitRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateSplitRecord {
    pub to_guest_ms: f64,
    pub guest_ms: f64,
    /// The request's longest wait between two of its hops, and where it was.
    pub waited: Option<WaitedRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitedRecord {
    pub ms: f64,
    pub netns: String,
    pub device: Option<String>,
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
