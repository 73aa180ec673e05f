//! Incidents: one per sandbox while its envd attempts fail. The first failed attempt opens
//! it (and asks for a zoom-in); the first judged attempt of the zoom-in is its verdict, printed
//! once as an `incident` record; later failures only count (`repeat` records at a bounded
//! rate, with the reply delays of late attempts); the first attempt that connects again
//! closes it with a `resolved` record. Pure: the watcher's loop feeds it and prints what it
//! returns.
use std::collections::{HashMap, VecDeque};

use serde_json::{Value, json};
use tracer_model::{attempts::End, verdict::Outcome};

use super::registry::Key;
use crate::report::{
    format::rfc3339,
    record::{DelaySummary, JourneyRecord, SandboxRef},
};

/// Open incidents at most: one per failing sandbox.
pub const MAX_OPEN: usize = 4096;
/// Reply delays kept per incident (the latest ones).
const MAX_DELAYS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the zoom-in's verdict.
    Localizing,
    /// Waiting for a zoom-in slot (`--max-zoom` are busy).
    Queued,
    /// The incident record was printed.
    Reported,
}

#[derive(Debug, Clone)]
pub struct Incident {
    pub id: String,
    pub sandbox: SandboxRef,
    pub state: State,
    first_failure_unix: u64,
    last_failure_unix: u64,
    /// Failed attempts since it opened, and of them refused (RST).
    failed: u64,
    refused: u64,
    /// Failed attempts when it was last printed.
    printed_failed: u64,
    printed_at_ns: u64,
    queued: bool,
    outcome: Option<Outcome>,
    summary: String,
    delays: VecDeque<f64>,
    /// The last drop of one of its packets detection saw (namespace, device, kernel reason,
    /// function): what an incident that could not zoom in can still say.
    seen_drop: Option<SeenDrop>,
}

/// A drop of a sandbox's envd packet, as detection saw it: the event itself and its leg (no
/// hook, table or rule: those take a zoom-in). The engine decides what it shows.
#[derive(Debug, Clone)]
pub struct SeenDrop {
    pub leg: tracer_model::journey::Leg,
    pub hop: tracer_model::hop::Hop,
}

impl Incident {
    fn sandbox_value(&self) -> Value {
        serde_json::to_value(&self.sandbox).unwrap_or(Value::Null)
    }

    fn delays(&self) -> Option<DelaySummary> {
        let all: Vec<f64> = self.delays.iter().copied().collect();
        DelaySummary::of(&all)
    }
}

pub struct Incidents {
    open: HashMap<Key, Incident>,
    /// Makes ids unique across runs: the watcher's start time.
    prefix: String,
    next: u64,
    repeat_every_ns: u64,
    /// Incidents not opened because [`MAX_OPEN`] were open.
    pub refused: u64,
    /// Drops seen for sandboxes without an open incident (at most [`MAX_OPEN`]).
    pending_drops: HashMap<Key, SeenDrop>,
}

impl Incidents {
    pub fn new(start_unix_ns: u64, repeat_every_ns: u64) -> Self {
        Self {
            open: HashMap::new(),
            prefix: format!("{:x}", start_unix_ns / 1_000_000_000),
            next: 1,
            repeat_every_ns,
            refused: 0,
            pending_drops: HashMap::new(),
        }
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn get(&self, key: &Key) -> Option<&Incident> {
        self.open.get(key)
    }

    /// The drop detection saw of an open incident's packets, if any.
    pub fn seen_drop(&self, key: &Key) -> Option<SeenDrop> {
        self.open.get(key).and_then(|i| i.seen_drop.clone())
    }

    /// A failed attempt of sandbox `key`. True when it opened an incident (the caller zooms
    /// in).
    pub fn failure(&mut self, key: Key, sandbox: SandboxRef, end: End, unix_ns: u64) -> bool {
        if let Some(i) = self.open.get_mut(&key) {
            i.failed += 1;
            i.refused += u64::from(end == End::Refused);
            i.last_failure_unix = unix_ns;
            return false;
        }
        if self.open.len() >= MAX_OPEN {
            self.refused += 1;
            return false;
        }
        let id = format!("{}-{}", self.prefix, self.next);
        self.next += 1;
        self.open.insert(
            key,
            Incident {
                id,
                sandbox,
                state: State::Localizing,
                first_failure_unix: unix_ns,
                last_failure_unix: unix_ns,
                failed: 1,
                refused: u64::from(end == End::Refused),
                printed_failed: 0,
                printed_at_ns: 0,
                queued: false,
                outcome: None,
                summary: String::new(),
                delays: VecDeque::new(),
                seen_drop: self.pending_drops.remove(&key),
            },
        );
        true
    }

    /// Its zoom-in waits for a free slot.
    pub fn queued(&mut self, key: Key) {
        if let Some(i) = self.open.get_mut(&key) {
            i.state = State::Queued;
            i.queued = true;
        }
    }

    /// Its zoom-in started.
    pub fn localizing(&mut self, key: Key) {
        if let Some(i) = self.open.get_mut(&key)
            && i.state == State::Queued
        {
            i.state = State::Localizing;
        }
    }

    /// Detection saw one of its packets dropped (kept for the incident its attempt's end
    /// opens, when it has none yet: the SYN dies before the client gives up).
    pub fn drop_seen(&mut self, key: Key, drop: SeenDrop) {
        match self.open.get_mut(&key) {
            Some(i) => i.seen_drop = Some(drop),
            None => {
                if self.pending_drops.len() >= MAX_OPEN {
                    self.pending_drops.clear();
                }
                self.pending_drops.insert(key, drop);
            }
        }
    }

    /// A reply that came after the client gave up.
    pub fn late(&mut self, key: Key, reply_ms: f64) {
        if let Some(i) = self.open.get_mut(&key) {
            if i.delays.len() >= MAX_DELAYS {
                i.delays.pop_front();
            }
            i.delays.push_back(reply_ms);
        }
    }

    /// The zoom-in judged a failed attempt: the incident record (once).
    pub fn localized(
        &mut self,
        key: Key,
        record: &JourneyRecord,
        now_unix: u64,
        mono_ns: u64,
    ) -> Option<Value> {
        self.reported(key, record, "followed", now_unix, mono_ns)
    }

    /// Another sandbox's verdict named a host-side actor that the engine confirmed on this
    /// sandbox's own attempt: the incident record (once), saying whose verdict it shares.
    pub fn shared(
        &mut self,
        key: Key,
        record: &JourneyRecord,
        from: Key,
        now_unix: u64,
        mono_ns: u64,
    ) -> Option<Value> {
        let source = self.open.get(&from).map(|i| (i.id.clone(), i.sandbox_value()));
        let mut v = self.reported(key, record, "shared", now_unix, mono_ns)?;
        if let (Some(obj), Some((id, sandbox))) = (v.as_object_mut(), source) {
            obj.insert(
                "shared_from".into(),
                json!({"incident_id": id, "sandbox": sandbox}),
            );
        }
        Some(v)
    }

    /// Open incidents still waiting for their verdict (localizing or queued).
    pub fn waiting(&self) -> impl Iterator<Item = Key> + '_ {
        self.open
            .iter()
            .filter(|(_, i)| matches!(i.state, State::Localizing | State::Queued))
            .map(|(k, _)| *k)
    }

    /// No attempt could be followed (the VMM or the namespace is gone, the zoom-in failed or
    /// saw no attempt): the incident record (once), with the verdict the engine made of what
    /// detection saw (see `engine::judge::detection_record`).
    pub fn unlocalized(
        &mut self,
        key: Key,
        record: &JourneyRecord,
        now_unix: u64,
        mono_ns: u64,
    ) -> Option<Value> {
        self.reported(key, record, "detection", now_unix, mono_ns)
    }

    /// The incident record: the verdict's record as decided, with the incident's fields.
    /// `localized`: how its verdict was made — `followed` (a zoom-in followed an attempt),
    /// `detection` (what detection alone saw), `shared` (another sandbox's verdict, confirmed
    /// on this one).
    fn reported(
        &mut self,
        key: Key,
        record: &JourneyRecord,
        localized: &str,
        now_unix: u64,
        mono_ns: u64,
    ) -> Option<Value> {
        let i = self.open.get_mut(&key)?;
        if i.state == State::Reported {
            return None;
        }
        i.state = State::Reported;
        i.outcome = Some(record.outcome);
        i.summary = record.summary.clone();
        i.printed_failed = i.failed;
        i.printed_at_ns = mono_ns;
        if let Some(l) = &record.late {
            i.delays.push_back(l.reply_ms);
        }
        let mut v = serde_json::to_value(record).ok()?;
        let obj = v.as_object_mut()?;
        obj.insert("type".into(), json!("incident"));
        obj.insert("incident_id".into(), json!(i.id));
        obj.insert("sandbox".into(), i.sandbox_value());
        obj.insert("first_failure".into(), json!(rfc3339(i.first_failure_unix)));
        obj.insert("localized_at".into(), json!(rfc3339(now_unix)));
        obj.insert("attempts_seen".into(), json!(i.failed));
        obj.insert("attempts_refused".into(), json!(i.refused));
        obj.insert("queued".into(), json!(i.queued));
        obj.insert("localized".into(), json!(localized));
        Some(v)
    }

    /// An attempt of `key` connected: a reported incident is resolved; one not reported yet
    /// was a failure the orchestrator's retry absorbed, and goes quietly.
    pub fn success(&mut self, key: Key, now_unix: u64) -> Option<Value> {
        self.pending_drops.remove(&key);
        let i = self.open.remove(&key)?;
        (i.state == State::Reported).then(|| {
            json!({
                "type": "resolved",
                "incident_id": i.id,
                "sandbox": i.sandbox_value(),
                "outcome": i.outcome,
                "attempts_failed": i.failed,
                "duration_ms": now_unix.saturating_sub(i.first_failure_unix) / 1_000_000,
                "resolved_at": rfc3339(now_unix),
            })
        })
    }

    /// The sandbox went away with its incident open.
    pub fn sandbox_ended(&mut self, key: Key, now_unix: u64) -> Option<Value> {
        let i = self.open.remove(&key)?;
        (i.state == State::Reported).then(|| {
            json!({
                "type": "closed",
                "incident_id": i.id,
                "sandbox": i.sandbox_value(),
                "outcome": i.outcome,
                "attempts_failed": i.failed,
                "duration_ms": now_unix.saturating_sub(i.first_failure_unix) / 1_000_000,
                "why": "the sandbox ended",
            })
        })
    }

    /// `repeat` records of reported incidents that failed again since they were last printed,
    /// at most one per incident per repeat period.
    pub fn repeats(&mut self, mono_ns: u64, force: bool) -> Vec<Value> {
        let every = self.repeat_every_ns;
        let mut out = Vec::new();
        for i in self.open.values_mut() {
            let due = force || mono_ns.saturating_sub(i.printed_at_ns) >= every;
            if i.state != State::Reported || i.failed <= i.printed_failed || !due {
                continue;
            }
            let since = i.failed - i.printed_failed;
            i.printed_failed = i.failed;
            i.printed_at_ns = mono_ns;
            let mut v = json!({
                "type": "repeat",
                "incident_id": i.id,
                "sandbox": i.sandbox_value(),
                "outcome": i.outcome,
                "summary": i.summary,
                "count": i.failed,
                "since_last": since,
                "first_failure": rfc3339(i.first_failure_unix),
                "last_failure": rfc3339(i.last_failure_unix),
            });
            if let Some(d) = i.delays() {
                v["reply_delays_ms"] = serde_json::to_value(d).unwrap_or(Value::Null);
            }
            out.push(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32) -> Key {
        Key { pid, start_ticks: 1 }
    }

    fn sb(id: &str) -> SandboxRef {
        SandboxRef {
            id: Some(id.into()),
            netns: "ns-1".into(),
            tap: "tap0".into(),
            guest_ip: "169.254.0.21".into(),
            host_ip: "10.11.0.1".into(),
            pid: Some(1),
        }
    }

    fn record(outcome: Outcome) -> JourneyRecord {
        serde_json::from_value(json!({
            "type": "journey", "sandbox": null, "outcome": outcome, "summary": "dropped in ns-1",
            "fix": null, "drop": null, "reset": null, "unreachable": null, "findings": [],
            "cause": null, "explained_by": [], "client": null, "target": null, "count": 1,
            "first_seen": "", "last_seen": "", "verdict_latency_us": 0, "hops": []
        }))
        .expect("a record")
    }

    #[test]
    fn one_incident_then_counts_then_resolved() {
        let mut inc = Incidents::new(1_000_000_000_000, 10);
        assert!(inc.failure(key(1), sb("ia"), End::GaveUp, 1_000));
        assert!(
            !inc.failure(key(1), sb("ia"), End::GaveUp, 2_000),
            "one incident per sandbox"
        );
        let v = inc
            .localized(key(1), &record(Outcome::Dropped), 3_000_000, 100)
            .expect("incident");
        assert_eq!(v["type"], "incident");
        assert_eq!(v["sandbox"]["id"], "ia");
        assert_eq!(v["attempts_seen"], 2);
        assert_eq!(v["outcome"], "dropped");
        assert!(v["incident_id"].as_str().unwrap().ends_with("-1"));
        // Printed once.
        assert!(
            inc.localized(key(1), &record(Outcome::Dropped), 4_000_000, 100)
                .is_none()
        );
        // More failures: a repeat when due, not before.
        inc.failure(key(1), sb("ia"), End::GaveUp, 5_000);
        assert!(inc.repeats(105, false).is_empty());
        let r = inc.repeats(200, false);
        assert_eq!(
            (r.len(), r[0]["count"].as_u64(), r[0]["since_last"].as_u64()),
            (1, Some(3), Some(1))
        );
        assert!(inc.repeats(400, false).is_empty(), "nothing new");
        let done = inc.success(key(1), 9_000_000).expect("resolved");
        assert_eq!(
            (done["type"].as_str(), done["attempts_failed"].as_u64()),
            (Some("resolved"), Some(3))
        );
        assert_eq!(inc.open_count(), 0);
    }

    #[test]
    fn a_failure_the_retry_absorbed_prints_nothing() {
        let mut inc = Incidents::new(0, 10);
        inc.failure(key(1), sb("ia"), End::GaveUp, 1);
        assert!(inc.success(key(1), 2).is_none());
        assert_eq!(inc.open_count(), 0);
    }

    #[test]
    fn late_replies_make_the_delay_distribution() {
        let mut inc = Incidents::new(0, 1);
        inc.failure(key(1), sb("ia"), End::GaveUp, 1);
        inc.unlocalized(key(1), &record(Outcome::Late), 2, 1).unwrap();
        for ms in [81.0, 90.0, 85.0] {
            inc.failure(key(1), sb("ia"), End::GaveUp, 3);
            inc.late(key(1), ms);
        }
        let r = inc.repeats(100, false);
        assert_eq!(r[0]["reply_delays_ms"]["median"], 85.0);
        assert_eq!(r[0]["reply_delays_ms"]["max"], 90.0);
    }

    #[test]
    fn a_drop_seen_before_the_incident_stays_with_it_and_the_record_says_not_localized() {
        let mut inc = Incidents::new(0, 1);
        // The SYN dies before the client gives up: the drop comes first.
        let hop = tracer_model::fixtures::hop(
            1,
            "ns-1",
            "eth0",
            tracer_model::hop::HopKind::Drop {
                reason: tracer_model::reason::DropReason::new("NETFILTER_DROP"),
            },
            tracer_model::fixtures::syn(),
        );
        inc.drop_seen(
            key(1),
            SeenDrop {
                leg: tracer_model::journey::Leg::Request,
                hop,
            },
        );
        inc.failure(key(1), sb("ia"), End::GaveUp, 1);
        assert!(inc.seen_drop(&key(1)).is_some());
        let v = inc.unlocalized(key(1), &record(Outcome::Dropped), 2, 1).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["localized"].as_str()),
            (Some("incident"), Some("detection"))
        );
        assert_eq!(v["sandbox"]["id"], "ia");
        // Nothing seen for another sandbox.
        inc.failure(key(2), sb("ib"), End::GaveUp, 1);
        assert!(inc.seen_drop(&key(2)).is_none());
    }

    #[test]
    fn open_incidents_are_bounded() {
        let mut inc = Incidents::new(0, 1);
        for pid in 0..MAX_OPEN as u32 + 5 {
            inc.failure(key(pid), sb("i"), End::GaveUp, 1);
        }
        assert_eq!((inc.open_count(), inc.refused), (MAX_OPEN, 5));
    }
}
