//! `tracer report --format html`: one self-contained page (inline CSS and SVG, no script, no
//! font or image fetched; a Content-Security-Policy forbids any fetch) with, per journey, the
//! path diagram, the verdict and the hop timeline. Every value from a record is escaped: device
//! names and rule text come from the network and from whoever wrote the ruleset.
use std::fmt::Write as _;

use serde_json::Value;
use tracer_model::{journey::Leg, verdict::Outcome};

use super::{
    places::{self, actor_line, divergence_line},
    record::{HopRecord, JourneyRecord},
    svg::{self, esc},
    text,
};

/// One record of the page: a journey (or a watcher's incident, with the incident's fields).
pub struct Entry {
    pub record: JourneyRecord,
    pub incident: Option<Value>,
}

/// The page for `entries` read from `source`; `repeats` are the summary lines of repeated
/// attempts.
pub fn document(source: &str, entries: &[Entry], repeats: &[String]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        concat!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<title>envd path report: {}</title>\n<style>\n{}</style>\n</head>\n<body>\n"
        ),
        esc(source),
        CSS
    );
    let _ = writeln!(
        s,
        "<header><h1>envd path report</h1><p class=\"source\">{} · {} attempt record{} · rendered by <code>tracer report --format html</code></p></header>",
        esc(source),
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    );
    for (i, e) in entries.iter().enumerate() {
        journey(&mut s, i, e);
    }
    if !repeats.is_empty() {
        s.push_str("<section class=\"repeats\"><h2>Repeated attempts</h2><ul>\n");
        for r in repeats {
            let _ = writeln!(s, "<li>{}</li>", esc(r.trim_end()));
        }
        s.push_str("</ul></section>\n");
    }
    s.push_str("</body>\n</html>\n");
    s
}

fn journey(s: &mut String, i: usize, e: &Entry) {
    let r = &e.record;
    let outcome = r.outcome.name();
    let _ = writeln!(
        s,
        "<section class=\"journey {outcome}\" id=\"journey-{i}\">\n<h2><span class=\"badge {outcome}\">{}</span> {}</h2>",
        esc(&outcome.replace('_', " ").to_uppercase()),
        esc(&heading(r))
    );
    meta(s, r, e.incident.as_ref());
    let p = places::places(r);
    let _ = writeln!(
        s,
        "<figure class=\"diagram\">\n{}</figure>",
        svg::render(&p, &format!("j{i}-"))
    );
    verdict(s, r);
    hops(s, r, i);
    s.push_str("</section>\n");
}

fn heading(r: &JourneyRecord) -> String {
    match (&r.client, &r.target) {
        (Some(c), Some(t)) => format!("attempt {c} → {t}"),
        (None, Some(t)) => format!("connect to {t}: no packet was sent"),
        (Some(c), None) => format!("attempt from {c}"),
        (None, None) => "attempt".into(),
    }
}

/// The sandbox, when, how often; for an incident its id and times.
fn meta(s: &mut String, r: &JourneyRecord, incident: Option<&Value>) {
    let mut items: Vec<(&str, String)> = Vec::new();
    if let Some(sb) = &r.sandbox {
        items.push(("sandbox", sb.id.clone().unwrap_or_else(|| "?".into())));
        items.push(("namespace", sb.netns.clone()));
        items.push(("tap", sb.tap.clone()));
        items.push(("host IP → guest IP", format!("{} → {}", sb.host_ip, sb.guest_ip)));
        if let Some(pid) = sb.pid {
            items.push(("VMM pid", pid.to_string()));
        }
    }
    items.push(("seen", r.first_seen.clone()));
    if r.count > 1 {
        items.push((
            "attempts",
            format!("{} ({} – {})", r.count, r.first_seen, r.last_seen),
        ));
    }
    if let Some(v) = incident {
        for (label, key) in [
            ("incident", "incident_id"),
            ("first failure", "first_failure"),
            ("localized", "localized_at"),
        ] {
            if let Some(x) = v[key].as_str() {
                items.push((label, x.to_string()));
            }
        }
        if let Some(n) = v["attempts_seen"].as_u64() {
            items.push(("failed attempts before the verdict", n.to_string()));
        }
    }
    s.push_str("<dl class=\"meta\">");
    for (k, v) in items {
        let _ = write!(
            s,
            "<div><dt>{}</dt><dd><code>{}</code></dd></div>",
            esc(k),
            esc(&v)
        );
    }
    s.push_str("</dl>\n");
}

/// The summary, then everything the verdict rests on, the fix last but set apart.
fn verdict(s: &mut String, r: &JourneyRecord) {
    let _ = writeln!(
        s,
        "<div class=\"verdict {}\">\n<p class=\"summary\">{}</p>",
        r.outcome.name(),
        esc(&r.summary)
    );
    if let Some(f) = &r.fix {
        let _ = writeln!(
            s,
            "<p class=\"fix\"><b>Likely fix</b> <code>{}</code></p>",
            esc(f)
        );
    }
    s.push_str("<dl class=\"facts\">\n");
    if let Some(d) = &r.drop {
        if let Some(rule) = &d.rule {
            fact(s, "rule", std::slice::from_ref(rule), true);
        } else if let Some(note) = &d.rule_note {
            fact(s, "rule", std::slice::from_ref(note), false);
        }
        let chain = [
            d.table.as_ref().map(|t| format!("table {t}")),
            d.chain.as_ref().map(|c| format!("chain {c}")),
        ];
        let chain: Vec<String> = chain.into_iter().flatten().collect();
        if !chain.is_empty() {
            fact(s, "table, chain", &[chain.join(", ")], true);
        }
        let kernel = match (&d.function, &d.location) {
            (Some(f), _) => format!("{} in {f}", d.reason),
            (None, Some(l)) => format!("{} at {l}", d.reason),
            _ => d.reason.clone(),
        };
        fact(s, "kernel reason", &[kernel], true);
    }
    let actors: Vec<String> = r.actors.iter().map(actor_line).collect();
    fact(s, "actors", &actors, false);
    let divergence: Vec<String> = r.divergence.iter().map(divergence_line).collect();
    fact(s, "divergence", &divergence, false);
    fact(s, "explained by (doctor)", &r.explained_by, false);
    let evidence: Vec<String> = r.evidence.iter().map(|e| e.line()).collect();
    fact(s, "evidence", &evidence, false);
    let mut notes: Vec<String> = r
        .blind_spots
        .iter()
        .map(|b| format!("not watched: {b}"))
        .collect();
    if r.lost_events > 0 {
        notes.insert(
            0,
            format!("{} events were lost while this attempt ran", r.lost_events),
        );
    }
    fact(s, "notes", &notes, false);
    let deep: Vec<String> = r.deep.iter().flat_map(|d| d.lines()).collect();
    fact(s, "read at the verdict", &deep, true);
    s.push_str("</dl>\n</div>\n");
}

/// One `<dt>`/`<dd>` pair; nothing when there are no items.
fn fact(s: &mut String, name: &str, items: &[String], code: bool) {
    if items.is_empty() {
        return;
    }
    let _ = write!(s, "<div><dt>{}</dt><dd>", esc(name));
    let wrap = |x: &str| {
        if code {
            format!("<code>{}</code>", esc(x))
        } else {
            esc(x)
        }
    };
    if items.len() == 1 {
        s.push_str(&wrap(&items[0]));
    } else {
        s.push_str("<ul>");
        for i in items {
            let _ = write!(s, "<li>{}</li>", wrap(i));
        }
        s.push_str("</ul>");
    }
    s.push_str("</dd></div>\n");
}

/// Every hop, the failing one marked, the divergent one flagged.
fn hops(s: &mut String, r: &JourneyRecord, j: usize) {
    if r.hops.is_empty() {
        s.push_str("<p class=\"no-hops\">No hop was observed.</p>\n");
        return;
    }
    s.push_str(concat!(
        "<h3>Hops</h3>\n<table class=\"hops\"><thead><tr><th></th><th>#</th><th>t (µs)</th><th>leg</th>",
        "<th>namespace</th><th>device</th><th>point</th><th>packet</th><th>detail</th></tr></thead>\n<tbody>\n"
    ));
    let failing = r.failing_hop.filter(|_| r.outcome != Outcome::Connected);
    let diverged = r.divergence.as_ref().and_then(|d| d.hop);
    for (i, h) in r.hops.iter().enumerate() {
        let mut class = vec!["hop", leg_name(h.leg)];
        if failing == Some(i) {
            class.push("failed");
        }
        if diverged == Some(i) {
            class.push("diverged");
        }
        hop_row(s, h, i, j, &class.join(" "), failing == Some(i));
    }
    s.push_str("</tbody></table>\n");
}

fn leg_name(leg: Leg) -> &'static str {
    match leg {
        Leg::Request => "request",
        Leg::Reply => "reply",
        Leg::Control => "control",
    }
}

fn hop_row(s: &mut String, h: &HopRecord, i: usize, j: usize, class: &str, failed: bool) {
    let arrow = match h.leg {
        Leg::Request => "→",
        Leg::Reply => "←",
        Leg::Control => "·",
    };
    let packet = match (&h.tuple, &h.flags) {
        (Some(t), Some(f)) => format!("{t} [{f}]"),
        (Some(t), None) => t.clone(),
        _ => String::new(),
    };
    let deep: String = text::deep_lines(h)
        .iter()
        .map(|l| format!("<div class=\"deep\">{}</div>", esc(l.trim())))
        .collect();
    let _ = writeln!(
        s,
        "<tr class=\"{class}\" id=\"j{j}-hop-{i}\"><td class=\"mark\">{}</td><td>{i}</td><td class=\"num\">{:.1}</td><td>{arrow} {}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}{deep}</td></tr>",
        if failed { "✗" } else { "" },
        h.t_us,
        leg_name(h.leg),
        esc(&h.netns),
        esc(h.device.as_deref().unwrap_or("-")),
        esc(&h.point),
        esc(&packet),
        esc(h.detail.as_deref().unwrap_or_default()),
    );
}

const CSS: &str = r#"
:root { color-scheme: light; --bad: #dc2626; --req: #2563eb; --rep: #0f766e; --grey: #cbd2d9; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; background: #f6f7f9; color: #0f172a;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
code, .mono, .deep { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12.5px; }
header h1 { margin: 0; font-size: 22px; }
header .source { margin: 2px 0 20px; color: #64748b; }
section.journey { background: #fff; border: 1px solid #e2e8f0; border-radius: 12px; padding: 20px 24px;
  margin: 0 0 28px; box-shadow: 0 1px 2px rgb(15 23 42 / 5%); }
section.journey h2 { margin: 0 0 8px; font-size: 18px; font-weight: 600; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; font-size: 13px; font-weight: 700;
  letter-spacing: .04em; color: #fff; background: var(--bad); vertical-align: 2px; }
.badge.connected { background: #15803d; } .badge.late, .badge.unknown { background: #d97706; }
dl.meta { display: flex; flex-wrap: wrap; gap: 4px 22px; margin: 0 0 14px; color: #475569; }
dl.meta div { display: flex; gap: 6px; } dl.meta dt { color: #64748b; } dl.meta dd { margin: 0; }
figure.diagram { margin: 0 0 16px; overflow-x: auto; }
.verdict { border-left: 4px solid var(--bad); background: #fff7f7; padding: 12px 16px; border-radius: 0 8px 8px 0; margin-bottom: 18px; }
.verdict.connected { border-color: #15803d; background: #f3fbf5; }
.verdict.late, .verdict.unknown { border-color: #d97706; background: #fffbeb; }
.verdict .summary { margin: 0 0 8px; font-size: 15px; font-weight: 500; }
.verdict .fix { margin: 0 0 10px; } .verdict .fix code { background: #fff; border: 1px solid #e2e8f0; padding: 2px 6px; border-radius: 4px; }
dl.facts { margin: 0; } dl.facts div { display: grid; grid-template-columns: 170px 1fr; gap: 10px; padding: 2px 0; }
dl.facts dt { color: #64748b; } dl.facts dd { margin: 0; overflow-wrap: anywhere; } dl.facts ul { margin: 0; padding-left: 18px; }
h3 { font-size: 15px; margin: 12px 0 6px; }
table.hops { border-collapse: collapse; width: 100%; font-size: 13px; }
table.hops th { text-align: left; color: #64748b; font-weight: 600; border-bottom: 1px solid #e2e8f0; padding: 4px 8px; }
table.hops td { padding: 3px 8px; border-bottom: 1px solid #f1f5f9; vertical-align: top; overflow-wrap: anywhere; }
table.hops td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.hops tr.control td { color: #64748b; }
table.hops tr.failed td { background: #fee2e2; color: #7f1d1d; font-weight: 600; }
table.hops tr.diverged td { background: #fef3c7; }
table.hops td.mark { color: var(--bad); font-weight: 700; width: 1em; }
.deep { color: #64748b; font-weight: 400; }
section.repeats { color: #475569; }
.path-diagram { max-width: 100%; height: auto; font-family: "DejaVu Sans", system-ui, sans-serif; }
.zone-box { stroke-width: 1.2; }
.zone.host .zone-box { fill: #f8fafc; stroke: #94a3b8; }
.zone.sandbox .zone-box { fill: #f5f8ff; stroke: #93a8d6; }
.zone.guest .zone-box { fill: #f3faf5; stroke: #8fc3a0; }
.zone.other .zone-box { fill: #fffbeb; stroke: #d6b46a; stroke-dasharray: 6 4; }
.zone-name { font-size: 14px; font-weight: 700; fill: #0f172a; }
.zone-caption { font-size: 11.5px; font-weight: 400; fill: #64748b; }
.node rect { fill: #fff; stroke: #334155; stroke-width: 1.5; }
.node.passed rect { stroke: #94a3b8; }
.node.unreached rect { fill: #f1f3f5; stroke: var(--grey); stroke-dasharray: 4 3; }
.node.failed rect { fill: #fff5f5; stroke: var(--bad); stroke-width: 3; stroke-dasharray: none; }
.node-label { font-size: 14px; font-weight: 700; text-anchor: middle; fill: #0f172a; }
.node-sub { font-size: 11px; text-anchor: middle; fill: #475569; font-family: "DejaVu Sans Mono", ui-monospace, monospace; }
.node.unreached .node-label, .node.unreached .node-sub { fill: #9aa3af; }
.stop { stroke-width: 2; fill: #fff; stroke: var(--grey); }
.stop.request.seen { fill: var(--req); stroke: var(--req); } .stop.request.passed { stroke: var(--req); }
.stop.reply.seen { fill: var(--rep); stroke: var(--rep); } .stop.reply.passed { stroke: var(--rep); }
.lane path { fill: none; stroke-width: 3; }
.lane.request .seen { stroke: var(--req); } .lane.reply .seen { stroke: var(--rep); }
.lane.request .passed { stroke: var(--req); stroke-width: 2.2; stroke-dasharray: 7 5; }
.lane.reply .passed { stroke: var(--rep); stroke-width: 2.2; stroke-dasharray: 7 5; }
.lane.neutral .seen { stroke: #475569; } .lane.neutral .passed { stroke: #475569; stroke-width: 2.2; stroke-dasharray: 7 5; }
.lane .unreached { stroke: var(--grey); stroke-width: 2; stroke-dasharray: 3 5; }
.lane path.head { stroke: none; stroke-dasharray: none; }
.lane.request path.head { fill: var(--req); } .lane.reply path.head { fill: var(--rep); }
.lane path.head.unreached { fill: var(--grey); }
.hook rect { fill: #fff; stroke-width: 1.5; stroke: var(--grey); }
.hook text { font-size: 10.5px; font-weight: 700; text-anchor: middle; fill: #a3acb8; }
.hook.request.seen rect, .hook.request.passed rect { stroke: var(--req); } .hook.request.seen rect { fill: #dbeafe; }
.hook.reply.seen rect, .hook.reply.passed rect { stroke: var(--rep); } .hook.reply.seen rect { fill: #ccfbf1; }
.hook.request.seen text, .hook.request.passed text { fill: #1e40af; }
.hook.reply.seen text, .hook.reply.passed text { fill: #115e59; }
.hook.unexpected rect { stroke-dasharray: 3 2; }
.hook.request.failed rect, .hook.reply.failed rect { fill: var(--bad); stroke: var(--bad); }
.hook.request.failed text, .hook.reply.failed text { fill: #fff; }
.hop.failed circle { fill: var(--bad); stroke: #fff; stroke-width: 2.5; }
.hop.failed.unsure circle { fill: #d97706; }
.hop.failed .cross { stroke: #fff; stroke-width: 2.6; stroke-linecap: round; fill: none; }
.leader { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 4 3; fill: none; }
.leader.unsure { stroke: #d97706; }
.node.failed.unsure rect { fill: #fffbeb; stroke: #d97706; }
.callout rect { fill: #fff5f5; stroke: var(--bad); stroke-width: 1.5; }
.callout.unsure rect { fill: #fffbeb; stroke: #d97706; }
.callout text { font-family: "DejaVu Sans Mono", ui-monospace, monospace; }
.callout-title { font-size: 13px; font-weight: 700; fill: #991b1b; }
.callout.unsure .callout-title { fill: #92400e; }
.callout-line { font-size: 12px; fill: #3b0d0d; }
.legend text { font-size: 11.5px; fill: #475569; }
.legend path { stroke-width: 3; fill: none; }
.legend-fail { fill: var(--bad); }
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn page(records: Vec<JourneyRecord>) -> String {
        let entries: Vec<Entry> = records
            .into_iter()
            .map(|record| Entry {
                record,
                incident: None,
            })
            .collect();
        document("t.json", &entries, &["↻ 3 attempts ended the same way".into()])
    }

    #[test]
    fn one_page_fetches_nothing() {
        let html = page(vec![
            fixtures::record("forward-drop"),
            fixtures::record("reply-drop"),
        ]);
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        assert!(html.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""));
        for fetch in [
            "<script", "src=", "href=", "url(", "@import", "<link", "<img", "<iframe",
        ] {
            assert!(!html.contains(fetch), "{fetch}");
        }
        // The only URL is the SVG namespace, which no browser fetches.
        assert_eq!(html.matches("://").count(), 2, "one xmlns per diagram");
        assert_eq!(html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(), 2);
        assert_eq!(html.matches("<section class=\"journey").count(), 2);
        assert!(html.contains("id=\"j0-ns-sandbox\"") && html.contains("id=\"j1-ns-sandbox\""));
        assert!(html.contains("<li>↻ 3 attempts ended the same way</li>"));
    }

    #[test]
    fn the_verdict_and_the_failing_hop_come_after_the_diagram() {
        let html = page(vec![fixtures::record("forward-drop")]);
        let diagram = html.find("<figure class=\"diagram\">").unwrap();
        let verdict = html.find("<div class=\"verdict dropped\">").unwrap();
        let table = html.find("<table class=\"hops\">").unwrap();
        assert!(diagram < verdict && verdict < table);
        assert!(html.contains(
            "<span class=\"badge dropped\">DROPPED</span> attempt 10.12.0.2:43395 → 10.11.0.1:49983"
        ));
        assert!(html.contains("<p class=\"fix\"><b>Likely fix</b> <code>remove or narrow that rule: ip netns exec ns-1 iptables -t filter -D FORWARD"));
        assert!(html.contains("<dt>kernel reason</dt><dd><code>NETFILTER_DROP in nft_do_chain</code></dd>"));
        assert!(
            html.contains(
                "<tr class=\"hop request failed\" id=\"j0-hop-15\"><td class=\"mark\">✗</td><td>15</td>"
            ),
            "{html}"
        );
        assert_eq!(html.matches("class=\"hop request failed\"").count(), 1);
    }

    #[test]
    fn every_outcome_renders() {
        for r in [
            fixtures::record("connected"),
            fixtures::record("guest-no-listener"),
            fixtures::record("no-reader"),
            fixtures::record("vmm-stopped"),
            fixtures::record("slow-guest"),
            fixtures::no_reply(),
            fixtures::old_unknown(),
        ] {
            let outcome = r.outcome.name();
            let html = page(vec![r]);
            assert!(
                html.contains(&format!("<section class=\"journey {outcome}\"")),
                "{outcome}"
            );
            assert_eq!(
                html.contains("id=\"j0-fail\""),
                !matches!(outcome, "connected" | "unknown"),
                "{outcome}"
            );
        }
        let html = page(vec![fixtures::old_unknown()]);
        assert!(html.contains("<p class=\"no-hops\">No hop was observed.</p>"));
    }

    #[test]
    fn hostile_text_is_escaped_everywhere() {
        let html = page(vec![fixtures::hostile()]);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains('\u{1b}'));
        assert!(
            html.contains("dropped by &lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;#`|\\u{1b}[31m"),
            "{html}"
        );
        assert!(
            html.contains("<dt>actors</dt><dd>rule in ns-1 · &lt;script&gt;"),
            "{html}"
        );
        assert!(
            html.contains(
                "<dt>divergence</dt><dd>diverged at hop #15: device expected tap0, observed &lt;script&gt;"
            ),
            "{html}"
        );
        assert!(
            html.contains("<tr class=\"hop request failed diverged\" id=\"j0-hop-15\">"),
            "{html}"
        );
    }
}
