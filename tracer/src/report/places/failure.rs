//! Where and why it failed: the failure's place (the failing hop's, or where the verdict's own
//! record puts it), its title (the outcome and its reason), and its lines (the drop's place
//! and rule, the actors, the divergence).
use tracer_model::verdict::{Direction, Outcome, ResetBy};

use super::{
    Failure, Lane, NodeKind, Places, Severity, Spot,
    reach::{device_node, hook_mark, zone_of},
    skeleton::Names,
};
use crate::report::record::{ActorRecord, DivergenceRecord, JourneyRecord, QueuedRecord, UnreachableRecord};

/// The failure's place: the failing hop's, or where the verdict's own record puts it.
pub(super) fn failure(
    p: &Places,
    n: &Names,
    r: &JourneyRecord,
    spots: &[Option<(Lane, Spot)>],
) -> Option<Failure> {
    if r.outcome == Outcome::Connected {
        return None;
    }
    let at = verdict_spot(p, n, r).or_else(|| r.failing_hop.and_then(|i| spots.get(i).copied().flatten()));
    let (lane, spot) = at?;
    let zone = match spot {
        Spot::Node(i) => p.nodes[i].zone,
        Spot::Mark(m) => p.marks[m].zone,
    };
    let severity = match r.outcome {
        Outcome::Late | Outcome::Unknown => Severity::Unsure,
        _ => Severity::Bad,
    };
    Some(Failure {
        spot,
        lane,
        zone,
        severity,
        title: title(r),
        lines: failure_lines(r),
    })
}

/// Where the verdict's record (drop, reset, unreachable, queued) puts the failure.
fn verdict_spot(p: &Places, n: &Names, r: &JourneyRecord) -> Option<(Lane, Spot)> {
    let guest = p.nodes.iter().position(|x| x.kind == NodeKind::Guest)?;
    let at = |netns: &Option<String>, device: &Option<String>, lane: Lane| {
        let zone = zone_of(p, n, netns.as_deref()?)?;
        device_node(p, zone, device.as_deref()).map(|i| (lane, Spot::Node(i)))
    };
    match r.outcome {
        Outcome::Dropped => {
            let d = r.drop.as_ref()?;
            let lane = match d.direction {
                Direction::Request => Lane::Request,
                Direction::Reply => Lane::Reply,
            };
            let zone = zone_of(p, n, d.netns.as_deref()?)?;
            let hooked = d.hook.and_then(|h| hook_mark(p, zone, lane, h.name()));
            hooked
                .map(|m| (lane, Spot::Mark(m)))
                .or_else(|| at(&d.netns, &d.device, lane))
        }
        Outcome::Reset => match r.reset.as_ref()? {
            x if x.by == ResetBy::Guest => Some((Lane::Reply, Spot::Node(guest))),
            x => at(&x.netns, &x.device, Lane::Reply),
        },
        Outcome::Unreachable => {
            let u = r.unreachable.as_ref()?;
            at(&u.netns, &u.device, Lane::Request).or(Some((Lane::Request, Spot::Node(0))))
        }
        Outcome::Queued => {
            let q = r.queued.as_ref()?;
            at(&q.netns, &q.device, Lane::Request)
        }
        Outcome::NoReply | Outcome::Late => Some((Lane::Reply, Spot::Node(guest))),
        // It left the host side by another sandbox's veth: the host side is where it went wrong.
        Outcome::Misdirected => Some((Lane::Request, Spot::Node(0))),
        Outcome::Connected | Outcome::Unknown => None,
    }
}

/// The outcome and its reason, one line.
fn title(r: &JourneyRecord) -> String {
    let word = r.outcome.name().replace('_', " ").to_uppercase();
    let why = match r.outcome {
        Outcome::Dropped => r.drop.as_ref().map(|d| d.reason.clone()),
        Outcome::Reset => r
            .reset
            .as_ref()
            .map(|x| format!("RST from the {}", by_name(x.by))),
        Outcome::Unreachable => r.unreachable.as_ref().map(|u| {
            let state = u.state.as_deref().or(u.errno.as_deref()).unwrap_or_default();
            format!("{} {} {state}", unreachable_name(u), u.address)
                .trim_end()
                .to_string()
        }),
        Outcome::Queued => r.queued.as_ref().map(|q| {
            let reader = q.reader.as_ref().map_or("no reader".to_string(), |x| {
                format!("reader {} pid {} state {}", x.comm, x.pid, x.state)
            });
            format!("waits in the {} queue, {reader}", queue_name(q))
        }),
        Outcome::NoReply => Some("the guest never answered".into()),
        Outcome::Late => r.late.as_ref().map(|l| {
            format!(
                "reply after {:.1} ms, {:.1} ms after the client gave up",
                l.reply_ms, l.after_timeout_ms
            )
        }),
        Outcome::Misdirected => r.misdirected.as_ref().map(|m| {
            format!(
                "went to {} instead",
                m.netns.as_deref().unwrap_or("another sandbox's namespace")
            )
        }),
        Outcome::Connected | Outcome::Unknown => None,
    };
    match why {
        Some(w) => format!("{word} · {w}"),
        None => word,
    }
}

fn by_name(by: ResetBy) -> &'static str {
    match by {
        ResetBy::Guest => "guest",
        ResetBy::Stack => "kernel stack",
        ResetBy::Peer => "peer",
    }
}

fn unreachable_name(u: &UnreachableRecord) -> &'static str {
    use tracer_model::verdict::UnreachableKind as K;
    match u.kind {
        K::NoRoute => "no route to",
        K::Neighbour => "neighbour",
        K::Prohibited => "prohibited:",
        K::Blackhole => "blackhole route to",
        K::RoutedElsewhere => "routed off the host side:",
        K::HostSideUnknown => "host side not known for",
    }
}

fn queue_name(q: &QueuedRecord) -> &'static str {
    use tracer_model::verdict::QueueKind as K;
    match q.queue {
        K::Tap => "tap",
        K::Qdisc => "qdisc",
    }
}

/// Where it failed, the rule and its chain, the actors and the divergence: one line each.
fn failure_lines(r: &JourneyRecord) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = &r.drop {
        let place = [
            d.netns.clone(),
            match (&d.device, &d.out_device) {
                (Some(i), Some(o)) => Some(format!("{i} → {o}")),
                (i, o) => i.clone().or(o.clone()),
            },
            d.hook.map(|h| h.name().to_string()),
            match (&d.table, &d.chain) {
                (Some(t), Some(c)) => Some(format!("table {t}, chain {c}")),
                (Some(t), None) => Some(format!("table {t}")),
                (None, c) => c.as_ref().map(|c| format!("chain {c}")),
            },
            d.function.as_ref().map(|f| format!("in {f}")),
        ];
        out.push(place.into_iter().flatten().collect::<Vec<_>>().join(" · "));
        match (&d.rule, &d.rule_note) {
            (Some(rule), _) => out.push(format!("rule: {rule}")),
            (None, Some(note)) => out.push(format!("rule: {note}")),
            _ => {}
        }
    }
    let place = |netns: &Option<String>, device: &Option<String>| {
        let parts: Vec<&str> = [netns.as_deref(), device.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        parts.join(" · ")
    };
    if let Some(x) = &r.reset {
        out.push(place(&x.netns, &x.device));
    }
    if let Some(u) = &r.unreachable {
        out.push(place(&u.netns, &u.device));
    }
    if let Some(q) = &r.queued {
        out.push(place(&q.netns, &q.device));
    }
    for a in &r.actors {
        out.push(actor_line(a));
    }
    if let Some(d) = &r.divergence {
        out.push(divergence_line(d));
    }
    out.retain(|l| !l.is_empty());
    out
}

/// `rule in ns-1 · eth0: <text>`.
pub fn actor_line(a: &ActorRecord) -> String {
    let place: Vec<&str> = [a.netns.as_deref(), a.device.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let kind = a.kind.as_deref().unwrap_or("actor");
    let at = if place.is_empty() {
        String::new()
    } else {
        format!(" in {}", place.join(" · "))
    };
    format!("{kind}{at}: {}", a.text.as_deref().unwrap_or("?"))
}

/// `diverged at hop #3: device expected tap0, observed br0`.
pub fn divergence_line(d: &DivergenceRecord) -> String {
    let v = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "?".into(),
        other => other.to_string(),
    };
    let hop = d.hop.map(|h| format!(" at hop #{h}")).unwrap_or_default();
    format!(
        "diverged{hop}: {} expected {}, observed {}",
        d.field.as_deref().unwrap_or("?"),
        v(&d.expected),
        v(&d.observed)
    )
}
