//! The one Markdown renderer: a decided attempt (`tracer report --format md`) and a
//! watcher's incident (`--report-dir`, `tracer report` of the watcher's lines) share every
//! part — the verdict, the fix, the rule, the doctor's explanations, the evidence, the path as
//! a Mermaid diagram and the attempt hop by hop; an incident adds its table and its record.
//! Values are written as the JSON record has them (Markdown code spans keep them literal).
use std::fmt::Write as _;

use serde_json::Value;

use super::{mermaid, places, record::JourneyRecord, text};
use crate::output::{Format, Output};

/// A journey record: its attempt and everything it rests on.
pub fn journey(r: &JourneyRecord) -> String {
    let sandbox = r
        .sandbox
        .as_ref()
        .and_then(|s| s.id.clone())
        .unwrap_or_else(|| "?".into());
    let mut md = format!(
        "# envd attempt to sandbox `{sandbox}`: {}\n\n{}\n\n",
        r.outcome.name(),
        r.summary
    );
    let rows = [
        (
            "attempt",
            format!(
                "{} → {}",
                r.client.as_deref().unwrap_or("?"),
                r.target.as_deref().unwrap_or("?")
            ),
        ),
        ("seen", r.first_seen.clone()),
    ];
    table(&mut md, &rows);
    verdict(&mut md, r);
    path_and_hops(&mut md, r);
    md
}

/// A watcher's incident: its table, the verdict it carries, and the record itself.
/// `record` is None for lines no version of the record reads.
pub fn incident(incident: &Value, record: Option<&JourneyRecord>) -> String {
    let s = |k: &str| incident[k].as_str().unwrap_or("").to_string();
    let sb = &incident["sandbox"];
    let sbs = |k: &str| match &sb[k] {
        Value::String(v) => v.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    };
    let mut md = format!(
        "# envd unreachable: sandbox `{}` — {}\n\n{}\n\n",
        sbs("id"),
        incident["outcome"].as_str().unwrap_or("unknown"),
        s("summary")
    );
    let queued = if incident["queued"] == Value::Bool(true) {
        "yes"
    } else {
        "no"
    };
    let rows = [
        ("incident", s("incident_id")),
        ("sandbox", sbs("id")),
        ("VMM pid", sbs("pid")),
        ("namespace", sbs("netns")),
        ("tap", sbs("tap")),
        (
            "host IP → guest IP",
            format!("{} → {}", sbs("host_ip"), sbs("guest_ip")),
        ),
        ("first failed attempt", s("first_failure")),
        ("localized", s("localized_at")),
        (
            "failed attempts before the verdict",
            incident["attempts_seen"].to_string(),
        ),
        ("waited for a zoom-in slot", queued.into()),
    ];
    table(&mut md, &rows);
    match record {
        Some(r) => {
            verdict(&mut md, r);
            path_and_hops(&mut md, r);
        }
        // A line no version of the record reads: what its fields say, as they are.
        None => {
            if let Some(fix) = incident["fix"].as_str() {
                let _ = writeln!(md, "**Likely fix:** `{}`\n", fix.replace('`', "'"));
            }
            if let Some(rule) = incident["drop"]["rule"].as_str() {
                let _ = writeln!(md, "**Rule:** `{}`\n", rule.replace('`', "'"));
            }
        }
    }
    let _ = writeln!(
        md,
        "## Record\n\n```json\n{}\n```",
        serde_json::to_string_pretty(incident).unwrap_or_default()
    );
    md
}

fn table(md: &mut String, rows: &[(&str, String)]) {
    md.push_str("| | |\n|---|---|\n");
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | `{}` |", v.replace('`', "'"));
    }
    md.push('\n');
}

/// The fix, the rule, the doctor's explanations and the evidence.
fn verdict(md: &mut String, r: &JourneyRecord) {
    if let Some(fix) = &r.fix {
        let _ = writeln!(md, "**Likely fix:** `{}`\n", fix.replace('`', "'"));
    }
    if let Some(rule) = r.drop.as_ref().and_then(|d| d.rule.as_ref()) {
        let _ = writeln!(md, "**Rule:** `{}`\n", rule.replace('`', "'"));
    }
    let evidence: Vec<String> = r.evidence.iter().map(|e| e.line()).collect();
    list(md, "Explained by (doctor)", &r.explained_by);
    list(md, "Evidence", &evidence);
}

fn list(md: &mut String, title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(md, "## {title}\n");
    for i in items {
        let _ = writeln!(md, "- {}", i.replace('\n', " "));
    }
    md.push('\n');
}

/// The path as a diagram, then the attempt hop by hop as the text output shows it.
fn path_and_hops(md: &mut String, r: &JourneyRecord) {
    let out = Output::to_writer(Format::Text, Box::new(std::io::sink()));
    let _ = writeln!(md, "## The path\n\n{}", mermaid::render(&places::places(r)));
    let _ = writeln!(
        md,
        "## The attempt, hop by hop\n\n```\n{}```\n",
        text::journey(&out, r, r.failing_hop, true)
    );
}
