//! Whether an actor one sandbox's verdict named on the host side applies to another sandbox
//! too: in a failure storm the watcher shares a host-side localization only when this says
//! yes for that sandbox's own addresses and port — the firewall evaluator on its packets, the
//! route lookup for its host IP — never by a verdict's signature alone.
use std::net::Ipv4Addr;

use super::{
    actor::{Actor, ActorId},
    fib::{self, Flow},
    inventory::NsInventory,
};
use tracer_common::tcp_flag::{ACK, SYN};

use crate::firewall::{
    eval::{self, Ct, Outcome, Packet, Port},
    model::HookPoint,
};

/// One sandbox's attempt as the host side makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The orchestrator's address toward the sandbox (its host-side veth's).
    pub client: Ipv4Addr,
    /// The sandbox's host IP (10.11.x.y) and envd's port.
    pub host_ip: Ipv4Addr,
    pub port: u16,
    /// The sandbox's host-side device.
    pub host_veth: Option<String>,
}

/// The sentence that confirms `actor` acts on `a`'s attempts in the host namespace `inv`,
/// or None when it does not (or it is no actor the evaluators can decide).
pub fn confirm(actor: &Actor, inv: &NsInventory, a: &Attempt) -> Option<String> {
    match &actor.id {
        ActorId::FirewallRule { .. } | ActorId::ChainPolicy { .. } => firewall(actor, inv, a),
        ActorId::Route { .. } | ActorId::PolicyRule { .. } => route(actor, inv, a),
        _ => None,
    }
}

/// The SYN leaving the host side, and the SYN-ACK coming back: (hook, packet) pairs.
fn packets(a: &Attempt) -> Vec<(HookPoint, Packet)> {
    let syn = |hook| {
        (
            hook,
            Packet {
                what: format!("the SYN to {}:{}", a.host_ip, a.port),
                in_dev: None,
                out_dev: a.host_veth.clone(),
                src: Some(a.client),
                dst: Some(a.host_ip),
                dst_nat: None,
                src_nat: None,
                sport: Port::Ephemeral,
                dport: Port::Known(a.port),
                flags: SYN,
                ct: Ct::New,
                mark: Some(0),
            },
        )
    };
    let reply = |hook| {
        (
            hook,
            Packet {
                what: format!("the reply from {}:{}", a.host_ip, a.port),
                in_dev: a.host_veth.clone(),
                out_dev: None,
                src: Some(a.host_ip),
                dst: Some(a.client),
                dst_nat: None,
                src_nat: None,
                sport: Port::Known(a.port),
                dport: Port::Ephemeral,
                flags: SYN | ACK,
                ct: Ct::Established,
                mark: Some(0),
            },
        )
    };
    vec![
        syn(HookPoint::Output),
        syn(HookPoint::Postrouting),
        syn(HookPoint::Egress),
        reply(HookPoint::Ingress),
        reply(HookPoint::Prerouting),
        reply(HookPoint::Input),
    ]
}

fn firewall(actor: &Actor, inv: &NsInventory, a: &Attempt) -> Option<String> {
    let same = |h: &eval::Hit| match &actor.id {
        ActorId::FirewallRule {
            table, handle, rule, ..
        } => {
            h.table == *table && !h.policy && (handle.is_some_and(|x| h.handle == Some(x)) || h.rule == *rule)
        }
        ActorId::ChainPolicy { table, chain, .. } => {
            h.table == *table && h.policy && h.chains.first() == Some(chain)
        }
        _ => false,
    };
    packets(a).into_iter().find_map(|(hook, pkt)| {
        // Only a certain drop confirms: a rule that may drop it (an unknown match) does not.
        eval::at_hook(&inv.tables, hook, &pkt)
            .into_iter()
            .find_map(|o| match o {
                Outcome::Drops(h) if same(&h) => Some(format!(
                    "the firewall evaluator drops {} with it (client {})",
                    pkt.what, a.client
                )),
                _ => None,
            })
    })
}

fn route(actor: &Actor, inv: &NsInventory, a: &Attempt) -> Option<String> {
    let flow = Flow {
        dst: a.host_ip,
        src: Some(a.client),
        proto: 6,
        dport: a.port,
        ..Flow::default()
    };
    let found = fib::lookup(inv, &flow);
    let same = match &actor.id {
        ActorId::Route { table, dst, .. } => found
            .route
            .is_some_and(|r| r.table == *table && format!("{}/{}", r.dst, r.prefix) == *dst),
        ActorId::PolicyRule { priority, .. } => found.rule.is_some_and(|r| r.priority == *priority),
        _ => false,
    };
    // The route the sandbox's own veth would take is no failure, whatever matched.
    let to_its_veth = found
        .route
        .is_some_and(|r| r.kind == "unicast" && r.device.is_some() && r.device == a.host_veth);
    (same && !to_its_veth).then(|| {
        format!(
            "the route lookup for {} takes it too ({})",
            a.host_ip,
            found.kind()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{
            actor::{How, Role},
            inventory::Route,
        },
        firewall::model::{Action, Backend, Chain, Cond, Rule, Source, Table},
    };

    fn attempt(n: u8) -> Attempt {
        Attempt {
            client: Ipv4Addr::new(10, 12, 0, 2 * n),
            host_ip: Ipv4Addr::new(10, 11, 0, n),
            port: 49983,
            host_veth: Some(format!("veth-{n}")),
        }
    }

    fn host_with(rule: Rule) -> NsInventory {
        NsInventory {
            label: "e2b-host".into(),
            tables: vec![Table {
                source: Source::Iptables(Backend::Nft),
                family: "ip".into(),
                name: "filter".into(),
                chains: vec![Chain {
                    name: "OUTPUT".into(),
                    hook: Some(HookPoint::Output),
                    priority: 0,
                    is_nat: false,
                    policy_drop: false,
                    device: None,
                    rules: vec![rule],
                }],
            }],
            ..Default::default()
        }
    }

    fn rule_actor(text: &str) -> Actor {
        Actor {
            role: Role::Cause,
            how: How::Counter,
            netns: Some("e2b-host".into()),
            device: None,
            place: "OUTPUT hook, priority 0".into(),
            does: "drops it".into(),
            id: ActorId::FirewallRule {
                source: "iptables-nft".into(),
                family: "ip".into(),
                table: "filter".into(),
                chain: "OUTPUT".into(),
                handle: None,
                rule: text.into(),
            },
        }
    }

    /// A rule that drops every sandbox's SYN confirms for all; one narrowed to one sandbox's
    /// host IP confirms for that one only.
    #[test]
    fn a_host_rule_is_shared_only_where_it_drops_that_sandboxs_packet() {
        let all = "-A OUTPUT -p tcp -m tcp --dport 49983 -j DROP";
        let inv = host_with(Rule {
            conds: vec![Cond::Tcp(true), Cond::DPort(vec![(49983, 49983)])],
            action: Action::Drop,
            text: all.into(),
            handle: None,
        });
        assert!(confirm(&rule_actor(all), &inv, &attempt(1)).is_some());
        assert!(confirm(&rule_actor(all), &inv, &attempt(7)).is_some());
        let one = "-A OUTPUT -d 10.11.0.1/32 -p tcp -m tcp --dport 49983 -j DROP";
        let inv = host_with(Rule {
            conds: vec![
                Cond::Dst(vec![(Ipv4Addr::new(10, 11, 0, 1), 32)]),
                Cond::Tcp(true),
                Cond::DPort(vec![(49983, 49983)]),
            ],
            action: Action::Drop,
            text: one.into(),
            handle: None,
        });
        assert!(confirm(&rule_actor(one), &inv, &attempt(1)).is_some());
        assert!(
            confirm(&rule_actor(one), &inv, &attempt(2)).is_none(),
            "another host IP"
        );
        // A rule of another name is never confirmed by this one's drop.
        assert!(confirm(&rule_actor("-A OUTPUT -j DROP"), &inv, &attempt(1)).is_none());
    }

    #[test]
    fn a_blackhole_for_every_host_ip_is_shared_a_slots_own_route_is_not() {
        let mut inv = NsInventory {
            label: "e2b-host".into(),
            ..Default::default()
        };
        inv.routes.push(Route {
            table: 254,
            dst: Ipv4Addr::new(10, 11, 0, 0),
            prefix: 16,
            kind: "blackhole".into(),
            gateway: None,
            oif: None,
            device: None,
            metric: 0,
            prefsrc: None,
        });
        let actor = Actor {
            id: ActorId::Route {
                table: 254,
                dst: "10.11.0.0/16".into(),
                route_type: "blackhole".into(),
                via: None,
                device: None,
            },
            ..rule_actor("")
        };
        assert!(confirm(&actor, &inv, &attempt(3)).is_some());
        // Sandbox 4 still has its own /32 route through its veth: the blackhole is not its.
        inv.routes.push(Route {
            table: 254,
            dst: Ipv4Addr::new(10, 11, 0, 4),
            prefix: 32,
            kind: "unicast".into(),
            gateway: None,
            oif: Some(9),
            device: Some("veth-4".into()),
            metric: 0,
            prefsrc: None,
        });
        assert!(confirm(&actor, &inv, &attempt(4)).is_none());
        // Other kinds of actors are never shared.
        let link = Actor {
            id: ActorId::Link {
                device: "veth-3".into(),
                state: "down".into(),
            },
            ..rule_actor("")
        };
        assert!(confirm(&link, &inv, &attempt(3)).is_none());
    }
}
