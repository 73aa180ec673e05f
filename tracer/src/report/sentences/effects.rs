//! What happened to the packet, one sentence per outcome (the summary's effect): where it
//! was dropped and by what, who reset it, why it was unreachable or queued, how late the reply
//! was, where it went instead.
use tracer_model::{
    facts::{FactUsed, ReaderFact},
    reason::ReasonClass,
    tcp::nud_name,
    verdict::{
        Direction, LateFate, MisdirectedBy, Outcome, QueueKind, ReplyKind, ResetBy, UnreachableKind, Verdict,
    },
};

use super::{Facts, known, place, probe_route};

pub(super) fn outcome_sentence(f: Facts<'_>) -> String {
    let v = f.verdict;
    let target = f
        .journey
        .target
        .map(|(a, p)| format!("{a}:{p}"))
        .unwrap_or_else(|| "envd".into());
    match v.outcome {
        Outcome::Connected => connected(v),
        Outcome::Dropped => dropped(f, &target),
        Outcome::Reset => reset(v, &target),
        Outcome::NoReply => no_reply(v, &target),
        Outcome::Unreachable => unreachable(v),
        Outcome::Queued => queued(v, &target),
        Outcome::Late => late(v, &target),
        Outcome::Misdirected => misdirected(f, &target),
        Outcome::Unknown if v.facts.contains(&FactUsed::RequestUnanswered) => format!(
            "the handshake to {target} completed{}, but the request after it got no answer: the tracer follows handshakes only, so the data path (an MTU, a rule on established traffic) is not traced",
            v.reply_ms
                .map(|ms| format!(" (SYN-ACK after {ms:.1} ms)"))
                .unwrap_or_default()
        ),
        Outcome::Unknown => {
            let last = v.failing_hop.and_then(|i| f.journey.hops.get(i)).map(|(_, h)| h);
            match last {
                Some(h) => format!(
                    "the SYN to {target} was last seen in {} and then vanished without a drop event; {}",
                    place(&h.netns_name, &h.device),
                    checked_after(v, h.device.as_deref())
                ),
                None => format!("nothing of the attempt to {target} was seen on the path"),
            }
        }
    }
}

fn connected(v: &Verdict) -> String {
    match v.reply_ms {
        Some(ms) => format!(
            "connected: the SYN-ACK came back {ms:.1} ms after the SYN and reached the client's socket"
        ),
        None => "connected: the SYN-ACK reached the client's socket".into(),
    }
}

fn dropped(f: Facts<'_>, target: &str) -> String {
    let Some(d) = f.verdict.drop.as_ref() else {
        return format!("the SYN to {target} was dropped");
    };
    let dir = match d.direction {
        Direction::Request => "the SYN to",
        Direction::Reply => "the reply from",
    };
    let dev = match (&d.device, &d.out_device) {
        (Some(i), Some(o)) => Some(format!("{i} → {o}")),
        (i, _) => i.clone(),
    };
    let mut s = format!("{dir} {target} was dropped in {}", place(&d.netns, &dev));
    s += &hook_clause(f.verdict, d);
    // A table read from a rule is a fact; one from the priority window alone is where the
    // drop happened, not whose rule it was (an nft chain can share the priority).
    match f.rule.and_then(|r| r.table.clone()) {
        Some(t) => s += &format!(", {t} table"),
        None => {
            if let Some(t) = &d.table {
                s += &format!(" at the {t} table's priority");
            }
        }
    }
    // The engine's actors name the rule when it found one (the clause after this one).
    let named = f.verdict.divergence.is_none()
        && f.verdict
            .actors
            .iter()
            .any(|a| a.role == tracer_model::engine::Role::Cause);
    if !named {
        if let Some(c) = f.rule.and_then(|r| r.chain.as_ref()) {
            s += &format!(", chain {c}");
        }
        if let Some(r) = f.rule.and_then(|r| r.rule.as_ref()) {
            s += &format!(", by rule `{}`", r.render());
        }
    }
    s += &format!(" (kernel reason {}", d.reason);
    if let Some(func) = &d.function {
        s += &format!(" in {func}");
    }
    s += ")";
    // What was read at the place: the rule or route that refused it, the tap's reader.
    for f in &f.verdict.facts {
        match f {
            FactUsed::RouteBlocker(b) => s += &format!(": the route to {} there is {}", b.dst, b.what),
            FactUsed::Reader(r) => s += &format!(": the tap is not read, {}", reader_state(r)),
            FactUsed::NoReader => s += ": no process holds the tap",
            _ => {}
        }
    }
    s
}

/// The hook of a netfilter drop. After POSTROUTING's last probe slot the packet still
/// crosses the device's netdev egress chains, which no probe separates from the rest of
/// POSTROUTING: name egress only when the engine found the rule there.
fn hook_clause(v: &Verdict, d: &tracer_model::verdict::DropInfo) -> String {
    let Some(hook) = d.hook else {
        return String::new();
    };
    let open_end = match d.priority_window {
        Some((lo, i32::MAX)) if hook == tracer_model::hook::Hook::Postrouting => Some(lo),
        _ => None,
    };
    let Some(lo) = open_end else {
        return format!(", {} hook", hook.name());
    };
    let at_egress = v
        .actors
        .iter()
        .any(|a| a.role == tracer_model::engine::Role::Cause && a.place.starts_with("netdev egress"));
    if at_egress {
        ", netdev egress hook".into()
    } else {
        format!(", POSTROUTING hook after priority {lo} or the device's netdev egress hook")
    }
}

fn reset(v: &Verdict, target: &str) -> String {
    let Some(r) = v.reset.as_ref() else {
        return format!("a RST answered the SYN to {target}");
    };
    match r.by {
        ResetBy::Guest => format!(
            "the guest answered the SYN to {target} with RST: nothing listens on the port inside the VM"
        ),
        ResetBy::Stack => format!(
            "the SYN to {target} was answered with RST by the kernel of {}: it was delivered locally there, where nothing listens",
            known(r.netns.as_deref(), "a namespace")
        ),
        ResetBy::Peer => format!("a RST came back from {}", place(&r.netns, &r.device)),
    }
}

fn unreachable(v: &Verdict) -> String {
    let Some(u) = v.unreachable.as_ref() else {
        return "the destination was unreachable".into();
    };
    match u.kind {
        UnreachableKind::RoutedElsewhere => routed_elsewhere(v, u.address),
        UnreachableKind::HostSideUnknown => format!(
            "the host side of {} is not known: {}; no probe was sent",
            known(u.netns.as_deref(), "the sandbox's namespace"),
            host_side_problem(v)
        ),
        UnreachableKind::Neighbour => format!(
            "ARP for {} on {} was never answered (neighbour {}): {}",
            u.address,
            place(&u.netns, &u.device),
            known(u.state.as_deref(), "state"),
            why_unanswered(v)
        ),
        UnreachableKind::NoRoute | UnreachableKind::Prohibited | UnreachableKind::Blackhole => {
            let ns = known(u.netns.as_deref(), "a namespace");
            let what = match u.kind {
                // EPERM with no rule or route read that refuses it: the connect() itself was
                // refused (a cgroup program, a local firewall), not the routing.
                UnreachableKind::Prohibited
                    if u.errno.as_deref() == Some("EPERM")
                        && !v.facts.iter().any(|f| matches!(f, FactUsed::RouteBlocker(_))) =>
                {
                    format!(
                        "connect() to {} was refused in {ns} before any packet was sent",
                        u.address
                    )
                }
                UnreachableKind::Prohibited => format!("routing to {} is forbidden in {ns}", u.address),
                UnreachableKind::Blackhole => {
                    format!("{ns} drops everything for {} (a blackhole)", u.address)
                }
                _ => format!("no route to {} in {ns}", u.address),
            };
            let errno = u.errno.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            let blocker = v.facts.iter().find_map(|f| match f {
                FactUsed::RouteBlocker(b) => Some(format!(": {}", b.what)),
                _ => None,
            });
            format!("{what}{errno}{}", blocker.unwrap_or_default())
        }
    }
}

/// Why ARP went unanswered, from the facts read (only what they show).
fn why_unanswered(v: &Verdict) -> String {
    let mut why: Vec<String> = v
        .facts
        .iter()
        .filter_map(|f| match f {
            FactUsed::Link(l) if !l.up => Some(format!("{} is down", l.name)),
            FactUsed::Link(l) if !l.carrier => Some(format!("{} has no carrier", l.name)),
            FactUsed::Reader(r) => Some(reader_state(r)),
            FactUsed::NoReader => Some("no process reads the tap".into()),
            _ => None,
        })
        .collect();
    if why.is_empty() {
        why.push("the next hop does not answer".into());
    }
    why.join("; ")
}

/// What the VMM process is doing, as /proc showed it.
fn reader_state(r: &ReaderFact) -> String {
    let who = format!("the VMM (pid {}, {})", r.pid, r.comm);
    if !r.holds_tap {
        return format!("{who} does not hold the tap open");
    }
    match r.state {
        'T' | 't' => format!("{who} is stopped (state {})", r.state),
        'R' => format!("{who} is running but did not read the tap (busy)"),
        s => format!(
            "{who} is alive (state {s}) but did not read the tap: its VM may be paused or its network queue full"
        ),
    }
}

fn no_reply(v: &Verdict, target: &str) -> String {
    let reader = v.facts.iter().find_map(|f| match f {
        FactUsed::Reader(r) => Some(format!(" (pid {}, {})", r.pid, r.comm)),
        _ => None,
    });
    format!(
        "the VMM{} read the SYN to {target} from the tap, and nothing came back: the guest is silent",
        reader.unwrap_or_default()
    )
}

fn queued(v: &Verdict, target: &str) -> String {
    let Some(q) = v.queued.as_ref() else {
        return format!("the SYN to {target} waits in a queue");
    };
    let at = place(&q.netns, &q.device);
    match q.queue {
        QueueKind::Tap => format!(
            "the SYN to {target} was handed to the tap ({at}) and never read: {}",
            match &q.reader {
                Some(r) => reader_state(r),
                None => "no process holds the tap open (the VMM is gone)".into(),
            }
        ),
        QueueKind::Qdisc => format!(
            "the SYN to {target} went into the queue of {at} and was never transmitted: the device's queue discipline holds it"
        ),
    }
}

fn late(v: &Verdict, target: &str) -> String {
    let Some(l) = v.late.as_ref() else {
        return format!("the guest answered the SYN to {target} after the client had given up");
    };
    let reply = match l.reply {
        ReplyKind::SynAck => "SYN-ACK",
        ReplyKind::Rst => "RST",
    };
    let fate = match &l.fate {
        Some(LateFate::Dropped {
            reason,
            netns,
            device,
        }) => format!(
            "; the {reply} was dropped in {} (kernel reason {reason}{})",
            place(netns, device),
            if reason.is(ReasonClass::NoSocket) {
                ": the client's socket was gone"
            } else {
                ""
            }
        ),
        Some(LateFate::ResetBy { netns }) => format!(
            "; the stack of {} answered it with RST (the client's socket was gone)",
            known(netns.as_deref(), "a namespace")
        ),
        None => String::new(),
    };
    let when = format!(
        "{} ms after it was sent, {} ms after the client had given up (its timeout: {} ms)",
        l.reply_ms, l.after_timeout_ms, l.timeout_ms
    );
    match &l.split {
        Some(s) if s.guest_ms >= s.to_guest_ms => format!(
            "the guest answered the SYN to {target} with a {reply} {when}; {} ms of it inside the VM: the path works, the guest is slow{fate}",
            s.guest_ms
        ),
        Some(s) => {
            let waited = match &s.waited {
                Some((ms, netns, device)) => {
                    format!(" (it waited {ms} ms in {})", place(&Some(netns.clone()), device))
                }
                None => String::new(),
            };
            format!(
                "the {reply} to the SYN to {target} came {when}: the SYN took {} ms to reach the guest{waited}, the guest answered {} ms after it got it: the path is slow, not the guest{fate}",
                s.to_guest_ms, s.guest_ms
            )
        }
        // Neither side's time was seen: nothing is said of who was slow.
        None => {
            format!("the {reply} to the SYN to {target} came {when}; where the time went was not seen{fate}")
        }
    }
}

/// What was checked after the last place a packet was seen, for an unknown outcome.
fn checked_after(v: &Verdict, device: Option<&str>) -> String {
    let bad: Vec<String> = v
        .facts
        .iter()
        .filter_map(|f| match f {
            FactUsed::Link(l) if !l.up => Some(format!("{} is down", l.name)),
            FactUsed::Link(l) if !l.carrier => Some(format!("{} has no carrier", l.name)),
            FactUsed::Neighbour(n) => Some(format!(
                "neighbour {} on {} is {}",
                n.address,
                n.device,
                nud_name(n.state)
            )),
            _ => None,
        })
        .collect();
    match (bad.is_empty(), device) {
        (false, _) => format!("read since: {}", bad.join("; ")),
        (true, Some(d)) => format!(
            "read since: {d} is up with carrier and no neighbour on it is unresolved, and no drop, queue or route event followed"
        ),
        (true, None) => "no drop, queue or route event followed".into(),
    }
}

fn host_side_problem(v: &Verdict) -> String {
    let problem = v.facts.iter().find_map(|f| match f {
        FactUsed::HostSideProblem(p) => Some(p.as_str()),
        _ => None,
    });
    known(problem, "why")
}

/// "in root 10.11.0.1 is routed via 192.0.2.1 dev eth0 (table main), not to the sandbox's
/// veth-1: no probe was sent"
fn routed_elsewhere(v: &Verdict, address: std::net::Ipv4Addr) -> String {
    let Some(r) = probe_route(v) else {
        return format!("{address} is routed off the sandbox's host side; no probe was sent");
    };
    let route = match &r.answer {
        Ok(a) => a.text(),
        Err(e) => format!("nowhere ({})", tracer_model::verdict::errno_name(*e)),
    };
    let into = r
        .leads_to
        .as_ref()
        .map(|p| format!(", which leads into {}", p.netns_label))
        .unwrap_or_default();
    format!(
        "in {} {address} is routed {route}{into}, not to the sandbox's {}: no probe was sent",
        known(Some(&r.netns_label), "the host side"),
        known(Some(&r.expected_device), "veth"),
    )
}

fn misdirected(f: Facts<'_>, target: &str) -> String {
    let Some(m) = f.verdict.misdirected.as_ref() else {
        return format!("the attempt to {target} went to another sandbox");
    };
    let other = match &m.sandbox_id {
        Some(id) => format!("the namespace of sandbox {id}"),
        None => "another sandbox's namespace".into(),
    };
    let to = place(&m.netns, &m.device);
    match m.by {
        MisdirectedBy::Route => {
            let read = probe_route(f.verdict);
            let host = known(read.map(|r| r.netns_label.as_str()), "the host side");
            let route = match read.and_then(|r| r.answer.as_ref().ok()) {
                Some(a) => a.text(),
                None => format!("out {}", known(m.out_device.as_deref(), "a device")),
            };
            let expected = f.path.map(|p| p.host_veth.as_str());
            format!(
                "{host} routes {target} {route} into {to}, {other}, not out this sandbox's {}: no probe was sent there",
                known(expected, "veth")
            )
        }
        MisdirectedBy::Events => format!(
            "the SYN to {target} went to {to}, {other}, not to this sandbox{}",
            if m.answered { "; it was answered there" } else { "" }
        ),
    }
}
