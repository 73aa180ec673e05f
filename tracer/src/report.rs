//! Reports: text for people (one line per hop, the failing hop highlighted, a verdict
//! paragraph with the likely fix) and JSON for machines (schema in the README). Repeated
//! failures are shown once, with a count and a time range.
use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write},
};

use serde::Serialize;

use crate::{
    events::{Clock, Tuple, flags_str, hms},
    hop::{Hop, HopKind},
    journey::{Journey, JourneyId, Leg},
    path::ExpectedPath,
    verdict::{Outcome, Verdict},
};

/// The sandbox part of a JSON record.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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

/// One decided journey (or group of identical ones) in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct JourneyRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sandbox: Option<SandboxRef>,
    pub outcome: Outcome,
    pub summary: String,
    pub fix: Option<String>,
    pub drop: Option<crate::verdict::DropInfo>,
    pub reset: Option<crate::verdict::ResetInfo>,
    pub unreachable: Option<crate::verdict::UnreachableInfo>,
    pub findings: Vec<crate::verdict::Finding>,
    pub cause: Option<crate::verdict::Finding>,
    pub explained_by: Vec<String>,
    pub client: Option<String>,
    pub target: Option<String>,
    /// How many attempts ended this way, and when.
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// µs from the kernel event that decided the outcome to this record (report latency).
    pub verdict_latency_us: u64,
    pub hops: Vec<HopRecord>,
}

/// Where the report goes and how it looks.
pub struct Reporter {
    pub json: bool,
    pub all_hops: bool,
    color: bool,
    clock: Clock,
    sandbox: Option<SandboxRef>,
    groups: HashMap<String, Group>,
    order: Vec<String>,
}

struct Group {
    record: JourneyRecord,
    first_ns: u64,
    last_ns: u64,
    reported_count: u64,
}

impl Reporter {
    pub fn new(json: bool, all_hops: bool, path: Option<&ExpectedPath>) -> Self {
        let color = !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self {
            json,
            all_hops,
            color,
            clock: Clock::new(),
            sandbox: path.map(SandboxRef::from_path),
            groups: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// Records a decided journey; prints it when it is the first of its kind (or always with
    /// --all-hops). Returns the record.
    pub fn add(&mut self, j: &Journey, v: &Verdict, out: &mut impl Write) -> std::io::Result<JourneyRecord> {
        let sig = v.signature();
        let record = self.record(j, v);
        let new = !self.groups.contains_key(&sig);
        let g = self.groups.entry(sig.clone()).or_insert_with(|| Group {
            record: record.clone(),
            first_ns: j.first_ns,
            last_ns: j.first_ns,
            reported_count: 0,
        });
        g.record.count += if new { 0 } else { 1 };
        g.first_ns = g.first_ns.min(j.first_ns);
        g.last_ns = g.last_ns.max(j.first_ns);
        if new {
            self.order.push(sig.clone());
        }
        if new || self.all_hops {
            self.groups.get_mut(&sig).expect("inserted").reported_count = self.groups[&sig].record.count;
            self.print(j, v, &record, out)?;
        }
        Ok(record)
    }

    fn print(
        &self,
        j: &Journey,
        v: &Verdict,
        r: &JourneyRecord,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        if self.json {
            writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())?;
        } else {
            self.print_text(j, v.failing_hop, r, out)?;
        }
        out.flush()
    }

    /// At the end (or periodically): how often each failure repeated since it was printed.
    pub fn print_repeats(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        for sig in &self.order {
            let g = self.groups.get_mut(sig).expect("ordered groups exist");
            if g.record.count <= g.reported_count {
                continue;
            }
            g.reported_count = g.record.count;
            let (first, last) = (
                hms(self.clock.unix_ns(g.first_ns)),
                hms(self.clock.unix_ns(g.last_ns)),
            );
            if self.json {
                let mut rec = g.record.clone();
                rec.kind = "repeat";
                rec.first_seen = first;
                rec.last_seen = last;
                rec.hops.clear();
                writeln!(out, "{}", serde_json::to_string(&rec).unwrap_or_default())?;
            } else {
                writeln!(
                    out,
                    "↻ {} attempts ended the same way ({}) between {first} and {last}: {}",
                    g.record.count,
                    g.record.outcome.name(),
                    g.record.summary
                )?;
            }
        }
        out.flush()
    }

    pub fn record(&self, j: &Journey, v: &Verdict) -> JourneyRecord {
        let t0 = j.first_ns;
        JourneyRecord {
            kind: "journey",
            sandbox: self.sandbox.clone(),
            outcome: v.outcome,
            summary: v.summary.clone(),
            fix: v.fix.clone(),
            drop: v.drop.clone(),
            reset: v.reset.clone(),
            unreachable: v.unreachable.clone(),
            findings: v.findings.clone(),
            cause: v.cause.clone(),
            explained_by: v.explained_by.clone(),
            client: j.client().map(|(a, p)| format!("{a}:{p}")),
            target: j.target.map(|(a, p)| format!("{a}:{p}")),
            count: 1,
            first_seen: hms(self.clock.unix_ns(j.first_ns)),
            last_seen: hms(self.clock.unix_ns(j.last_ns)),
            verdict_latency_us: Clock::now_mono_ns().saturating_sub(j.decided_at.unwrap_or(j.last_ns)) / 1000,
            hops: j.hops.iter().map(|(leg, h)| hop_record(*leg, h, t0)).collect(),
        }
    }

    fn print_text(
        &self,
        j: &Journey,
        failing: Option<usize>,
        r: &JourneyRecord,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let title = match (&j.id, &r.client, &r.target) {
            (JourneyId::NoRoute { dst, .. }, _, _) => format!("connect to {dst}: no packet was sent"),
            (_, Some(c), Some(t)) => format!("attempt {c} → {t}"),
            (_, Some(c), None) => format!("attempt from {c}"),
            _ => "attempt".into(),
        };
        writeln!(
            out,
            "{} {}",
            self.paint("1", &title),
            self.paint("2", &format!("({})", r.first_seen))
        )?;
        let shown: Vec<usize> = if self.all_hops {
            (0..j.hops.len()).collect()
        } else {
            compress(&j.hops, failing)
        };
        for i in shown {
            let (leg, h) = &j.hops[i];
            let line = hop_line(*leg, h, j.first_ns);
            if failing == Some(i) && r.outcome != Outcome::Connected {
                writeln!(out, "{} {}", self.paint("31;1", "✗"), self.paint("31;1", &line))?;
            } else {
                writeln!(out, "  {line}")?;
            }
        }
        let (code, word) = match r.outcome {
            Outcome::Connected => ("32;1", "CONNECTED"),
            Outcome::Unknown => ("33;1", "UNKNOWN"),
            o => ("31;1", o.name()),
        };
        writeln!(
            out,
            "{} {}",
            self.paint(code, &format!("verdict: {}", word.to_uppercase())),
            r.summary
        )?;
        if let Some(d) = &r.drop
            && let Some(rule) = &d.rule
        {
            writeln!(out, "  rule: {rule}")?;
        } else if let Some(note) = r.drop.as_ref().and_then(|d| d.rule_note.as_ref()) {
            writeln!(out, "  rule: {note}")?;
        }
        for e in &r.explained_by {
            writeln!(out, "  because: {e}")?;
        }
        if let Some(f) = &r.fix {
            writeln!(out, "  {} {f}", self.paint("1", "fix:"))?;
        }
        writeln!(out)
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// Netfilter slots of one hook collapse into one line, the latest slot (it shows how far the
/// packet got); everything else is shown. The full list is in --all-hops and the JSON.
fn compress(hops: &[(Leg, Hop)], keep: Option<usize>) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for (i, (_, h)) in hops.iter().enumerate() {
        if let HopKind::Netfilter { hook, .. } = h.kind
            && let Some(&p) = out.last()
            && Some(p) != keep
            && let (_, prev) = &hops[p]
            && let HopKind::Netfilter { hook: ph, .. } = prev.kind
            && ph == hook
            && prev.netns == h.netns
            && prev.skb == h.skb
        {
            out.pop();
        }
        out.push(i);
    }
    out
}

fn point_name(h: &Hop) -> String {
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

fn detail(h: &Hop) -> Option<String> {
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

fn hop_record(leg: Leg, h: &Hop, t0: u64) -> HopRecord {
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

fn hop_line(leg: Leg, h: &Hop, t0: u64) -> String {
    let t = h.ts_ns.saturating_sub(t0) as f64 / 1000.0;
    let arrow = match leg {
        Leg::Request => "→",
        Leg::Reply => "←",
        Leg::Control => "·",
    };
    let tuple = if h.is_packet() {
        format!("{} [{}]", Tuple(&h.pkt), flags_str(h.pkt.flags))
    } else {
        String::new()
    };
    format!(
        "{t:>9.1} µs {arrow} {:<10} {:<8} {:<15} {tuple} {}",
        h.ns_label(),
        h.device.as_deref().unwrap_or("-"),
        point_name(h),
        detail(h).unwrap_or_default()
    )
    .trim_end()
    .to_string()
}
