//! The path as a Mermaid flowchart, for Markdown reports (GitHub, GitLab and most trackers
//! draw it): the same place list as the SVG, namespaces as subgraphs, the request leg as solid
//! links left to right, the reply leg as dotted links back, hooks as link labels, and the
//! failure styled red with a note beside it. Ids are generated (`z0`, `n0`); every label is
//! quoted and escaped, so no name from the network can end the block or inject syntax.
use std::fmt::Write as _;

use super::places::{Lane, Places, Reach, Severity, Spot, ZoneKind};

/// A fenced ```` ```mermaid ```` block.
pub fn render(p: &Places) -> String {
    let mut s = String::from("```mermaid\nflowchart LR\n");
    for z in 0..p.zones.len() {
        subgraph(&mut s, p, z);
    }
    let mut styles = Vec::new();
    for lane in [Lane::Request, Lane::Reply] {
        links(&mut s, p, lane, &mut styles);
    }
    if let Some(f) = &p.failure {
        note(&mut s, f);
        let from = match f.spot {
            Spot::Node(i) => i,
            Spot::Mark(m) if f.lane == Lane::Request => p.marks[m].edge,
            Spot::Mark(m) => p.marks[m].edge + 1,
        };
        let _ = writeln!(s, "  n{from} -.- fail");
        styles.push(LinkStyle::Note);
    }
    classes(&mut s, p);
    for (i, st) in styles.iter().enumerate() {
        let _ = writeln!(s, "  linkStyle {i} {}", st.css());
    }
    s.push_str("```\n");
    s
}

/// Mermaid's label text: `#`, quotes, angle brackets, backticks and pipes as its entity
/// codes, line breaks as spaces, other control characters dropped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '&' => out.push_str("#amp;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '`' => out.push_str("#96;"),
            '|' => out.push_str("#124;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn subgraph(s: &mut String, p: &Places, z: usize) {
    let zone = &p.zones[z];
    let _ = writeln!(
        s,
        "  subgraph z{z}[\"{} · {}\"]",
        esc(&zone.name),
        esc(zone.caption)
    );
    for (i, n) in p.zone_nodes(z) {
        let sub: String = n
            .sub
            .iter()
            .flat_map(|x| x.lines())
            .map(|x| format!("<br/>{}", esc(x)))
            .collect();
        let _ = writeln!(s, "    n{i}[\"{}{sub}\"]", esc(&n.label));
    }
    s.push_str("  end\n");
}

/// The failure's note, outside the subgraphs: inside one it would widen that namespace and
/// push the others out of line.
fn note(s: &mut String, f: &super::places::Failure) {
    let mut text = vec![format!("{} {}", f.severity.symbol(), esc(&f.title))];
    text.extend(f.lines.iter().map(|l| esc(&super::format::cut(l, 90))));
    let _ = writeln!(s, "  fail[\"{}\"]", text.join("<br/>"));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkStyle {
    Seen(Lane),
    Passed(Lane),
    Unreached,
    Failed,
    Note,
}

impl LinkStyle {
    fn css(self) -> &'static str {
        match self {
            LinkStyle::Seen(Lane::Request) => "stroke:#2563eb,stroke-width:2px",
            LinkStyle::Seen(Lane::Reply) => "stroke:#0f766e,stroke-width:2px",
            LinkStyle::Passed(Lane::Request) => "stroke:#2563eb,stroke-width:1.5px,stroke-dasharray:6 4",
            LinkStyle::Passed(Lane::Reply) => "stroke:#0f766e,stroke-width:1.5px,stroke-dasharray:6 4",
            LinkStyle::Unreached => "stroke:#c4c9d1,stroke-width:1px,stroke-dasharray:3 4",
            LinkStyle::Failed => "stroke:#dc2626,stroke-width:3px",
            LinkStyle::Note => "stroke:#dc2626,stroke-width:1px,stroke-dasharray:2 3",
        }
    }
}

/// One lane's links: the request's left to right, the reply's right to left (declared after
/// the request's, so the layout keeps the request's order). A link is styled as its
/// destination was reached; the one carrying the failure is red.
fn links(s: &mut String, p: &Places, lane: Lane, styles: &mut Vec<LinkStyle>) {
    let mut pairs = p.main_pairs();
    if lane == Lane::Reply {
        pairs.reverse();
    }
    for (a, b) in pairs {
        // In the order the lane meets them.
        let marks = p.edge_marks(a, lane);
        let failed_mark = |m: usize| p.failure.as_ref().is_some_and(|f| f.spot == Spot::Mark(m));
        let label: Vec<String> = marks
            .iter()
            .map(|&m| {
                let short = p.marks[m].short().to_string();
                if failed_mark(m) {
                    format!("✗ {short}")
                } else {
                    short
                }
            })
            .collect();
        let (from, to) = if lane == Lane::Request { (a, b) } else { (b, a) };
        let arrow = if lane == Lane::Request { "-->" } else { "-.->" };
        let label = if label.is_empty() {
            String::new()
        } else {
            format!("|\"{}\"|", esc(&label.join(" · ")))
        };
        let _ = writeln!(s, "  n{from} {arrow}{label} n{to}");
        let reach = match lane {
            Lane::Request => p.nodes[to].request,
            Lane::Reply => p.nodes[to].reply,
        };
        let failed_node = p
            .failure
            .as_ref()
            .is_some_and(|f| f.spot == Spot::Node(to) && f.lane == lane && f.severity == Severity::Bad);
        styles.push(match reach {
            _ if marks.iter().any(|&m| failed_mark(m)) || failed_node => LinkStyle::Failed,
            Reach::Seen => LinkStyle::Seen(lane),
            Reach::Passed => LinkStyle::Passed(lane),
            Reach::Unreached => LinkStyle::Unreached,
        });
    }
}

fn classes(s: &mut String, p: &Places) {
    s.push_str(concat!(
        "  classDef seen fill:#ffffff,stroke:#334155,stroke-width:1.5px,color:#0f172a\n",
        "  classDef passed fill:#ffffff,stroke:#94a3b8,stroke-width:1px,color:#334155\n",
        "  classDef unreached fill:#f1f3f5,stroke:#cbd2d9,stroke-dasharray:3 3,color:#8a94a3\n",
        "  classDef failed fill:#fee2e2,stroke:#dc2626,stroke-width:3px,color:#7f1d1d\n",
        "  classDef unsure fill:#fef3c7,stroke:#d97706,stroke-width:3px,color:#78350f\n",
        "  classDef note fill:#fff5f5,stroke:#dc2626,color:#7f1d1d,text-align:left\n",
    ));
    let failing = p.failure.as_ref().and_then(|f| match f.spot {
        Spot::Node(i) => Some((i, f.severity)),
        Spot::Mark(_) => None,
    });
    for (i, n) in p.nodes.iter().enumerate() {
        let class = match failing {
            Some((at, Severity::Bad)) if at == i => "failed",
            Some((at, Severity::Unsure)) if at == i => "unsure",
            _ => match n.request.max(n.reply) {
                Reach::Seen => "seen",
                Reach::Passed => "passed",
                Reach::Unreached => "unreached",
            },
        };
        let _ = writeln!(s, "  class n{i} {class}");
    }
    if p.failure.is_some() {
        s.push_str("  class fail note\n");
    }
    for (z, zone) in p.zones.iter().enumerate() {
        let fill = match zone.kind {
            ZoneKind::Host => "#f8fafc",
            ZoneKind::Sandbox => "#f5f8ff",
            ZoneKind::Guest => "#f3faf5",
            ZoneKind::Other => "#fffbeb",
        };
        let _ = writeln!(s, "  style z{z} fill:{fill},stroke:#94a3b8");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{fixtures, places::places};

    #[test]
    fn a_forward_drop_as_a_flowchart() {
        let m = render(&places(&fixtures::record("forward-drop")));
        assert!(
            m.starts_with("```mermaid\nflowchart LR\n") && m.ends_with("```\n"),
            "{m}"
        );
        for line in [
            "  subgraph z0[\"e2b-host · host side\"]",
            "  subgraph z1[\"ns-1 · sandbox namespace\"]",
            "    n3[\"DNAT<br/>10.11.0.1<br/>→ 169.254.0.21\"]",
            "  n3 -->|\"✗ FWD · POST\"| n4",
            "  n4 -.->|\"PRE · FWD\"| n3",
            "  n3 -.- fail",
            "  class n4 unreached",
            "  class n3 seen",
            "  linkStyle 3 stroke:#dc2626,stroke-width:3px",
        ] {
            assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
        }
        assert!(
            m.contains("  fail[\"✗ DROPPED · NETFILTER_DROP<br/>ns-1 · eth0 → tap0 · FORWARD"),
            "{m}"
        );
        // One linkStyle per link: 5 request, 5 reply, the note.
        assert_eq!(m.matches("linkStyle").count(), 11, "{m}");
    }

    #[test]
    fn each_outcome_styles_its_place() {
        let m = render(&places(&fixtures::record("guest-no-listener")));
        assert!(
            m.contains("  class n5 failed\n") && m.contains("  n5 -.- fail\n"),
            "{m}"
        );
        let m = render(&places(&fixtures::record("slow-guest")));
        assert!(
            m.contains("  class n5 unsure\n") && m.contains("fail[\"⚠ LATE"),
            "{m}"
        );
        let m = render(&places(&fixtures::record("connected")));
        assert!(!m.contains("fail[") && !m.contains(" unreached\n"), "{m}");
        assert!(
            m.lines()
                .filter(|l| l.contains("linkStyle"))
                .all(|l| !l.contains("#dc2626")),
            "{m}"
        );
        let m = render(&places(&fixtures::old_unknown()));
        assert!(
            m.contains("subgraph z0[\"host · host side\"]") && !m.contains("fail["),
            "{m}"
        );
    }

    #[test]
    fn hostile_names_cannot_break_out() {
        let m = render(&places(&fixtures::hostile()));
        assert_eq!(m.matches("```").count(), 2, "the fence is ours alone: {m}");
        assert!(!m.contains("<script") && !m.contains('\u{1b}'), "{m}");
        for line in m.lines().filter(|l| l.contains('[') && l.contains('"')) {
            // Inside a label's quotes, no quote, backtick or pipe of the data survives.
            let label = &line[line.find("[\"").unwrap() + 2..line.rfind("\"]").unwrap()];
            assert!(!label.contains(['"', '`', '|']), "{line}");
        }
        assert!(
            m.contains("#lt;script#gt;alert(1)#lt;/script#gt;#quot;'#amp;#35;#96;#124;"),
            "{m}"
        );
    }
}
