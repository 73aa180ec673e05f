//! The cause's sentences: where the packet first differed from its path and who did it, and
//! the fix for an actor that was read. Each clause carries the evidence items it is written
//! from; a clause without them is not written.
use tracer_model::{
    engine::{Actor, ActorId, Divergence, Field, Role},
    hop::Hop,
    journey::Leg,
    path::ExpectedPath,
    verdict::Verdict,
};

use super::{evidence::Evidence, hops::point_name, sentences::Facts};

/// One clause of a summary or a fix, and the evidence items it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub text: String,
    pub evidence: Vec<usize>,
}

/// "in ns-1 at nf/PREROUTING (eth0), the SYN's destination was rewritten to
/// 169.254.0.23:49983 (expected 169.254.0.21:49983) by rule `...` (iptables-nft table nat)".
pub fn divergence_clause(f: Facts<'_>, e: &Evidence) -> Option<Clause> {
    let d = f.verdict.divergence.as_ref()?;
    let at_ev = e.divergence?;
    let (_, h) = f.journey.hops.get(d.hop)?;
    let what = match d.leg {
        Leg::Reply => "the reply",
        _ => "the SYN",
    };
    let changed = field_change(d, f.path);
    let mut text = format!("in {}, {what} {changed}", where_(h));
    let mut evidence = vec![at_ev];
    let causes = actors_with(f.verdict, e, |a| a.role == Role::Cause);
    let candidates = actors_with(f.verdict, e, |a| a.role == Role::Candidate);
    if !causes.is_empty() {
        let missing = causes.iter().all(|(a, _)| {
            matches!(
                a.id,
                ActorId::MissingRule { .. }
                    | ActorId::MissingRoute { .. }
                    | ActorId::Address { missing: true, .. }
            )
        });
        // A rule or program acts ("by"); a state (a link down, a sysctl) is a condition.
        let state = causes
            .iter()
            .all(|(a, _)| a.how == tracer_model::engine::How::State);
        let word = match (missing, state) {
            (true, _) => ": ",
            (_, true) => " because of ",
            _ => " by ",
        };
        text += &format!("{word}{}", names(&causes));
        evidence.extend(causes.iter().map(|(_, id)| *id));
    } else if !candidates.is_empty() {
        text += &format!(
            "; what can do that there, and the events cannot tell apart: {}",
            names(&candidates)
        );
        evidence.extend(candidates.iter().map(|(_, id)| *id));
    } else {
        text += "; nothing read there (rules, routes, programs, filters) accounts for it";
    }
    Some(Clause { text, evidence })
}

/// " by rule `...`" for an effect without a divergence: the actors at the effect's place.
pub fn effect_actor_clause(f: Facts<'_>, e: &Evidence) -> Option<Clause> {
    if f.verdict.divergence.is_some() {
        return None;
    }
    // The effect's own sentence already says what the VMM and the guest did.
    let said = |a: &Actor| matches!(a.id, ActorId::Vmm { .. } | ActorId::Guest { .. });
    let causes = actors_with(f.verdict, e, |a| a.role == Role::Cause && !said(a));
    if !causes.is_empty() {
        return Some(Clause {
            text: format!("by {}", names(&causes)),
            evidence: causes.iter().map(|(_, id)| *id).collect(),
        });
    }
    let candidates = actors_with(f.verdict, e, |a| a.role == Role::Candidate);
    let text = match candidates.len() {
        0 => return None,
        // One candidate is named for what it is, not as the cause: nothing showed it acting.
        1 => format!("what is read there that can do it: {}", names(&candidates)),
        _ => format!(
            "one of these acts there and the events cannot tell which: {}",
            names(&candidates)
        ),
    };
    Some(Clause {
        text,
        evidence: candidates.iter().map(|(_, id)| *id).collect(),
    })
}

fn actors_with<'a>(v: &'a Verdict, e: &Evidence, keep: impl Fn(&Actor) -> bool) -> Vec<(&'a Actor, usize)> {
    v.actors
        .iter()
        .zip(e.actors.iter().copied())
        .filter(|(a, _)| keep(a))
        .collect()
}

fn names(actors: &[(&Actor, usize)]) -> String {
    actors
        .iter()
        .map(|(a, _)| {
            let at = match (&a.netns, &a.device) {
                (Some(n), _)
                    if matches!(a.id, ActorId::FirewallRule { .. } | ActorId::ChainPolicy { .. }) =>
                {
                    format!(" in {n}")
                }
                _ => String::new(),
            };
            format!("{}{at}", a.id.name())
        })
        .collect::<Vec<_>>()
        .join(", or ")
}

fn where_(h: &Hop) -> String {
    match &h.device {
        Some(d) => format!("{} at {} ({d})", h.ns_label(), point_name(h)),
        None => format!("{} at {}", h.ns_label(), point_name(h)),
    }
}

/// What differed, as a verb phrase.
fn field_change(d: &Divergence, path: Option<&ExpectedPath>) -> String {
    let (o, x) = (&d.observed, &d.expected);
    match d.field {
        Field::Destination => {
            let untouched = path.is_some_and(|p| *o == format!("{}:{}", p.host_ip, p.port));
            if untouched {
                format!("was not rewritten: its destination is still {o} (expected {x})")
            } else {
                format!("had its destination rewritten to {o} (expected {x})")
            }
        }
        Field::Source => format!("left with source {o} (expected {x})"),
        Field::Conntrack => format!("had conntrack state \"{o}\" (expected \"{x}\")"),
        Field::Ttl => format!("had TTL {o} (expected at least {x})"),
        Field::Mark => format!("carried mark {o} (expected {x})"),
        Field::Device => format!("went {o} (expected {x})"),
        Field::Point => format!("was {o} (expected {x})"),
        Field::Namespace => format!("went into {o}, a namespace off its path"),
        Field::L2Destination => format!("was sent to MAC {o} (expected {x})"),
    }
}

/// The command prefix that runs a tool in a namespace: none in the node's root namespace.
pub fn in_ns(label: &str) -> String {
    if label == crate::system::netns::ROOT_LABEL {
        String::new()
    } else if label.starts_with("netns:") {
        format!("(in {label}) ")
    } else {
        format!("ip netns exec {label} ")
    }
}

/// The fix for the cause actor, when one was read (an actor is a fact, never a guess).
pub fn actor_fix(f: Facts<'_>) -> Option<String> {
    let a = f.verdict.actors.iter().find(|a| a.role == Role::Cause)?;
    let pfx = in_ns(a.netns.as_deref().unwrap_or(crate::system::netns::ROOT_LABEL));
    Some(match &a.id {
        ActorId::FirewallRule {
            source,
            family,
            table,
            chain,
            handle,
            rule,
        } => match (source.as_str(), handle) {
            ("nft", Some(h)) => {
                format!("delete that rule: {pfx}nft delete rule {family} {table} {chain} handle {h}")
            }
            (src, _) => format!(
                "remove or narrow that rule: {pfx}{} -t {table} -D {}",
                if src == "iptables-legacy" {
                    "iptables-legacy"
                } else {
                    "iptables"
                },
                rule.strip_prefix("-A ").unwrap_or(rule)
            ),
        },
        ActorId::ChainPolicy {
            source,
            family,
            table,
            chain,
        } => match source.as_str() {
            "nft" => format!(
                "accept envd's traffic before the policy applies, or change it: {pfx}nft chain {family} {table} {chain} '{{ policy accept; }}'"
            ),
            _ => format!(
                "accept envd's traffic before the policy applies, or change it: {pfx}iptables -t {table} -P {chain} ACCEPT"
            ),
        },
        ActorId::MissingRule { .. } => {
            let p = f.path?;
            format!(
                "restore the DNAT: {pfx}iptables -t nat -A PREROUTING -d {}/32 -i {} -j DNAT --to-destination {}",
                p.host_ip, p.ns_veth, p.guest_ip
            )
        }
        ActorId::Route { table, dst, .. } => format!(
            "remove or fix that route: {pfx}ip route del {dst} table {}",
            tracer_model::facts::table_name(*table)
        ),
        ActorId::MissingRoute { dst, device } => match device {
            Some(d) => format!("restore the route: {pfx}ip route add {dst} dev {d}"),
            None => format!("restore a route to {dst}"),
        },
        ActorId::PolicyRule { priority, .. } => {
            format!("remove or narrow that policy rule: {pfx}ip rule del priority {priority}")
        }
        ActorId::Address {
            device,
            address,
            missing: true,
        } => format!("restore the address: {pfx}ip addr add {address} dev {device}"),
        ActorId::Address { device, address, .. } => {
            format!("remove the stray address: {pfx}ip addr del {address} dev {device}")
        }
        ActorId::Neighbour { device, address, .. } => {
            format!("remove the wrong neighbour entry: {pfx}ip neigh del {address} dev {device}")
        }
        ActorId::Link { device, state } if state == "down" => {
            format!("bring it up: {pfx}ip link set {device} up")
        }
        ActorId::Link { device, .. } => {
            format!("restore {device} (the slot's network setup); tracer doctor shows what is left")
        }
        ActorId::Sysctl { name, .. } => format!("set it back: {pfx}sysctl -w {name}={}", good_value(name)),
        ActorId::Qdisc { device, parent, .. } => {
            format!("remove that queue discipline: {pfx}tc qdisc del dev {device} {parent}")
        }
        ActorId::TcFilter {
            device,
            direction,
            priority,
            ..
        } => format!("remove that filter: {pfx}tc filter del dev {device} {direction} pref {priority}"),
        ActorId::BpfProgram {
            name,
            id,
            holder_pid,
            holder,
            ..
        } => match (holder_pid, holder) {
            (Some(pid), Some(comm)) => format!(
                "BPF program {name} (id {id}) is held by pid {pid} ({comm}): stop that agent, or have its owner exempt envd's traffic"
            ),
            _ => format!("find and detach BPF program {name} (id {id}) (bpftool prog show id {id})"),
        },
        ActorId::Vmm {
            pid: Some(pid),
            state,
        } if state.contains('T') => format!("resume the VMM: kill -CONT {pid}"),
        ActorId::Vmm { .. } => "start the sandbox's VMM again: nothing reads the tap".into(),
        ActorId::Guest { what } if what.contains("listens") => {
            "start envd in the guest (or check that it listens on the port)".into()
        }
        ActorId::Guest { what } if what.contains("ARP") || what.contains("neighbour") => {
            "flush the guest's neighbour entry for its gateway (inside the VM: ip neigh flush dev eth0)"
                .into()
        }
        ActorId::Guest { .. } | ActorId::Conntrack { .. } => return None,
    })
}

/// The value a deciding sysctl has on a working path.
fn good_value(name: &str) -> &'static str {
    if name.ends_with("rp_filter") {
        "2"
    } else if name.ends_with("forwarding") || name.ends_with("ip_forward") {
        "1"
    } else {
        "0"
    }
}
