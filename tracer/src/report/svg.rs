//! The path as an inline SVG: namespace boxes left to right, the devices as nodes, the request
//! lane above and the reply lane below, netfilter hooks as small marks on the lanes, and the
//! failure as a red mark with a callout. The layout is a fixed grid computed here from the
//! place list (no text measuring, no script), so it is the same on every machine and tests
//! can rely on it.
use std::fmt::Write as _;

use super::{
    format::cut,
    places::{Lane, Mark, NodeKind, Places, Reach, Severity, Spot, ZoneKind},
};
use crate::output::escape;

const MARGIN: f64 = 16.0;
const ZONE_TOP: f64 = 12.0;
const ZONE_PAD: f64 = 22.0;
const ZONE_GAP: f64 = 44.0;
const NODE_TOP: f64 = ZONE_TOP + 46.0;
const NODE_W: f64 = 128.0;
const NODE_H: f64 = 132.0;
const ZONE_BOTTOM: f64 = NODE_TOP + NODE_H + 20.0;
const PILL_W: f64 = 42.0;
const PILL_H: f64 = 18.0;
/// Width of one character of the callout's monospace text at 12px (DejaVu Sans Mono and
/// its kin advance 0.6 em); a little more so that no line overflows its box.
const MONO_CHAR: f64 = 7.4;
/// The callout's title: bold, 13px.
const TITLE_CHAR: f64 = 8.3;
const LINE_H: f64 = 18.0;

/// Coordinates of everything drawn, from the place list alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    /// `[x, y, w, h]` per zone, per node; the centre of each mark.
    pub zones: Vec<[f64; 4]>,
    pub nodes: Vec<[f64; 4]>,
    pub marks: Vec<(f64, f64)>,
    /// The failure mark's centre, and the callout's box.
    pub failure: Option<((f64, f64), [f64; 4])>,
    pub legend_y: f64,
}

/// The y of a lane.
pub fn lane_y(lane: Lane) -> f64 {
    match lane {
        Lane::Request => NODE_TOP + 22.0,
        Lane::Reply => NODE_TOP + NODE_H - 22.0,
    }
}

pub fn layout(p: &Places) -> Layout {
    let (zones, nodes) = columns(p);
    let marks = (0..p.marks.len())
        .map(|m| mark_centre(p, &nodes, m))
        .collect::<Vec<_>>();
    let width = zones.last().map_or(2.0 * MARGIN, |z| z[0] + z[2] + MARGIN);
    let failure = p.failure.as_ref().map(|f| {
        // Beside a hook's mark (above the request lane, below the reply lane) so its label
        // stays readable; on a node, on the lane's stop.
        let at = match f.spot {
            Spot::Mark(m) if f.lane == Lane::Request => (marks[m].0, marks[m].1 - 22.0),
            Spot::Mark(m) => (marks[m].0, marks[m].1 + 22.0),
            Spot::Node(i) => (nodes[i][0] + nodes[i][2] / 2.0, lane_y(f.lane)),
        };
        let lines = callout_lines(f.severity, f.title.as_str(), &f.lines, width);
        let chars = |l: &String| l.chars().count() as f64;
        let title = lines.first().map_or(0.0, chars) * TITLE_CHAR;
        let body = lines.iter().skip(1).map(chars).fold(0.0, f64::max) * MONO_CHAR;
        let w = title.max(body) + 28.0;
        let w = w.min(width - 2.0 * MARGIN);
        let x = (at.0 - w / 2.0).clamp(MARGIN, width - MARGIN - w);
        let h = 16.0 + LINE_H * lines.len() as f64;
        (at, [x, ZONE_BOTTOM + 30.0, w, h])
    });
    let legend_y = failure.map_or(ZONE_BOTTOM + 26.0, |(_, b)| b[1] + b[3] + 28.0);
    Layout {
        width,
        height: legend_y + 16.0,
        zones,
        nodes,
        marks,
        failure,
        legend_y,
    }
}

/// Zones and nodes on one row: each zone as wide as its nodes and the edges between them,
/// an edge as wide as the hook marks it carries.
fn columns(p: &Places) -> (Vec<[f64; 4]>, Vec<[f64; 4]>) {
    let mut zones = Vec::new();
    let mut nodes = vec![[0.0; 4]; p.nodes.len()];
    let mut x = MARGIN;
    for z in 0..p.zones.len() {
        let start = x;
        x += ZONE_PAD;
        let members: Vec<usize> = p.zone_nodes(z).map(|(i, _)| i).collect();
        for (k, &i) in members.iter().enumerate() {
            nodes[i] = [x, NODE_TOP, NODE_W, NODE_H];
            x += NODE_W;
            if k + 1 < members.len() {
                x += edge_width(p, i);
            }
        }
        x += ZONE_PAD;
        let label = zone_name(&p.zones[z]).chars().count() + p.zones[z].caption.len();
        let w = (x - start).max(label as f64 * 7.5 + 40.0);
        zones.push([start, ZONE_TOP, w, ZONE_BOTTOM - ZONE_TOP]);
        x = start + w + ZONE_GAP;
    }
    (zones, nodes)
}

fn edge_width(p: &Places, edge: usize) -> f64 {
    let n = [Lane::Request, Lane::Reply]
        .iter()
        .map(|&l| p.edge_marks(edge, l).len())
        .max()
        .unwrap_or(0);
    (28.0 + n as f64 * (PILL_W + 10.0)).max(64.0)
}

/// Marks spread evenly over their edge, in the order their lane meets them (the reply lane
/// runs right to left).
fn mark_centre(p: &Places, nodes: &[[f64; 4]], me: usize) -> (f64, f64) {
    let m = &p.marks[me];
    let on_edge = p.edge_marks(m.edge, m.lane);
    let Some(k) = on_edge.iter().position(|&i| i == me) else {
        return (-100.0, -100.0); // not drawn: an unexpected hook never seen
    };
    let x0 = nodes[m.edge][0] + NODE_W;
    let x1 = nodes.get(m.edge + 1).map_or(x0 + 64.0, |n| n[0]);
    let step = (x1 - x0) / (on_edge.len() + 1) as f64;
    let x = match m.lane {
        Lane::Request => x0 + step * (k + 1) as f64,
        Lane::Reply => x1 - step * (k + 1) as f64,
    };
    (x, lane_y(m.lane))
}

/// The callout's text, each line cut to the diagram's width.
fn callout_lines(severity: Severity, title: &str, lines: &[String], width: f64) -> Vec<String> {
    let room = width - 2.0 * MARGIN - 28.0;
    let title = shown(
        &format!("{} {title}", severity.symbol()),
        (room / TITLE_CHAR) as usize,
    );
    let max = (room / MONO_CHAR) as usize;
    std::iter::once(title)
        .chain(lines.iter().map(|l| shown(l, max)))
        .collect()
}

/// Text as drawn (control characters made visible, which lengthens it), cut to `max`
/// characters.
fn shown(s: &str, max: usize) -> String {
    cut(&escape(s).replace('\n', " "), max)
}

/// Text for HTML and SVG: control characters made visible, markup characters escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in escape(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The SVG of one journey's path. `prefix` makes its ids unique in a page of many.
pub fn render(p: &Places, prefix: &str) -> String {
    let l = layout(p);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="path-diagram" id="{prefix}diagram" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="the path of the attempt, namespace by namespace">"#,
        w = l.width,
        h = l.height
    );
    for z in 0..p.zones.len() {
        zone(&mut s, p, &l, z, prefix);
    }
    if let (Some(((x, y), b)), Some(f)) = (l.failure, &p.failure) {
        // Drawn before the nodes: its leader then seems to come out from under them.
        let _ = writeln!(
            s,
            r#"<path class="leader {}" d="M{x:.1} {:.1} V{:.1}"/>"#,
            severity_class(f.severity),
            y + 12.0,
            b[1]
        );
    }
    lanes(&mut s, p, &l);
    for i in 0..p.nodes.len() {
        node(&mut s, p, &l, i, prefix);
    }
    for (i, m) in p.marks.iter().enumerate() {
        if l.marks[i].0 >= 0.0 {
            hook(&mut s, m, l.marks[i], p, i);
        }
    }
    failure(&mut s, p, &l, prefix);
    legend(&mut s, &l);
    s.push_str("</svg>\n");
    s
}

fn zone(s: &mut String, p: &Places, l: &Layout, z: usize, prefix: &str) {
    let zone = &p.zones[z];
    let [x, y, w, h] = l.zones[z];
    let kind = match zone.kind {
        ZoneKind::Host => "host",
        ZoneKind::Sandbox => "sandbox",
        ZoneKind::Guest => "guest",
        ZoneKind::Other => "other",
    };
    let _ = writeln!(
        s,
        r#"<g class="zone {kind}" id="{prefix}ns-{key}" data-netns="{name}"><rect class="zone-box" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="10"/><text class="zone-name" x="{tx:.1}" y="{ty:.1}">{name}<tspan class="zone-caption" dx="8">{caption}</tspan></text></g>"#,
        key = esc(&zone.key),
        name = esc(&zone_name(zone)),
        caption = esc(zone.caption),
        tx = x + 14.0,
        ty = y + 24.0,
    );
}

/// A namespace's name as its box shows it (the full name is in the page's text).
fn zone_name(z: &super::places::Zone) -> String {
    shown(&z.name, 24)
}

fn severity_class(s: Severity) -> &'static str {
    match s {
        Severity::Bad => "bad",
        Severity::Unsure => "unsure",
    }
}

fn reach_class(r: Reach) -> &'static str {
    match r {
        Reach::Seen => "seen",
        Reach::Passed => "passed",
        Reach::Unreached => "unreached",
    }
}

fn node(s: &mut String, p: &Places, l: &Layout, i: usize, prefix: &str) {
    let n = &p.nodes[i];
    let [x, y, w, h] = l.nodes[i];
    let failed = match &p.failure {
        Some(f) if f.spot == Spot::Node(i) => format!(" failed {}", severity_class(f.severity)),
        _ => String::new(),
    };
    let kind = match n.kind {
        NodeKind::Client => "client",
        NodeKind::Device => "device",
        NodeKind::Nat => "nat",
        NodeKind::Bridge => "bridge",
        NodeKind::Guest => "guest",
    };
    let reach = reach_class(n.request.max(n.reply));
    let cx = x + w / 2.0;
    let _ = write!(
        s,
        r#"<g class="node {kind} {reach}{failed}" id="{prefix}node-{}"><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="8"/>"#,
        esc(&n.key),
    );
    let label = shown(&n.label, 13);
    let _ = write!(
        s,
        r#"<text class="node-label" x="{cx:.1}" y="{:.1}">{}</text>"#,
        y + h / 2.0 - 6.0,
        esc(&label)
    );
    for (k, sub) in n.sub.iter().flat_map(|x| x.lines()).take(2).enumerate() {
        let _ = write!(
            s,
            r#"<text class="node-sub" x="{cx:.1}" y="{:.1}">{}</text>"#,
            y + h / 2.0 + 16.0 + 14.0 * k as f64,
            esc(&shown(sub, 18))
        );
    }
    for (lane, reach) in [(Lane::Request, n.request), (Lane::Reply, n.reply)] {
        let _ = write!(
            s,
            r#"<circle class="stop {} {}" cx="{cx:.1}" cy="{:.1}" r="5"/>"#,
            lane.name(),
            reach_class(reach),
            lane_y(lane)
        );
    }
    let _ = writeln!(s, "<title>{}</title></g>", esc(&node_title(n)));
}

fn node_title(n: &super::places::Node) -> String {
    let sub = n
        .sub
        .as_deref()
        .map(|s| format!(" {}", s.replace('\n', " ")))
        .unwrap_or_default();
    format!(
        "{}{sub}: request {}, reply {}",
        n.label,
        reach_class(n.request),
        reach_class(n.reply)
    )
}

/// Each lane as pieces between consecutive places, each piece styled by how far the packet
/// got: a piece is drawn as its destination was reached.
fn lanes(s: &mut String, p: &Places, l: &Layout) {
    for lane in [Lane::Request, Lane::Reply] {
        let y = lane_y(lane);
        for (a, b) in p.main_pairs() {
            let mut stops: Vec<(f64, Reach)> = vec![(l.nodes[a][0] + NODE_W, reach_at(p, lane, a))];
            let mut marks: Vec<usize> = p.edge_marks(a, lane);
            if lane == Lane::Reply {
                marks.reverse();
            }
            stops.extend(marks.iter().map(|&m| (l.marks[m].0, p.marks[m].reach)));
            stops.push((l.nodes[b][0], reach_at(p, lane, b)));
            stops.sort_by(|x, y| x.0.total_cmp(&y.0));
            let _ = write!(s, r#"<g class="lane {}">"#, lane.name());
            for w in stops.windows(2) {
                let (from, to) = (w[0], w[1]);
                // The destination: the right end going right, the left end coming back.
                let dest = if lane == Lane::Request { to.1 } else { from.1 };
                let _ = write!(
                    s,
                    r#"<path class="{}" d="M{:.1} {y:.1} H{:.1}"/>"#,
                    reach_class(dest),
                    from.0,
                    to.0
                );
            }
            arrowhead(s, lane, &stops, y);
            s.push_str("</g>\n");
        }
    }
}

fn reach_at(p: &Places, lane: Lane, node: usize) -> Reach {
    match lane {
        Lane::Request => p.nodes[node].request,
        Lane::Reply => p.nodes[node].reply,
    }
}

/// The arrow's head where the lane enters the next node.
fn arrowhead(s: &mut String, lane: Lane, stops: &[(f64, Reach)], y: f64) {
    let (tip, dest, dir) = match lane {
        Lane::Request => {
            let last = stops[stops.len() - 1];
            (last.0 - 1.0, last.1, -1.0)
        }
        Lane::Reply => (stops[0].0 + 1.0, stops[0].1, 1.0),
    };
    let back = tip + dir * 9.0;
    let _ = write!(
        s,
        r#"<path class="head {}" d="M{tip:.1} {y:.1} L{back:.1} {:.1} L{back:.1} {:.1} Z"/>"#,
        reach_class(dest),
        y - 5.0,
        y + 5.0
    );
}

fn hook(s: &mut String, m: &Mark, (cx, cy): (f64, f64), p: &Places, i: usize) {
    let failed = p.failure.as_ref().is_some_and(|f| f.spot == Spot::Mark(i));
    let _ = writeln!(
        s,
        r#"<g class="hook {} {}{}{}" data-hook="{}"><rect x="{:.1}" y="{:.1}" width="{PILL_W:.0}" height="{PILL_H:.0}" rx="9"/><text x="{cx:.1}" y="{:.1}">{}</text><title>{} {}: {}</title></g>"#,
        m.lane.name(),
        reach_class(m.reach),
        if m.expected { "" } else { " unexpected" },
        if failed { " failed" } else { "" },
        esc(&m.hook),
        cx - PILL_W / 2.0,
        cy - PILL_H / 2.0,
        cy + 4.0,
        esc(m.short()),
        m.lane.name(),
        esc(&m.hook),
        reach_class(m.reach),
    );
}

fn failure(s: &mut String, p: &Places, l: &Layout, prefix: &str) {
    let (Some(f), Some(((x, y), b))) = (&p.failure, l.failure) else {
        return;
    };
    let sev = severity_class(f.severity);
    let spot = match f.spot {
        Spot::Node(i) => format!("node-{}", p.nodes[i].key),
        Spot::Mark(m) => format!("hook-{}", p.marks[m].hook),
    };
    let _ = writeln!(
        s,
        r#"<g class="hop failed {sev}" id="{prefix}fail" data-zone="{}" data-lane="{}" data-spot="{}"><circle cx="{x:.1}" cy="{y:.1}" r="13"/><path class="cross" d="M{:.1} {:.1} L{:.1} {:.1} M{:.1} {:.1} L{:.1} {:.1}"/></g>"#,
        esc(&p.zones[f.zone].key),
        f.lane.name(),
        esc(&spot),
        x - 5.0,
        y - 5.0,
        x + 5.0,
        y + 5.0,
        x + 5.0,
        y - 5.0,
        x - 5.0,
        y + 5.0,
    );
    let lines = callout_lines(f.severity, &f.title, &f.lines, l.width);
    let [bx, by, bw, bh] = b;
    let _ = write!(
        s,
        r#"<g class="callout {sev}" id="{prefix}callout"><rect x="{bx:.1}" y="{by:.1}" width="{bw:.1}" height="{bh:.1}" rx="6"/>"#
    );
    for (k, line) in lines.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text class="{}" x="{:.1}" y="{:.1}">{}</text>"#,
            if k == 0 { "callout-title" } else { "callout-line" },
            bx + 14.0,
            by + 21.0 + LINE_H * k as f64,
            esc(line)
        );
    }
    s.push_str("</g>\n");
}

/// What the lines and colours mean.
fn legend(s: &mut String, l: &Layout) {
    let y = l.legend_y;
    let items = [
        ("lane request", "seen", "request (SYN) →"),
        ("lane reply", "seen", "← reply (SYN-ACK)"),
        ("lane neutral", "seen", "observed"),
        ("lane neutral", "passed", "passed (inferred)"),
        ("lane", "unreached", "never reached"),
    ];
    let _ = write!(s, r#"<g class="legend">"#);
    let mut x = MARGIN;
    for (group, class, label) in items {
        let _ = write!(
            s,
            r#"<g class="{group}"><path class="{class}" d="M{x:.1} {y:.1} H{:.1}"/></g><text x="{:.1}" y="{:.1}">{label}</text>"#,
            x + 28.0,
            x + 34.0,
            y + 4.0
        );
        x += 34.0 + label.chars().count() as f64 * 7.0 + 22.0;
    }
    let _ = write!(
        s,
        r#"<circle class="legend-fail" cx="{:.1}" cy="{y:.1}" r="7"/><text x="{:.1}" y="{:.1}">where it failed</text>"#,
        x + 7.0,
        x + 20.0,
        y + 4.0
    );
    s.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{fixtures, places::places};

    fn inside(outer: [f64; 4], (x, y): (f64, f64)) -> bool {
        x >= outer[0] && x <= outer[0] + outer[2] && y >= outer[1] && y <= outer[1] + outer[3]
    }

    #[test]
    fn boxes_run_left_to_right_and_hold_their_places() {
        for name in [
            "forward-drop",
            "reply-drop",
            "host-input-drop",
            "bridge-tap-down",
            "wrong-slot-route",
        ] {
            let p = places(&fixtures::record(name));
            let l = layout(&p);
            for w in l.zones.windows(2) {
                assert!(
                    w[0][0] + w[0][2] < w[1][0],
                    "{name}: zones overlap: {:?}",
                    l.zones
                );
            }
            for (i, n) in p.nodes.iter().enumerate() {
                let [x, y, w, h] = l.nodes[i];
                let z = l.zones[n.zone];
                assert!(
                    inside(z, (x, y)) && inside(z, (x + w, y + h)),
                    "{name}: {} outside its zone",
                    n.key
                );
            }
            for (i, m) in p
                .marks
                .iter()
                .enumerate()
                .filter(|(_, m)| m.expected || m.reach == Reach::Seen)
            {
                assert!(
                    inside(l.zones[m.zone], l.marks[i]),
                    "{name}: {} mark outside its zone",
                    m.hook
                );
            }
            let f = p.failure.as_ref().unwrap();
            let (at, callout) = l.failure.unwrap();
            assert!(
                inside(l.zones[f.zone], at),
                "{name}: the failure mark is in {}",
                p.zones[f.zone].key
            );
            assert!(
                callout[0] >= MARGIN && callout[0] + callout[2] <= l.width - MARGIN + 0.01,
                "{name}: {callout:?}"
            );
            assert!(
                l.legend_y > callout[1] + callout[3] && l.height > l.legend_y,
                "{name}"
            );
        }
    }

    #[test]
    fn the_svg_names_its_parts_and_is_the_same_every_time() {
        let p = places(&fixtures::record("forward-drop"));
        let svg = render(&p, "j0-");
        assert_eq!(svg, render(&p, "j0-"));
        for id in [
            "j0-ns-host",
            "j0-ns-sandbox",
            "j0-ns-guest",
            "j0-node-tap",
            "j0-fail",
            "j0-callout",
        ] {
            assert_eq!(svg.matches(&format!("id=\"{id}\"")).count(), 1, "{id}");
        }
        assert!(svg.contains(r#"<g class="hop failed bad" id="j0-fail" data-zone="sandbox" data-lane="request" data-spot="hook-FORWARD">"#), "{svg}");
        assert!(
            svg.contains(r#"<g class="hook request seen failed" data-hook="FORWARD">"#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"<g class="node device unreached" id="j0-node-tap">"#),
            "{svg}"
        );
        assert!(svg.contains(">✗ DROPPED · NETFILTER_DROP</text>"), "{svg}");
        // A connected journey: no failure drawn, every lane piece observed or inferred.
        let svg = render(&places(&fixtures::record("connected")), "j1-");
        let drawing = svg.split("<g class=\"legend\">").next().unwrap();
        assert!(
            !drawing.contains("failed") && !drawing.contains("unreached"),
            "{svg}"
        );
    }

    #[test]
    fn hostile_names_are_text() {
        let svg = render(&places(&fixtures::hostile()), "j0-");
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains('\u{1b}'), "control characters are made visible");
        // Every element that opens is one of ours.
        for tag in svg
            .split('<')
            .skip(1)
            .map(|t| t.split([' ', '>', '/']).next().unwrap_or(""))
        {
            assert!(
                ["", "svg", "g", "rect", "text", "tspan", "path", "circle", "title"].contains(&tag),
                "unexpected element {tag:?}"
            );
        }
    }
}
