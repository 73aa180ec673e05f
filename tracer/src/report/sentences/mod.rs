//! The sentences people read, written from the typed verdict: the summary paragraph, the
//! likely fix, the detail of each finding and why a rule is not named. Every sentence states
//! what the verdict's fields (and so the events) show, nothing more.
//!
//! The effect's sentence for each outcome is in `effects`, the likely fix in `fixes`.
mod effects;
mod fixes;

use super::{cause::Clause, evidence::Evidence};
use tracer_model::{
    facts::FactUsed,
    journey::Journey,
    path::ExpectedPath,
    rule::{RuleName, RuleNote},
    verdict::{Finding, FindingKind, LateFate, Outcome, Verdict},
};

use effects::outcome_sentence;
pub use fixes::fix;

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

#[cfg(test)]
mod tests {
    use tracer_model::{
        facts::ReadFacts,
        fixtures::{hop, nf, path, syn, syn_dnat},
        hook::Hook,
        hop::HopKind,
        journey::{Correlator, Timing},
        reason::{DropReason, ReasonClass},
        rule::RuleText,
        verdict::{Direction, MisdirectedBy, QueueKind, ReplyKind, ResetBy, UnreachableKind, decide},
    };

    use super::*;
    use fixes::drop_fix;

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
                split: None,
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
