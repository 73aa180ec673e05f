//! Reports: text for people and JSON for machines (schema in the README), both from the same
//! records. Repeated failures are shown once, with a count and a time range.
pub mod cause;
pub mod deep;
pub mod evidence;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod format;
pub mod hops;
pub mod html;
pub mod markdown;
pub mod mermaid;
pub mod parts;
pub mod pcapng;
pub mod places;
pub mod record;
pub mod sentences;
pub mod svg;
pub mod text;

use std::collections::HashMap;

pub use format::{Tuple, flags_str, hms};
pub use parts::Judged;
pub use record::{JourneyRecord, SandboxRef};
use tracer_model::path::ExpectedPath;

use crate::{
    events::decode::Clock,
    output::{Format, Output},
};
use hops::hop_record;
use parts::VerdictParts;

/// Where the report goes and how it looks.
pub struct Reporter {
    out: Output,
    all_hops: bool,
    clock: Clock,
    path: Option<ExpectedPath>,
    sandbox: Option<SandboxRef>,
    groups: HashMap<String, Group>,
    order: Vec<String>,
    /// Where the tracer could not attach (put on every record).
    blind_spots: Vec<String>,
    /// Deep mode: hops carry the packet and skb facts (`hops[].deep`).
    deep: bool,
}

struct Group {
    record: JourneyRecord,
    first_ns: u64,
    last_ns: u64,
    reported_count: u64,
    /// Reply delays of the group's attempts (the latest [`MAX_DELAYS`]).
    delays: std::collections::VecDeque<f64>,
}

/// Reply delays kept per group for the repeat summary.
const MAX_DELAYS: usize = 4096;

impl Reporter {
    pub fn new(out: Output, all_hops: bool, path: Option<&ExpectedPath>) -> Self {
        Self {
            out,
            all_hops,
            clock: Clock::new(),
            path: path.cloned(),
            sandbox: path.map(SandboxRef::from_path),
            groups: HashMap::new(),
            order: Vec::new(),
            blind_spots: Vec::new(),
            deep: false,
        }
    }

    /// Deep mode: every hop's packet and skb facts go into the records.
    pub fn with_deep(mut self, deep: bool) -> Self {
        self.deep = deep;
        self
    }

    /// Places the tracer could not attach to: every verdict says so.
    pub fn with_blind_spots(mut self, blind_spots: Vec<String>) -> Self {
        self.blind_spots = blind_spots;
        self
    }

    /// Records a judged journey; prints it when it is the first of its kind (or always with
    /// --all-hops). Returns the record.
    pub fn add(&mut self, j: Judged<'_>) -> std::io::Result<JourneyRecord> {
        let (sig, record) = self.record(j);
        let first_ns = j.journey.first_ns;
        let new = !self.groups.contains_key(&sig);
        let g = self.groups.entry(sig.clone()).or_insert_with(|| Group {
            record: record.clone(),
            first_ns,
            last_ns: first_ns,
            reported_count: 0,
            delays: Default::default(),
        });
        g.record.count += if new { 0 } else { 1 };
        if let Some(ms) = record.late.as_ref().map(|l| l.reply_ms).or(record.reply_ms) {
            if g.delays.len() >= MAX_DELAYS {
                g.delays.pop_front();
            }
            g.delays.push_back(ms);
        }
        g.first_ns = g.first_ns.min(first_ns);
        g.last_ns = g.last_ns.max(first_ns);
        if new {
            self.order.push(sig.clone());
        }
        if new || self.all_hops {
            let g = self.groups.get_mut(&sig).expect("inserted");
            g.reported_count = g.record.count;
            self.print(&record, j.verdict.failing_hop)?;
        }
        Ok(record)
    }

    fn print(&mut self, r: &JourneyRecord, failing: Option<usize>) -> std::io::Result<()> {
        match self.out.format {
            Format::Json => self.out.json_line(r),
            Format::Text => {
                let t = text::journey(&self.out, r, failing, self.all_hops);
                self.out.text(&t)
            }
        }
    }

    /// At the end (or periodically): how often each failure repeated since it was printed.
    pub fn print_repeats(&mut self) -> std::io::Result<()> {
        for sig in &self.order {
            let g = self.groups.get_mut(sig).expect("ordered groups exist");
            if g.record.count <= g.reported_count {
                continue;
            }
            g.reported_count = g.record.count;
            let mut rec = g.record.clone();
            rec.kind = "repeat".into();
            rec.first_seen = hms(self.clock.unix_ns(g.first_ns));
            rec.last_seen = hms(self.clock.unix_ns(g.last_ns));
            rec.hops.clear();
            rec.reply_delays_ms = record::DelaySummary::of(g.delays.make_contiguous());
            match self.out.format {
                Format::Json => self.out.json_line(&rec)?,
                Format::Text => {
                    let t = text::repeat(&self.out, &rec);
                    self.out.text(&t)?
                }
            }
        }
        Ok(())
    }

    /// The aggregation key and the JSON record of a judged journey.
    pub fn record(&self, j: Judged<'_>) -> (String, JourneyRecord) {
        let path = self.path.as_ref();
        let facts = j.facts(path);
        let parts = VerdictParts::new(&j, path);
        let sig = parts.signature(j.verdict.outcome);
        let journey = j.journey;
        let t0 = journey.first_ns;
        let record = JourneyRecord {
            kind: "journey".into(),
            schema_version: record::SCHEMA_VERSION,
            sandbox: self.sandbox.clone(),
            outcome: j.verdict.outcome,
            summary: sentences::summary(facts),
            fix: sentences::fix(facts),
            clauses: record::clauses(facts),
            drop: parts.drop,
            reset: parts.reset,
            unreachable: parts.unreachable,
            queued: parts.queued,
            late: parts.late,
            misdirected: parts.misdirected,
            reply_ms: j.verdict.reply_ms,
            findings: parts.findings,
            cause: parts.cause,
            explained_by: j.explained_by.to_vec(),
            evidence: parts.evidence,
            actors: parts.actors,
            divergence: parts.divergence,
            client: journey.client().map(|(a, p)| format!("{a}:{p}")),
            target: journey.target.map(|(a, p)| format!("{a}:{p}")),
            count: 1,
            first_seen: hms(self.clock.unix_ns(journey.first_ns)),
            last_seen: hms(self.clock.unix_ns(journey.last_ns)),
            reply_delays_ms: None,
            verdict_latency_us: Clock::now_mono_ns()
                .saturating_sub(journey.decided_at.unwrap_or(journey.last_ns))
                / 1000,
            lost_events: j.lost_events,
            blind_spots: self.blind_spots.clone(),
            hops: journey
                .hops
                .iter()
                .map(|(leg, h)| hop_record(*leg, h, t0, self.deep))
                .collect(),
            failing_hop: j.verdict.failing_hop,
            deep: j.context.cloned(),
        };
        (sig, record)
    }
}
