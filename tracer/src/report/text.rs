//! Text for people: one line per hop (netfilter slots of one hook folded into the furthest
//! one), the failing hop marked, then the verdict paragraph with the rule, the doctor's
//! findings and the likely fix. Rendered from the JSON record, so a saved trace reads the same.
use std::fmt::Write as _;

use tracer_model::{journey::Leg, verdict::Outcome};

use super::record::{HopRecord, JourneyRecord};
use crate::output::{Output, Style};

/// The text of one journey record. `failing` is the index of the hop where it went wrong.
pub fn journey(o: &Output, r: &JourneyRecord, failing: Option<usize>, all_hops: bool) -> String {
    let mut s = String::new();
    let title = match (&r.client, &r.target) {
        (None, Some(t)) => format!(
            "connect to {}: no packet was sent",
            t.rsplit_once(':').map_or(t.as_str(), |(a, _)| a)
        ),
        (Some(c), Some(t)) => format!("attempt {c} → {t}"),
        (Some(c), None) => format!("attempt from {c}"),
        (None, None) => "attempt".into(),
    };
    let _ = writeln!(
        s,
        "{} {}",
        o.paint(Style::Bold, &title),
        o.paint(Style::Dim, &format!("({})", r.first_seen))
    );
    let shown: Vec<usize> = if all_hops {
        (0..r.hops.len()).collect()
    } else {
        compress(&r.hops, failing)
    };
    for i in shown {
        let line = hop_line(&r.hops[i]);
        if failing == Some(i) && r.outcome != Outcome::Connected {
            let _ = writeln!(s, "{} {}", o.paint(Style::Bad, "✗"), o.paint(Style::Bad, &line));
        } else {
            let _ = writeln!(s, "  {}", o.plain(&line));
        }
        for d in deep_lines(&r.hops[i]) {
            let _ = writeln!(s, "  {}", o.paint(Style::Dim, &d));
        }
    }
    verdict(o, r, &mut s);
    s
}

fn verdict(o: &Output, r: &JourneyRecord, s: &mut String) {
    let (style, word) = match r.outcome {
        Outcome::Connected => (Style::Good, "CONNECTED"),
        Outcome::Late => (Style::Unsure, "LATE"),
        Outcome::Unknown => (Style::Unsure, "UNKNOWN"),
        other => (Style::Bad, other.name()),
    };
    let _ = writeln!(
        s,
        "{} {}",
        o.paint(style, &format!("verdict: {}", word.to_uppercase())),
        o.plain(&r.summary)
    );
    if let Some(d) = &r.drop {
        if let Some(rule) = &d.rule {
            let _ = writeln!(s, "  rule: {}", o.plain(rule));
        } else if let Some(note) = &d.rule_note {
            let _ = writeln!(s, "  rule: {}", o.plain(note));
        }
    }
    for e in &r.explained_by {
        let _ = writeln!(s, "  because: {}", o.plain(e));
    }
    for e in r.evidence.iter().filter(|e| e.kind == "read") {
        let _ = writeln!(s, "  {}", o.plain(&e.line()));
    }
    for line in r.deep.iter().flat_map(|d| d.lines()) {
        let _ = writeln!(s, "  {}", o.plain(&line));
    }
    for n in fewer_events(r) {
        let _ = writeln!(s, "  {} {}", o.paint(Style::Unsure, "note:"), o.plain(&n));
    }
    if let Some(f) = &r.fix {
        let _ = writeln!(s, "  {} {}", o.paint(Style::Bold, "fix:"), o.plain(f));
    }
    s.push('\n');
}

/// Why the verdict may rest on fewer events than usual.
fn fewer_events(r: &JourneyRecord) -> Vec<String> {
    let mut out = Vec::new();
    if r.lost_events > 0 {
        out.push(format!(
            "{} events were lost (ring buffer full) while this attempt ran: the verdict may rest on fewer events than usual",
            r.lost_events
        ));
    }
    for b in &r.blind_spots {
        out.push(format!("not watched: {b}"));
    }
    out
}

/// The summary line of repeated attempts.
pub fn repeat(o: &Output, r: &JourneyRecord) -> String {
    let delays = r
        .reply_delays_ms
        .as_ref()
        .filter(|_| r.outcome == Outcome::Late)
        .map(|d| {
            format!(
                " (replies after {:.1} / {:.1} / {:.1} ms, min / median / max)",
                d.min, d.median, d.max
            )
        })
        .unwrap_or_default();
    format!(
        "↻ {} attempts ended the same way ({}{delays}) between {} and {}: {}\n",
        r.count,
        r.outcome.name(),
        r.first_seen,
        r.last_seen,
        o.plain(&r.summary)
    )
}

/// Netfilter slots of one hook collapse into one line, the latest slot (it shows how far the
/// packet got); everything else is shown. The full list is in --all-hops and the JSON.
fn compress(hops: &[HopRecord], keep: Option<usize>) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for (i, h) in hops.iter().enumerate() {
        if h.point.starts_with("nf/")
            && let Some(&p) = out.last()
            && Some(p) != keep
            && hops[p].point == h.point
            && hops[p].netns == h.netns
            && hops[p].leg == h.leg
        {
            out.pop();
        }
        out.push(i);
    }
    out
}

/// Deep mode's lines under a hop: its packet and skb facts, and the kernel stack at a drop.
pub fn deep_lines(h: &HopRecord) -> Vec<String> {
    let Some(d) = &h.deep else { return Vec::new() };
    let mut out = vec![format!("{:>14}{}", "", d.line())];
    if !d.stack.is_empty() {
        out.push(format!("{:>14}kernel stack:", ""));
        out.extend(d.stack.iter().map(|f| format!("{:>16}{f}", "")));
    }
    out
}

pub fn hop_line(h: &HopRecord) -> String {
    let arrow = match h.leg {
        Leg::Request => "→",
        Leg::Reply => "←",
        Leg::Control => "·",
    };
    let tuple = match (&h.tuple, &h.flags) {
        (Some(t), Some(f)) => format!("{t} [{f}]"),
        (Some(t), None) => t.clone(),
        _ => String::new(),
    };
    format!(
        "{:>9.1} µs {arrow} {:<10} {:<8} {:<15} {tuple} {}",
        h.t_us,
        h.netns,
        h.device.as_deref().unwrap_or("-"),
        h.point,
        h.detail.as_deref().unwrap_or_default()
    )
    .trim_end()
    .to_string()
}
