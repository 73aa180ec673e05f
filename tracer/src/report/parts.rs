//! From a judged journey to the parts of its JSON record: the outcome's details, the
//! evidence, the actors and the divergence, as the record's types.
use tracer_model::{
    hop::Hop,
    journey::Journey,
    path::ExpectedPath,
    rule::RuleName,
    verdict::{LateFate, Outcome, Verdict},
};

use super::{
    deep::DeepContext,
    evidence::{Evidence, EvidenceRecord},
    hops::point_name,
    record::*,
    sentences::{self, Facts},
};

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
                split: l.split.as_ref().map(|s| LateSplitRecord {
                    to_guest_ms: s.to_guest_ms,
                    guest_ms: s.guest_ms,
                    waited: s.waited.as_ref().map(|(ms, netns, device)| WaitedRecord {
                        ms: *ms,
                        netns: netns.clone(),
                        device: device.clone(),
                    }),
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
