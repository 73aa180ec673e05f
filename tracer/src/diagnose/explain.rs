//! The trace's tie-in: which failed doctor checks explain a verdict. A verdict names a place
//! (drop reason, hook, namespace) and the engine's actors (a missing DNAT, a route, a link);
//! each maps to the checks that can cause it, and the problems among them are cited as
//! sentences.
use tracer_model::{
    engine::{Actor, ActorId, Role},
    hook::Hook,
    reason::ReasonClass,
    verdict::{DropInfo, Outcome, ResetBy, UnreachableKind, Verdict},
};

use super::{Check, Status};

const FIREWALL: &[&str] = &[
    "forward_policy",
    "ns_iptables",
    "ns_nft",
    "host_firewall",
    "conntrack",
];
const ROUTES: &[&str] = &["host_route", "guest_route", "ns_return_route", "ns_default_route"];
const READER: &[&str] = &[
    "vmm_alive",
    "tap_reader",
    "tap_up",
    "tap_exists",
    "guest_neighbour",
];
const TAP: &[&str] = &["tap_exists", "tap_up", "guest_route", "tap_addr"];
const LINKS: &[&str] = &["ns_veth", "host_veth"];

/// The problem checks that explain `v`, as sentences ("tap0 in ns-1 has no carrier: no
/// process reads it ..."), most specific first. Empty when none does (or it connected).
pub fn explain(v: &Verdict, checks: &[Check]) -> Vec<String> {
    match v.outcome {
        Outcome::Connected => return Vec::new(),
        // Nothing places the loss and no finding points anywhere: every problem the doctor
        // found on the path may explain it.
        Outcome::Unknown if v.actors.is_empty() => {
            let mut out: Vec<String> = Vec::new();
            for c in checks.iter().filter(|c| c.status == Status::Problem) {
                if !out.contains(&c.evidence) {
                    out.push(c.evidence.clone());
                }
            }
            return out;
        }
        _ => {}
    }
    let place = place_netns(v);
    let mut out: Vec<String> = Vec::new();
    for (id, bound) in related(v) {
        for c in checks
            .iter()
            .filter(|c| c.id == id && c.status == Status::Problem)
        {
            // A firewall or route problem explains where the packet died only in that
            // namespace (an actor, such as a missing DNAT, may be elsewhere).
            if bound
                && let (Some(p), Some(n)) = (&place, &c.netns)
                && p != n
            {
                continue;
            }
            if !out.contains(&c.evidence) {
                out.push(c.evidence.clone());
            }
        }
    }
    out
}

/// The namespace the verdict places the failure in.
fn place_netns(v: &Verdict) -> Option<String> {
    v.drop
        .as_ref()
        .and_then(|d| d.netns.clone())
        .or_else(|| v.unreachable.as_ref().and_then(|u| u.netns.clone()))
}

/// Check ids that can cause what `v` shows, the engine's actors first, each with whether it
/// is bound to the namespace where the packet died.
fn related(v: &Verdict) -> Vec<(&'static str, bool)> {
    let mut ids: Vec<(&'static str, bool)> = Vec::new();
    let mut add = |more: &[&'static str], from_place: bool| {
        for id in more {
            if !ids.iter().any(|(i, _)| i == id) {
                let bound = from_place && (FIREWALL.contains(id) || ROUTES.contains(id));
                ids.push((id, bound));
            }
        }
    };
    for a in v.actors.iter().filter(|a| a.role != Role::Effect) {
        add(&by_actor(a, v), false);
    }
    add(&by_outcome(v), true);
    ids
}

/// The checks that look at what an actor is.
fn by_actor(a: &Actor, v: &Verdict) -> Vec<&'static str> {
    let on_tap = |d: &str| {
        d.starts_with("tap")
            || v.drop
                .as_ref()
                .is_some_and(|x| x.out_device.as_deref() == Some(d))
    };
    match &a.id {
        ActorId::MissingRule { .. } => vec!["dnat"],
        ActorId::Route { .. } | ActorId::MissingRoute { .. } | ActorId::PolicyRule { .. } => ROUTES.to_vec(),
        ActorId::Link { device, state } if state.starts_with("mtu") => {
            let _ = device;
            vec!["mtu"]
        }
        ActorId::Link { device, .. } | ActorId::Address { device, .. } if on_tap(device) => TAP.to_vec(),
        ActorId::Link { .. } | ActorId::Address { .. } => LINKS.to_vec(),
        ActorId::Sysctl { name, .. } if name.contains("rp_filter") => vec!["rp_filter"],
        ActorId::Sysctl { name, .. } if name.contains("forward") => vec!["ip_forward"],
        ActorId::Sysctl { .. } => Vec::new(),
        ActorId::Neighbour { .. } => vec!["guest_neighbour"],
        ActorId::Vmm { .. } => READER.to_vec(),
        ActorId::Guest { .. } => vec!["envd"],
        ActorId::FirewallRule { .. } | ActorId::ChainPolicy { .. } => FIREWALL.to_vec(),
        ActorId::Qdisc { .. } => vec!["qdisc"],
        ActorId::Conntrack { .. } => vec!["conntrack"],
        ActorId::TcFilter { .. } | ActorId::BpfProgram { .. } => Vec::new(),
    }
}

fn by_outcome(v: &Verdict) -> Vec<&'static str> {
    match v.outcome {
        Outcome::Dropped => v.drop.as_ref().map(by_drop).unwrap_or_default(),
        Outcome::Unreachable => match v.unreachable.as_ref().map(|u| u.kind) {
            Some(UnreachableKind::Neighbour) => [READER, LINKS].concat(),
            // A device that went down takes its routes with it.
            _ => [ROUTES, LINKS].concat(),
        },
        Outcome::Queued => READER.to_vec(),
        Outcome::Late => vec!["envd"],
        Outcome::Reset => match v.reset.as_ref().map(|r| r.by) {
            Some(ResetBy::Stack) => vec!["dnat", "guest_route", "host_route"],
            _ => vec!["envd"],
        },
        Outcome::NoReply => vec!["envd"],
        Outcome::Misdirected => ROUTES.to_vec(),
        Outcome::Connected | Outcome::Unknown => Vec::new(),
    }
}

fn by_drop(d: &DropInfo) -> Vec<&'static str> {
    let in_neigh = d.function.as_deref().is_some_and(|f| f.starts_with("neigh_"));
    match d.reason.class() {
        ReasonClass::Netfilter => match d.hook {
            Some(Hook::Forward) => vec!["forward_policy", "ns_iptables", "ns_nft", "conntrack"],
            Some(Hook::Prerouting) => vec!["ns_nft", "ns_iptables", "host_firewall", "conntrack"],
            Some(_) => vec!["host_firewall", "ns_iptables", "ns_nft", "conntrack"],
            None => FIREWALL.to_vec(),
        },
        ReasonClass::RpFilter => vec!["rp_filter", "ns_return_route", "host_route"],
        ReasonClass::InputAddrErrors => vec!["ip_forward"],
        ReasonClass::InputNoRoute | ReasonClass::NoRoute => ROUTES.to_vec(),
        ReasonClass::TapNotRead | ReasonClass::QueuePurge | ReasonClass::Neighbour => READER.to_vec(),
        _ if in_neigh => READER.to_vec(),
        ReasonClass::PacketTooBig => vec!["mtu"],
        ReasonClass::QdiscDrop => vec!["qdisc"],
        // ip_error: forwarding is off, or the route found refuses (unreachable, prohibit).
        _ if d.function.as_deref() == Some("ip_error") => [&["ip_forward"], ROUTES].concat(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_model::{
        reason::DropReason,
        verdict::{Direction, ResetInfo, UnreachableInfo},
    };

    fn verdict(outcome: Outcome) -> Verdict {
        Verdict::new(outcome)
    }

    fn drop(netns: &str, device: &str, hook: Option<Hook>, reason: &str, function: &str) -> DropInfo {
        DropInfo {
            direction: Direction::Request,
            netns: Some(netns.into()),
            device: Some(device.into()),
            out_device: None,
            hook,
            table: None,
            reason: DropReason::new(reason),
            function: Some(function.into()),
            location: None,
            priority_window: None,
        }
    }

    fn problem(id: &'static str, netns: &str, evidence: &str) -> Check {
        Check::new(id, id).netns(netns).problem(evidence, "fix")
    }

    /// What the doctor says about a lab sandbox with every fault at once (one problem per
    /// check), plus checks that passed.
    fn checks() -> Vec<Check> {
        vec![
            problem("vmm_alive", "ns-1", "no VMM process of sandbox x is running"),
            problem(
                "tap_reader",
                "ns-1",
                "tap0 in ns-1 has no carrier: no process reads it",
            ),
            problem("tap_up", "ns-1", "tap0 in ns-1 is DOWN"),
            problem(
                "guest_route",
                "ns-1",
                "ns-1 routes 169.254.0.21 by default via 10.12.0.2 dev eth0",
            ),
            problem("forward_policy", "ns-1", "FORWARD policy DROP"),
            problem("ns_iptables", "ns-1", "dropped by -A FORWARD ... -j DROP"),
            problem("ns_nft", "ns-1", "dropped by nft table ip lab-fault"),
            problem("host_firewall", "e2b-host", "dropped at INPUT in e2b-host"),
            problem("dnat", "ns-1", "no DNAT in ns-1"),
            problem("host_route", "e2b-host", "e2b-host has no route to 10.11.0.1"),
            problem("ip_forward", "ns-1", "net.ipv4.ip_forward = 0"),
            problem("rp_filter", "ns-1", "ns-1 eth0: rp_filter 1 (strict)"),
            problem("envd", "ns-1", "connection refused (RST)"),
            Check::new("mtu", "mtu").ok("all 1500"),
        ]
    }

    fn explained(v: &Verdict) -> Vec<String> {
        explain(v, &checks())
    }

    #[test]
    fn forward_drop_is_explained_by_forward_rules_and_policy() {
        let mut v = verdict(Outcome::Dropped);
        v.drop = Some(drop(
            "ns-1",
            "eth0",
            Some(Hook::Forward),
            "NETFILTER_DROP",
            "nf_hook_slow",
        ));
        assert_eq!(
            explained(&v),
            [
                "FORWARD policy DROP",
                "dropped by -A FORWARD ... -j DROP",
                "dropped by nft table ip lab-fault"
            ]
        );
    }

    #[test]
    fn drops_are_explained_only_by_checks_of_their_namespace() {
        let mut v = verdict(Outcome::Dropped);
        v.drop = Some(drop(
            "e2b-host",
            "veth-1",
            Some(Hook::Input),
            "NETFILTER_DROP",
            "nf_hook_slow",
        ));
        assert_eq!(explained(&v), ["dropped at INPUT in e2b-host"]);
        v.drop = Some(drop(
            "ns-1",
            "eth0",
            Some(Hook::Prerouting),
            "NETFILTER_DROP",
            "nf_hook_slow",
        ));
        assert_eq!(
            explained(&v),
            [
                "dropped by nft table ip lab-fault",
                "dropped by -A FORWARD ... -j DROP"
            ]
        );
    }

    fn actor(id: ActorId) -> Actor {
        Actor {
            role: Role::Cause,
            how: tracer_model::engine::How::State,
            netns: Some("ns-1".into()),
            device: None,
            place: String::new(),
            does: String::new(),
            id,
        }
    }

    #[test]
    fn the_engines_actors_come_first() {
        let mut v = verdict(Outcome::Dropped);
        v.actors = vec![actor(ActorId::MissingRule {
            family: "ip".into(),
            table: "nat".into(),
            chain: "PREROUTING".into(),
            want: "DNAT".into(),
        })];
        v.drop = Some(drop(
            "e2b-host",
            "veth-1",
            None,
            "IP_INNOROUTES",
            "ip_route_input_slow",
        ));
        assert_eq!(explained(&v)[0], "no DNAT in ns-1");
        let mut v = verdict(Outcome::Dropped);
        v.actors = vec![actor(ActorId::Link {
            device: "tap0".into(),
            state: "down".into(),
        })];
        v.drop = Some(drop(
            "e2b-host",
            "veth-1",
            None,
            "IP_INNOROUTES",
            "ip_route_input_slow",
        ));
        let e = explained(&v);
        assert_eq!(
            e[..2],
            [
                "tap0 in ns-1 is DOWN",
                "ns-1 routes 169.254.0.21 by default via 10.12.0.2 dev eth0"
            ]
        );
        assert!(
            e.contains(&"e2b-host has no route to 10.11.0.1".to_string()),
            "{e:?}"
        );
        let mut v = verdict(Outcome::Unknown);
        v.actors = vec![actor(ActorId::MissingRoute {
            dst: "10.11.0.1/32".into(),
            device: Some("veth-1".into()),
        })];
        assert_eq!(explained(&v)[0], "e2b-host has no route to 10.11.0.1");
    }

    #[test]
    fn an_unread_tap_explains_purged_queues_and_unanswered_arp() {
        let mut v = verdict(Outcome::Unreachable);
        v.drop = Some(drop("ns-1", "tap0", None, "QUEUE_PURGE", "neigh_destroy"));
        v.unreachable = Some(UnreachableInfo {
            kind: UnreachableKind::Neighbour,
            address: [169, 254, 0, 21].into(),
            netns: Some("ns-1".into()),
            device: Some("tap0".into()),
            state: Some("QUEUE_PURGE".into()),
            errno: None,
        });
        let e = explained(&v);
        assert_eq!(
            e[..2],
            [
                "no VMM process of sandbox x is running",
                "tap0 in ns-1 has no carrier: no process reads it"
            ]
        );
    }

    #[test]
    fn kernel_reasons_map_to_sysctls_and_routes() {
        let mut v = verdict(Outcome::Dropped);
        v.drop = Some(drop("ns-1", "eth0", None, "IP_INADDRERRORS", "ip_error"));
        assert_eq!(explained(&v), ["net.ipv4.ip_forward = 0"]);
        v.drop = Some(drop("ns-1", "eth0", None, "IP_RPFILTER", "ip_rcv_finish_core"));
        assert_eq!(explained(&v), ["ns-1 eth0: rp_filter 1 (strict)"]);
        let mut v = verdict(Outcome::Unreachable);
        v.unreachable = Some(UnreachableInfo {
            kind: UnreachableKind::NoRoute,
            address: [10, 11, 0, 1].into(),
            netns: Some("e2b-host".into()),
            device: None,
            state: None,
            errno: None,
        });
        assert_eq!(explained(&v), ["e2b-host has no route to 10.11.0.1"]);
    }

    #[test]
    fn a_guest_reset_is_explained_by_envd_and_success_by_nothing() {
        let mut v = verdict(Outcome::Reset);
        v.reset = Some(ResetInfo {
            by: ResetBy::Guest,
            netns: Some("ns-1".into()),
            device: Some("tap0".into()),
        });
        assert_eq!(explained(&v), ["connection refused (RST)"]);
        assert!(explained(&verdict(Outcome::Connected)).is_empty());
        assert_eq!(
            explain(&verdict(Outcome::Unknown), &checks()).len(),
            13,
            "an unknown outcome cites every problem on the path"
        );
        // Passed checks are never cited.
        let mut v = verdict(Outcome::Dropped);
        v.drop = Some(drop("ns-1", "tap0", None, "PKT_TOO_BIG", "x"));
        assert!(explained(&v).is_empty());
    }
}
