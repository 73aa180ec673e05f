//! The sentences people read, written from the typed verdict: the summary paragraph, the
//! likely fix, the detail of each finding and why a rule is not named. Every sentence states
//! what the verdict's fields (and so the events) show, nothing more.
use super::{cause::Clause, evidence::Evidence};
use tracer_model::{
    facts::{FactUsed, ReaderFact},
    journey::Journey,
    path::ExpectedPath,
    reason::ReasonClass,
    rule::{RuleName, RuleNote, RuleText},
    tcp::nud_name,
    verdict::{
        Direction, Finding, FindingKind, LateFate, MisdirectedBy, Outcome, QueueKind, ReplyKind, ResetBy,
        UnreachableKind, Verdict,
    },
};

/// What a sentence is written from.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub journey: &'a Journey,
    pub verdict: &'a Verdict,
    /// The rule rule naming found for a netfilter drop.
    pub rule: Option<&'a RuleName>,
    pub path: Option<&'a ExpectedPath>,
}

impl Facts<'_> {
    /// The table of a drop: as rule naming found it, else the standard table of the window.
    pub fn table(&self) -> Option<String> {
        let from_rule = self.rule.and_then(|r| r.table.clone());
        from_rule.or_else(|| self.verdict.drop.as_ref().and_then(|d| d.table.clone()))
    }
}

/// One plain sentence (or two) for people.
pub fn summary(f: Facts<'_>) -> String {
    let clauses = summary_clauses(f);
    match clauses.as_slice() {
        [(Part::Cause, c), (Part::Effect, e)] => format!("{}; as a result, {}", capitalize(&c.text), e.text),
        [(Part::Effect, e), (Part::Actors, a)] => format!("{}, {}", e.text, a.text),
        _ => clauses
            .into_iter()
            .map(|(_, c)| c.text)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Which part of the summary a clause is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The first difference from the path, and who made it.
    Cause,
    /// What happened to the packet (the outcome).
    Effect,
    /// Who acted at the effect's place, when nothing differed before it.
    Actors,
    /// What to do.
    Fix,
}

/// The summary's clauses in reading order, each with the evidence items it is written from
/// (ids into `Evidence::of` of the same verdict).
pub fn summary_clauses(f: Facts<'_>) -> Vec<(Part, Clause)> {
    let clean = without_empty_names(f.verdict);
    let f = Facts { verdict: &clean, ..f };
    let e = Evidence::of(f.journey, f.verdict, f.path);
    let effect = Clause {
        text: effect_sentence(f),
        evidence: effect_evidence(&e),
    };
    if let Some(c) = super::cause::divergence_clause(f, &e)
        && f.verdict.outcome != Outcome::Connected
    {
        return vec![(Part::Cause, c), (Part::Effect, effect)];
    }
    let actors = (f.verdict.outcome != Outcome::Connected)
        .then(|| super::cause::effect_actor_clause(f, &e))
        .flatten();
    let mut out = vec![(Part::Effect, effect)];
    out.extend(actors.map(|a| (Part::Actors, a)));
    out
}

/// The effect rests on the event that decided it and on every fact read for it.
fn effect_evidence(e: &Evidence) -> Vec<usize> {
    e.effect.into_iter().chain(e.facts.iter().copied()).collect()
}

/// The fix with the evidence it rests on: the cause actor it acts on, else the effect's.
pub fn fix_clause(f: Facts<'_>) -> Option<Clause> {
    let text = fix(f)?;
    let clean = without_empty_names(f.verdict);
    let e = Evidence::of(f.journey, &clean, f.path);
    let cause = clean
        .actors
        .iter()
        .zip(e.actors.iter())
        .find(|(a, _)| a.role == tracer_model::engine::Role::Cause)
        .map(|(_, id)| *id);
    let evidence = match cause {
        Some(id) if super::cause::actor_fix(Facts { verdict: &clean, ..f }).is_some() => vec![id],
        _ => effect_evidence(&e),
    };
    Some(Clause { text, evidence })
}

/// The outcome's own sentence: what happened to the packet (and, when the attempts were not
/// followed, why only that much is known).
fn effect_sentence(f: Facts<'_>) -> String {
    let not_followed = f.verdict.facts.iter().find_map(|x| match x {
        FactUsed::NotFollowed(why) => Some(why.as_str()),
        _ => None,
    });
    match not_followed {
        None => outcome_sentence(f),
        Some(why) if f.journey.hops.is_empty() => {
            format!("attempts to envd failed and were not followed: {why}")
        }
        Some(why) => format!(
            "{}, as detection saw it; the attempts were not followed, so the hook and rule are not known: {why}",
            outcome_sentence(f)
        ),
    }
}

fn outcome_sentence(f: Facts<'_>) -> String {
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
    format!(
        "the guest answered the SYN to {target} with a {reply} {} ms after it was sent, {} ms after the client had given up (its timeout: {} ms): the path works, the guest is slow{fate}",
        l.reply_ms, l.after_timeout_ms, l.timeout_ms
    )
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

fn place(netns: &Option<String>, device: &Option<String>) -> String {
    let netns = netns.as_deref().filter(|n| !n.is_empty());
    let device = device.as_deref().filter(|d| !d.is_empty());
    match (netns, device) {
        (Some(n), Some(d)) => format!("{n}, device {d}"),
        (Some(n), None) => n.to_string(),
        (None, Some(d)) => format!("device {d}"),
        (None, None) => "an unknown place".into(),
    }
}

/// The verdict with every empty name made unknown (None): an empty name is a fact that was
/// not read, and every clause says so instead of printing a hole.
fn without_empty_names(v: &Verdict) -> Verdict {
    fn clear(o: &mut Option<String>) {
        if o.as_deref().is_some_and(|s| s.trim().is_empty()) {
            *o = None;
        }
    }
    let mut v = v.clone();
    if let Some(d) = v.drop.as_mut() {
        [
            &mut d.netns,
            &mut d.device,
            &mut d.out_device,
            &mut d.table,
            &mut d.function,
            &mut d.location,
        ]
        .into_iter()
        .for_each(clear);
    }
    if let Some(r) = v.reset.as_mut() {
        [&mut r.netns, &mut r.device].into_iter().for_each(clear);
    }
    if let Some(u) = v.unreachable.as_mut() {
        [&mut u.netns, &mut u.device, &mut u.state, &mut u.errno]
            .into_iter()
            .for_each(clear);
    }
    if let Some(q) = v.queued.as_mut() {
        [&mut q.netns, &mut q.device].into_iter().for_each(clear);
    }
    if let Some(m) = v.misdirected.as_mut() {
        [&mut m.netns, &mut m.device, &mut m.out_device, &mut m.sandbox_id]
            .into_iter()
            .for_each(clear);
    }
    for f in v.findings.iter_mut().chain(v.cause.as_mut()) {
        [&mut f.netns, &mut f.device, &mut f.table]
            .into_iter()
            .for_each(clear);
    }
    if let Some(LateFate::Dropped { netns, device, .. }) = v.late.as_mut().and_then(|l| l.fate.as_mut()) {
        [netns, device].into_iter().for_each(clear);
    }
    if let Some(LateFate::ResetBy { netns }) = v.late.as_mut().and_then(|l| l.fate.as_mut()) {
        clear(netns);
    }
    v
}

/// A name in a sentence, or what is unknown about it: a clause never shows an empty name.
fn known(name: Option<&str>, unknown: &str) -> String {
    match name.filter(|n| !n.trim().is_empty()) {
        Some(n) => n.to_string(),
        None => format!("{unknown} (unknown)"),
    }
}

/// The route a withheld probe read, in `ip route get` words.
fn probe_route(v: &Verdict) -> Option<&tracer_model::facts::ProbeRoute> {
    v.facts.iter().find_map(|f| match f {
        FactUsed::ProbeRoute(r) => Some(r),
        _ => None,
    })
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

/// Put the host route back through the sandbox's own veth (every part known, or said not to
/// be).
fn host_route_fix(path: Option<&ExpectedPath>) -> String {
    match path {
        Some(p) if !p.host_veth.is_empty() && p.ns_veth_ip.is_some() => format!(
            "fix the host route: ip route replace {}/32 via {} dev {}",
            p.host_ip,
            p.ns_veth_ip.map(|a| a.to_string()).unwrap_or_default(),
            p.host_veth
        ),
        Some(p) => format!(
            "fix the host route for {} so that it leads out the sandbox's own veth (tracer doctor shows it)",
            p.host_ip
        ),
        None => {
            "fix the host route so that it leads out the sandbox's own veth (tracer doctor shows it)".into()
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// What a finding shows, in one clause.
pub fn finding_detail(f: &Finding, path: Option<&ExpectedPath>) -> String {
    let from_path = |get: fn(&ExpectedPath) -> String, what: &str| known(path.map(get).as_deref(), what);
    let host_ip = from_path(|p| p.host_ip.to_string(), "the host IP");
    let host_veth = from_path(|p| p.host_veth.clone(), "the sandbox's veth");
    let sandbox_ns = from_path(|p| p.sandbox_ns.label(), "the sandbox's namespace");
    let guest_ip = from_path(|p| p.guest_ip.to_string(), "the guest IP");
    let ns_veth = from_path(|p| p.ns_veth.clone(), "the namespace's veth");
    let guest_dev = from_path(|p| p.guest_side_dev().to_string(), "the tap");
    let addr = known(f.address.map(|a| a.to_string()).as_deref(), "the address");
    match f.kind {
        FindingKind::WrongRoute => format!(
            "the host sent the SYN for {host_ip} out {}, not {host_veth} (the route points at another sandbox's veth)",
            known(f.device.as_deref(), "a device")
        ),
        FindingKind::OtherNamespace => format!(
            "the SYN landed in {}, not in the sandbox's {sandbox_ns}",
            known(f.netns.as_deref(), "a namespace")
        ),
        FindingKind::NoDnat => format!(
            "the SYN to {host_ip} left the nat table of {sandbox_ns} unchanged: no DNAT to {guest_ip}"
        ),
        FindingKind::RoutedBack => {
            format!("{sandbox_ns} routed the SYN for {addr} back out {ns_veth} instead of to {guest_dev}")
        }
        FindingKind::RoutingLoop => format!(
            "the SYN circled between namespaces until its TTL ran out (TTL {} seen)",
            f.ttl.unwrap_or(0)
        ),
    }
}

/// Why a rule is not named, or how it was.
pub fn rule_note(n: &RuleNote) -> String {
    match n {
        RuleNote::NoCounter(c) => format!(
            "the nft chain {} {} {} (priority {}) drops here, but its rules have no counter: the exact rule cannot be known without a change; rerun with --nft-trace",
            c.family, c.table, c.chain, c.priority
        ),
        RuleNote::OneOf(names) => format!(
            "one of the nft chains {} dropped it; rerun with --nft-trace to name the rule",
            names.join(", ")
        ),
        RuleNote::NftTrace => "named with --nft-trace (a temporary trace table, removed again)".into(),
    }
}

/// The likely fix, in one line.
pub fn fix(f: Facts<'_>) -> Option<String> {
    let clean = without_empty_names(f.verdict);
    let f = Facts { verdict: &clean, ..f };
    let v = f.verdict;
    if v.outcome == Outcome::Connected {
        return None;
    }
    if let Some(hint) = super::cause::actor_fix(f) {
        return Some(hint);
    }
    let sandbox_ns = f
        .path
        .map(|p| p.sandbox_ns.label())
        .unwrap_or_else(|| "<netns>".into());
    match v.outcome {
        Outcome::Dropped => {
            let d = v.drop.as_ref()?;
            let ns = d.netns.clone().unwrap_or(sandbox_ns);
            Some(drop_fix(f, d.reason.class(), &ns))
        }
        Outcome::Reset => Some(match v.reset.as_ref()?.by {
            ResetBy::Guest => "start envd in the guest (or check it listens on the port)".into(),
            _ => "the packet was not forwarded to the guest: check the DNAT and routes (tracer doctor)".into(),
        }),
        Outcome::NoReply => Some(
            "the VMM read the SYN but no answer came: check envd and the guest's network inside the VM"
                .into(),
        ),
        Outcome::Unreachable => Some(match v.unreachable.as_ref()?.kind {
            UnreachableKind::Neighbour => neighbour_fix(v, f.path),
            UnreachableKind::NoRoute => "add the missing route (tracer doctor shows the expected one)".into(),
            UnreachableKind::Prohibited | UnreachableKind::Blackhole => {
                "remove the rule or route that blocks the host IP (ip rule; ip route show table all), or the local firewall rule that refuses it"
                    .into()
            }
            UnreachableKind::RoutedElsewhere => host_route_fix(f.path),
            UnreachableKind::HostSideUnknown => format!(
                "restore the veth pair between the host and {} (the slot's network setup); tracer doctor shows what is left",
                known(f.path.map(|p| p.sandbox_ns.label()).as_deref(), "the sandbox's namespace")
            ),
        }),
        Outcome::Misdirected => Some(host_route_fix(f.path)),
        Outcome::Queued => Some(queued_fix(v)),
        Outcome::Late => {
            let l = v.late.as_ref()?;
            Some(format!(
                "find out why envd answers only after {} ms (a busy or just booted guest, a CPU-starved node), or give each attempt more than {} ms (the orchestrator's envd-init-request-timeout-milliseconds)",
                l.reply_ms, l.timeout_ms
            ))
        }
        Outcome::Connected | Outcome::Unknown => None,
    }
}

fn neighbour_fix(v: &Verdict, path: Option<&ExpectedPath>) -> String {
    let ns = |inode: u32| match path {
        Some(p) if p.is_host(inode) => p.host_ns.as_ref().and_then(|h| h.name.clone()),
        Some(p) if p.sandbox_ns.inode == inode => p.sandbox_ns.name.clone(),
        _ => None,
    };
    for f in &v.facts {
        match f {
            FactUsed::Link(l) if !l.up => {
                return match ns(l.netns).filter(|n| n != crate::system::netns::ROOT_LABEL) {
                    Some(n) => format!("bring {} up: ip -n {n} link set {} up", l.name, l.name),
                    None => format!("bring {} up: ip link set {} up", l.name, l.name),
                };
            }
            FactUsed::Reader(r) if matches!(r.state, 'T' | 't') => {
                return format!("resume the VMM: kill -CONT {}", r.pid);
            }
            FactUsed::NoReader => {
                return "start the sandbox's VMM again (Firecracker): no process reads the tap".into();
            }
            _ => {}
        }
    }
    "check that the VMM is running and reads the tap (tracer doctor): an unread tap never answers ARP".into()
}

fn queued_fix(v: &Verdict) -> String {
    let Some(q) = v.queued.as_ref() else {
        return "check the device's queue (tracer doctor)".into();
    };
    match (q.queue, &q.reader) {
        (QueueKind::Tap, Some(r)) if matches!(r.state, 'T' | 't') => {
            format!("resume the VMM: kill -CONT {}", r.pid)
        }
        (QueueKind::Tap, Some(r)) => format!(
            "check the VMM (pid {}): is its VM paused, or its virtio-net queue stuck?",
            r.pid
        ),
        (QueueKind::Tap, None) => {
            "start the sandbox's VMM again (Firecracker): no process reads the tap".into()
        }
        (QueueKind::Qdisc, _) => format!(
            "look at the device's queue: {}tc -s qdisc show dev {}",
            super::cause::in_ns(q.netns.as_deref().unwrap_or("<netns>")),
            q.device.as_deref().unwrap_or("<dev>")
        ),
    }
}

fn drop_fix(f: Facts<'_>, class: ReasonClass, ns: &str) -> String {
    let rule = f.rule;
    let exec = super::cause::in_ns(ns);
    match class {
        ReasonClass::Netfilter => match rule.and_then(|r| r.rule.as_ref()) {
            Some(RuleText::Iptables(text)) => format!(
                "remove or narrow that rule: {exec}iptables -t {} -D {}",
                f.table().unwrap_or_else(|| "filter".into()),
                text.strip_prefix("-A ").unwrap_or(text)
            ),
            Some(RuleText::Policy { chain, .. }) => format!(
                "accept envd traffic before the policy applies, or change it: {exec}iptables -P {chain} ACCEPT"
            ),
            Some(RuleText::NftPolicy { chain, .. }) => format!(
                "accept envd traffic before the policy applies, or change it: {exec}nft chain {} {chain} '{{ policy accept; }}'",
                f.table().unwrap_or_else(|| "?".into())
            ),
            Some(RuleText::Nft { handle, .. }) => format!(
                "delete that rule: {exec}nft delete rule {} {} handle {handle}",
                f.table().unwrap_or_else(|| "?".into()),
                rule.and_then(|r| r.chain.clone()).unwrap_or_else(|| "?".into())
            ),
            None => format!("find the dropping rule: {exec}nft list ruleset (or rerun with --nft-trace)"),
        },
        ReasonClass::RpFilter => format!(
            "the return path is asymmetric: fix the routes, or relax rp_filter: {exec}sysctl net.ipv4.conf.all.rp_filter=2"
        ),
        ReasonClass::TapNotRead | ReasonClass::QdiscDrop => {
            "the VMM does not read the tap: check that Firecracker is running and attached (tracer doctor)"
                .into()
        }
        _ => format!("check the configuration of {ns} with `tracer doctor`"),
    }
}

#[cfg(test)]
mod tests {
    use tracer_model::{
        facts::ReadFacts,
        fixtures::{hop, nf, path, syn, syn_dnat},
        hook::Hook,
        hop::HopKind,
        journey::{Correlator, Timing},
        reason::DropReason,
        verdict::decide,
    };

    use super::*;

    fn forward_drop() -> Journey {
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(hop(
            1,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        let mut nf_hop = hop(2, "ns-1", "eth0", nf(Hook::Forward, 3), syn_dnat());
        if let HopKind::Netfilter { in_dev, out_dev, .. } = &mut nf_hop.kind {
            *in_dev = Some("eth0".into());
            *out_dev = Some("tap0".into());
        }
        c.push(nf_hop);
        let mut d = hop(
            3,
            "ns-1",
            "eth0",
            HopKind::Drop {
                reason: DropReason::new("NETFILTER_DROP"),
            },
            syn_dnat(),
        );
        d.function = Some("nft_do_chain".into());
        c.push(d);
        c.take_all().remove(0)
    }

    /// A clause whose fact is missing says what is unknown; it never shows an empty name
    /// ("not  (the route", "via  dev").
    fn assert_no_hole(text: &str, ctx: &str) {
        let holes = [
            "  ", " ,", " ;", " :", " )", "( ", "``", "netns:0", " .", "dev )", "via )",
        ];
        for h in holes {
            assert!(!text.contains(h), "{h:?} in {text:?} ({ctx})");
        }
        assert_eq!(text, text.trim(), "{ctx}");
        assert!(!text.is_empty(), "{ctx}");
    }

    /// Every outcome's verdict, then again with each of its optional facts missing in turn.
    fn verdicts_with_holes() -> Vec<Verdict> {
        use tracer_model::{
            facts::{PeerSide, ProbeRoute, ReaderFact, RouteAnswer},
            verdict::{DropInfo, LateInfo, MisdirectedInfo, QueuedInfo, ResetInfo, UnreachableInfo},
        };
        let mut out = Vec::new();
        let some = |s: &str| Some(s.to_string());
        let drop = DropInfo {
            direction: Direction::Request,
            netns: some("ns-1"),
            device: some("eth0"),
            out_device: some("tap0"),
            hook: Some(Hook::Forward),
            table: some("filter"),
            reason: DropReason::new("NETFILTER_DROP"),
            function: some("nft_do_chain"),
            location: some("nft_do_chain+0x3e8"),
            priority_window: Some((1, 51)),
        };
        let drops = [
            drop.clone(),
            DropInfo {
                netns: None,
                ..drop.clone()
            },
            DropInfo {
                device: None,
                out_device: None,
                ..drop.clone()
            },
            DropInfo {
                device: some(""),
                ..drop.clone()
            },
            DropInfo {
                hook: None,
                table: None,
                function: None,
                ..drop.clone()
            },
        ];
        for d in drops {
            let mut v = Verdict::new(Outcome::Dropped);
            v.drop = Some(d);
            out.push(v);
        }
        for by in [ResetBy::Guest, ResetBy::Stack, ResetBy::Peer] {
            for (netns, device) in [(some("ns-1"), some("tap0")), (None, None), (some(""), some(""))] {
                let mut v = Verdict::new(Outcome::Reset);
                v.reset = Some(ResetInfo { by, netns, device });
                out.push(v);
            }
        }
        let route = ProbeRoute {
            netns: 1,
            netns_label: "root".into(),
            dst: "10.11.0.1".parse().unwrap(),
            answer: Ok(RouteAnswer {
                kind: "unicast".into(),
                table: 254,
                device: some("eth0"),
                via: Some("192.0.2.1".parse().unwrap()),
            }),
            expected_device: "veth-1".into(),
            leads_to: None,
        };
        let routes = [
            route.clone(),
            ProbeRoute {
                answer: Ok(RouteAnswer {
                    kind: "unicast".into(),
                    table: 254,
                    device: None,
                    via: None,
                }),
                expected_device: String::new(),
                ..route.clone()
            },
            ProbeRoute {
                answer: Err(101),
                ..route.clone()
            },
        ];
        for kind in [
            UnreachableKind::NoRoute,
            UnreachableKind::Neighbour,
            UnreachableKind::Prohibited,
            UnreachableKind::Blackhole,
            UnreachableKind::RoutedElsewhere,
            UnreachableKind::HostSideUnknown,
        ] {
            for (netns, device, state) in [(some("ns-1"), some("tap0"), some("FAILED")), (None, None, None)] {
                for r in [None, Some(&routes[0]), Some(&routes[1]), Some(&routes[2])] {
                    let mut v = Verdict::new(Outcome::Unreachable);
                    v.unreachable = Some(UnreachableInfo {
                        kind,
                        address: "10.11.0.1".parse().unwrap(),
                        netns: netns.clone(),
                        device: device.clone(),
                        state: state.clone(),
                        errno: None,
                    });
                    v.facts.extend(r.cloned().map(FactUsed::ProbeRoute));
                    v.facts.push(FactUsed::HostSideProblem(String::new()));
                    out.push(v);
                }
            }
        }
        for queue in [QueueKind::Tap, QueueKind::Qdisc] {
            for (netns, device) in [(some("ns-1"), some("tap0")), (None, None)] {
                for reader in [
                    None,
                    Some(ReaderFact {
                        pid: 42,
                        comm: "firecracker".into(),
                        state: 'T',
                        holds_tap: true,
                    }),
                ] {
                    let mut v = Verdict::new(Outcome::Queued);
                    v.queued = Some(QueuedInfo {
                        queue,
                        netns: netns.clone(),
                        device: device.clone(),
                        reader,
                    });
                    out.push(v);
                }
            }
        }
        for fate in [
            None,
            Some(LateFate::Dropped {
                reason: DropReason::new("NO_SOCKET"),
                netns: None,
                device: None,
            }),
            Some(LateFate::ResetBy { netns: None }),
        ] {
            let mut v = Verdict::new(Outcome::Late);
            v.late = Some(LateInfo {
                reply: ReplyKind::SynAck,
                reply_ms: 80.0,
                timeout_ms: 50.0,
                after_timeout_ms: 30.0,
                fate,
            });
            out.push(v);
        }
        for by in [MisdirectedBy::Route, MisdirectedBy::Events] {
            for (netns, device, out_device, sandbox_id) in [
                (
                    some("ns-2"),
                    some("eth0"),
                    some("veth-2"),
                    some("iv1l2qtd2bqsqgy22oduj"),
                ),
                (None, None, None, None),
                (some(""), some(""), some(""), None),
            ] {
                for r in [None, Some(&routes[0]), Some(&routes[1])] {
                    let mut v = Verdict::new(Outcome::Misdirected);
                    v.misdirected = Some(MisdirectedInfo {
                        by,
                        netns: netns.clone(),
                        device: device.clone(),
                        out_device: out_device.clone(),
                        sandbox_id: sandbox_id.clone(),
                        answered: by == MisdirectedBy::Events,
                    });
                    v.facts.extend(r.cloned().map(FactUsed::ProbeRoute));
                    out.push(v);
                }
            }
        }
        let _ = PeerSide {
            netns: 0,
            netns_label: String::new(),
            device: None,
            sandbox: false,
            sandbox_id: None,
        };
        // Outcomes without their info (an engine that decided less than usual).
        for outcome in [
            Outcome::Dropped,
            Outcome::Reset,
            Outcome::NoReply,
            Outcome::Unreachable,
            Outcome::Queued,
            Outcome::Late,
            Outcome::Misdirected,
            Outcome::Unknown,
        ] {
            out.push(Verdict::new(outcome));
        }
        out
    }

    #[test]
    fn no_sentence_has_a_hole_whatever_fact_is_missing() {
        let j = forward_drop();
        let full = path();
        let mut bare = path();
        bare.host_ns = None;
        bare.host_veth = String::new();
        bare.ns_veth_ip = None;
        let mut checked = 0;
        for v in verdicts_with_holes() {
            for p in [Some(&full), Some(&bare), None] {
                let f = Facts {
                    journey: &j,
                    verdict: &v,
                    rule: None,
                    path: p,
                };
                let ctx = format!("{:?} with path {:?}", v, p.map(|p| &p.host_veth));
                assert_no_hole(&summary(f), &ctx);
                if let Some(fix) = fix(f) {
                    assert_no_hole(&fix, &ctx);
                }
                checked += 1;
            }
        }
        assert!(checked > 250, "{checked}");
    }

    /// Every outcome, with each optional fact missing in turn: every clause of the summary
    /// and the fix names the evidence items it is written from, and they exist.
    #[test]
    fn every_clause_rests_on_evidence() {
        let j = forward_drop();
        let mut checked = 0;
        for mut v in verdicts_with_holes() {
            // The effect is decided by an event of the journey (the synthetic verdicts lack it).
            v.failing_hop = v.failing_hop.or(Some(j.hops.len() - 1));
            let f = Facts {
                journey: &j,
                verdict: &v,
                rule: None,
                path: Some(&path()),
            };
            let items = Evidence::of(&j, &without_empty_names(&v), f.path).items.len();
            let mut all = summary_clauses(f);
            all.extend(fix_clause(f).map(|c| (Part::Fix, c)));
            for (part, c) in &all {
                let ctx = format!("{part:?} {:?} of {v:?}", c.text);
                assert!(!c.evidence.is_empty(), "a clause without evidence: {ctx}");
                assert!(
                    c.evidence.iter().all(|i| *i < items),
                    "a clause citing nothing: {ctx}"
                );
                checked += 1;
            }
            // The summary is made of exactly these clauses.
            for (part, c) in all.iter().filter(|(p, _)| *p != Part::Fix) {
                let s = summary(f);
                let text = if *part == Part::Cause {
                    capitalize(&c.text)
                } else {
                    c.text.clone()
                };
                assert!(s.contains(&text), "{text:?} not in {s:?}");
            }
        }
        assert!(checked > 100, "{checked}");
    }

    /// A drop's fix names no `ip netns exec` in the node's root namespace (where E2B's host side
    /// is), and still does in a named one.
    #[test]
    fn commands_in_the_root_namespace_need_no_netns_exec() {
        let j = forward_drop();
        let p = path();
        let v = decide(&j, Some(&p), &ReadFacts::default());
        let rule = RuleName {
            table: Some("filter".into()),
            chain: Some("INPUT".into()),
            rule: Some(RuleText::Iptables(
                "-A INPUT -i veth-1 -p tcp -m tcp --sport 49983 -j DROP".into(),
            )),
            note: None,
        };
        let f = Facts {
            journey: &j,
            verdict: &v,
            rule: Some(&rule),
            path: Some(&p),
        };
        let root = crate::system::netns::ROOT_LABEL;
        assert_eq!(
            drop_fix(f, ReasonClass::Netfilter, root),
            "remove or narrow that rule: iptables -t filter -D INPUT -i veth-1 -p tcp -m tcp --sport 49983 -j DROP"
        );
        assert_eq!(
            drop_fix(f, ReasonClass::Netfilter, "e2b-host"),
            "remove or narrow that rule: ip netns exec e2b-host iptables -t filter -D INPUT -i veth-1 -p tcp -m tcp --sport 49983 -j DROP"
        );
        let f = Facts { rule: None, ..f };
        for class in [ReasonClass::Netfilter, ReasonClass::RpFilter] {
            let fix = drop_fix(f, class, root);
            assert!(!fix.contains("netns"), "{fix}");
        }
    }

    #[test]
    fn a_forward_drop_reads_like_the_demo() {
        let j = forward_drop();
        let p = path();
        let v = decide(&j, Some(&p), &ReadFacts::default());
        let rule = RuleName {
            table: Some("filter".into()),
            chain: Some("FORWARD".into()),
            rule: Some(RuleText::Iptables(
                "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP".into(),
            )),
            note: None,
        };
        let f = Facts {
            journey: &j,
            verdict: &v,
            rule: Some(&rule),
            path: Some(&p),
        };
        assert_eq!(
            summary(f),
            "the SYN to 10.11.0.1:49983 was dropped in ns-1, device eth0 → tap0, FORWARD hook, filter table, chain FORWARD, by rule `-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP` (kernel reason NETFILTER_DROP in nft_do_chain)"
        );
        assert_eq!(
            fix(f).unwrap(),
            "remove or narrow that rule: ip netns exec ns-1 iptables -t filter -D FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP"
        );
        // Without the rule: the table comes from the priority window, the fix from nft.
        let f = Facts { rule: None, ..f };
        assert!(
            summary(f).contains("FORWARD hook at the filter table's priority (kernel reason"),
            "{}",
            summary(f)
        );
        assert!(fix(f).unwrap().contains("--nft-trace"));
    }

    /// After POSTROUTING's last slot the drop may be in a later POSTROUTING chain or at the
    /// device's netdev egress: the sentence says both until the engine names the rule.
    #[test]
    fn a_drop_past_the_last_postrouting_slot_does_not_claim_a_hook_it_cannot_tell() {
        use tracer_model::verdict::DropInfo;
        let j = forward_drop();
        let mut v = Verdict::new(Outcome::Dropped);
        v.drop = Some(DropInfo {
            direction: Direction::Request,
            netns: Some("ns-1".into()),
            device: Some("eth0".into()),
            out_device: Some("tap0".into()),
            hook: Some(Hook::Postrouting),
            table: None,
            reason: DropReason::new("NETFILTER_DROP"),
            function: Some("nft_do_chain".into()),
            location: None,
            priority_window: Some((101, i32::MAX)),
        });
        let f = |v: &Verdict| {
            summary(Facts {
                journey: &j,
                verdict: v,
                rule: None,
                path: None,
            })
        };
        let s = f(&v);
        assert!(
            s.contains("POSTROUTING hook after priority 101 or the device's netdev egress hook"),
            "{s}"
        );
        v.actors.push(tracer_model::engine::Actor {
            role: tracer_model::engine::Role::Cause,
            how: tracer_model::engine::How::Evaluated,
            netns: Some("ns-1".into()),
            device: None,
            place: "netdev egress hook, priority -30".into(),
            does: "drops it".into(),
            id: tracer_model::engine::ActorId::FirewallRule {
                source: "nft".into(),
                family: "netdev".into(),
                table: "camp".into(),
                chain: "c".into(),
                handle: Some(2),
                rule: "tcp dport 49983 drop".into(),
            },
        });
        let s = f(&v);
        assert!(s.contains(", netdev egress hook"), "{s}");
        assert!(!s.contains("POSTROUTING"), "{s}");
    }

    #[test]
    fn a_missing_dnat_leads_and_its_fix_restores_it() {
        let p = path();
        let mut c = Correlator::new(&[49983], Timing::default());
        let mut pre = hop(1, "ns-1", "eth0", nf(Hook::Prerouting, 8), syn());
        if let HopKind::Netfilter { in_dev, .. } = &mut pre.kind {
            *in_dev = Some("eth0".into());
        }
        c.push(pre);
        let j = c.take_all().remove(0);
        let facts = ReadFacts {
            namespaces: vec![tracer_model::fixtures::inventory("ns-1", false, "")],
            ..Default::default()
        };
        let v = decide(&j, Some(&p), &facts);
        let f = Facts {
            journey: &j,
            verdict: &v,
            rule: None,
            path: Some(&p),
        };
        assert!(
            summary(f).starts_with(
                "In ns-1 at nf/PREROUTING (eth0), the SYN was not rewritten: its destination is still 10.11.0.1:49983 (expected 169.254.0.21:49983): no rule in nat PREROUTING does DNAT 10.11.0.1 → 169.254.0.21; as a result,"
            ),
            "{}",
            summary(f)
        );
        assert_eq!(
            fix(f).unwrap(),
            "restore the DNAT: ip netns exec ns-1 iptables -t nat -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21"
        );
    }
}
