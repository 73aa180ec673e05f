//! `tracer report FILE`: renders saved output (`trace --json`, `watch`'s incidents) as text
//! or Markdown with the same renderers as live output, so a trace saved on a node reads the
//! same anywhere.
use std::{
    io::{BufRead as _, BufReader, Read},
    path::Path,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    cli::ReportFormat,
    error::EnvError,
    output::{Format, Output},
    report::{JourneyRecord, html, markdown, text},
};

/// Lines longer than this are not a record of ours (a record is a few KiB; a deep one tens).
const MAX_LINE: usize = 4 << 20;

/// Prints `file` (`-`: stdin) as text, Markdown, or one HTML page. Exit 0; 2 when nothing in
/// it is a record.
pub fn run(file: &Path, format: ReportFormat) -> Result<i32> {
    let input: Box<dyn Read> = if file == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file)
                .map_err(|e| EnvError::Usage(format!("cannot read {}: {e}", file.display())))?,
        )
    };
    let mut out = Output::stdout(Format::Text);
    let mut page = Page::default();
    let mut rendered = 0;
    for (n, line) in BufReader::new(input.take(1 << 30)).lines().enumerate() {
        let line = line.with_context(|| format!("read {}", file.display()))?;
        if line.trim().is_empty() || line.len() > MAX_LINE {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            eprintln!("tracer: {}:{}: not JSON, skipped", file.display(), n + 1);
            continue;
        };
        if format == ReportFormat::Html {
            rendered += usize::from(page.add(&out, v));
        } else if let Some(s) = render(&out, &v, format == ReportFormat::Md) {
            out.text(&s)?;
            rendered += 1;
        }
    }
    if format == ReportFormat::Html && rendered > 0 {
        let source = file
            .file_name()
            .map_or("-".into(), |f| f.to_string_lossy().into_owned());
        // Written as it is: the HTML renderer escapes every value itself.
        std::io::Write::write_all(
            &mut std::io::stdout().lock(),
            html::document(&source, &page.entries, &page.repeats).as_bytes(),
        )?;
    }
    if rendered == 0 {
        return Err(EnvError::Usage(format!(
            "{} holds no trace or incident record (expected the JSON lines of `tracer trace --json` or `tracer watch`)",
            file.display()
        ))
        .into());
    }
    Ok(0)
}

/// The records of one HTML page, gathered before it is written.
#[derive(Default)]
struct Page {
    entries: Vec<html::Entry>,
    repeats: Vec<String>,
}

impl Page {
    /// Takes one saved record; false for lines that are not records.
    fn add(&mut self, out: &Output, v: Value) -> bool {
        let record = serde_json::from_value::<JourneyRecord>(v.clone()).ok();
        match (v["type"].as_str(), record) {
            (Some("journey"), Some(record)) => self.entries.push(html::Entry {
                record,
                incident: None,
            }),
            (Some("incident"), Some(record)) => self.entries.push(html::Entry {
                record,
                incident: Some(v),
            }),
            (Some("repeat"), Some(r)) => self.repeats.push(text::repeat(out, &r)),
            _ => return false,
        }
        true
    }
}

/// One saved record, rendered; None for lines that are not records (watcher status lines).
pub fn render(out: &Output, v: &Value, markdown: bool) -> Option<String> {
    let kind = v["type"].as_str()?;
    let record = serde_json::from_value::<JourneyRecord>(v.clone()).ok();
    match (kind, markdown) {
        ("incident", true) => Some(markdown::incident(v, record.as_ref())),
        ("journey" | "incident", false) => record.map(|r| text::journey(out, &r, r.failing_hop, true)),
        ("journey", true) => record.map(|r| markdown::journey(&r)),
        ("repeat", _) => record.map(|r| text::repeat(out, &r)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(kind: &str) -> Value {
        json!({
            "type": kind, "outcome": "dropped", "summary": "the SYN was dropped in ns-1",
            "fix": "remove the rule", "findings": [], "explained_by": [], "evidence": ["event: drop"],
            "count": 1, "first_seen": "03:00:00", "last_seen": "03:00:00", "verdict_latency_us": 5,
            "client": "10.12.0.2:5", "target": "10.11.0.1:49983", "failing_hop": 1,
            "sandbox": {"id": "ix7hj8hustuvlxiqc0g0u", "netns": "ns-1", "tap": "tap0",
                        "guest_ip": "169.254.0.21", "host_ip": "10.11.0.1", "pid": 7},
            "hops": [
                {"t_us": 0.0, "leg": "request", "netns": "ns-1", "device": "eth0", "point": "tcx/ingress",
                 "tuple": "a → b", "flags": "S"},
                {"t_us": 9.0, "leg": "request", "netns": "ns-1", "device": "eth0", "point": "drop",
                 "tuple": "a → b", "flags": "S", "detail": "NETFILTER_DROP",
                 "deep": {"len": 60, "mark": 0, "l2": null, "ttl": 63, "ip_id": 1, "seq": 1, "ack": 0,
                          "window": 64240, "conntrack": {"state": "NEW", "status": ["DST_NAT"], "zone": 0, "mark": 0},
                          "stack": ["nft_do_chain+0x46f", "nf_hook_slow+0x43"], "captured": 54}}
            ],
            "deep": {"conntrack_netns": "ns-1", "conntrack": [], "conntrack_error": null, "routing": [],
                     "captured_packets": 2, "capped_packets": 0},
            "incident_id": "abc-1"
        })
    }

    #[test]
    fn an_html_page_gathers_journeys_incidents_and_repeats() {
        let out = Output::to_writer(Format::Text, Box::new(std::io::sink()));
        let mut page = Page::default();
        assert!(page.add(&out, record("journey")));
        assert!(page.add(&out, record("incident")));
        assert!(page.add(&out, record("repeat")));
        assert!(!page.add(&out, json!({"type": "status"})));
        assert_eq!((page.entries.len(), page.repeats.len()), (2, 1));
        let html = html::document("t.json", &page.entries, &page.repeats);
        assert!(
            html.contains("<dt>incident</dt><dd><code>abc-1</code></dd>"),
            "{html}"
        );
        assert!(html.contains("id=\"j1-fail\""), "{html}");
    }

    #[test]
    fn saved_records_render_as_live_output_and_markdown() {
        let out = Output::to_writer(Format::Text, Box::new(std::io::sink()));
        let text = render(&out, &record("journey"), false).unwrap();
        assert!(text.contains("attempt 10.12.0.2:5 → 10.11.0.1:49983"), "{text}");
        assert!(
            text.contains("✗") && text.contains("NETFILTER_DROP"),
            "the failing hop is marked: {text}"
        );
        assert!(
            text.contains("ttl 63 id 0x0001 seq 1 ack 0 win 64240 | ct NEW [DST_NAT] zone 0"),
            "{text}"
        );
        assert!(
            text.contains("kernel stack:") && text.contains("nf_hook_slow+0x43"),
            "{text}"
        );
        assert!(
            text.contains("conntrack in ns-1: no entry for this flow"),
            "{text}"
        );
        assert!(
            text.contains("verdict: DROPPED the SYN was dropped in ns-1"),
            "{text}"
        );
        let md = render(&out, &record("journey"), true).unwrap();
        assert!(
            md.starts_with("# envd attempt to sandbox `ix7hj8hustuvlxiqc0g0u`: dropped"),
            "{md}"
        );
        assert!(
            md.contains("**Likely fix:** `remove the rule`") && md.contains("- event: drop"),
            "{md}"
        );
        assert!(
            md.contains("## The path\n\n```mermaid\nflowchart LR\n") && md.contains("  class n2 failed\n"),
            "the path, the failing device marked: {md}"
        );
        // A watcher's incident: its Markdown report, with the hops.
        let md = render(&out, &record("incident"), true).unwrap();
        assert!(
            md.contains("| incident | `abc-1` |") && md.contains("nf_hook_slow"),
            "{md}"
        );
        assert!(md.contains("```mermaid\nflowchart LR\n"), "{md}");
        // Lines that are not records (the watcher's status) are skipped.
        assert!(render(&out, &json!({"type": "status"}), false).is_none());
    }
}
