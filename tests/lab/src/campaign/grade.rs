//! Grading one verdict against what was injected, from the verdict's structured fields only
//! (`outcome`, `actors[].id`, `actors[].netns`, `actors[].role`), never from its prose.
use serde::Serialize;
use serde_json::Value;

use super::grammar::{Fault, Ident, Intent};

/// What the independent client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truth {
    Works,
    Broken,
    /// Some attempts worked and some did not (a slow guest, a late reply): not graded.
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// The outcome agrees with the client, the actor is named, at its place.
    Right,
    /// The outcome agrees and the place is right, but the actor is not named.
    Vague,
    /// The outcome agrees, and a different actor or place is named.
    Wrong,
    /// `connected` when the client failed, or a failure when it worked.
    FalseClaim,
    /// The outcome agrees but nothing is named (an `unknown` verdict).
    Unknown,
    /// Meant to break, and the client still connects: a generator bug, not graded.
    NotBreaking,
    /// The client's attempts disagreed among themselves: not graded.
    Mixed,
}

impl Grade {
    pub fn name(self) -> &'static str {
        match self {
            Self::Right => "right",
            Self::Vague => "vague",
            Self::Wrong => "wrong",
            Self::FalseClaim => "false",
            Self::Unknown => "unknown",
            Self::NotBreaking => "not_breaking",
            Self::Mixed => "mixed",
        }
    }
}

/// The grade, and why (one line). `false_claims`: actors the verdict names that the live
/// namespace contradicts (see `claims`).
pub fn grade(f: &Fault, truth: Truth, v: &Value, false_claims: &[String]) -> (Grade, String) {
    let outcome = v["outcome"].as_str().unwrap_or("");
    match truth {
        Truth::Mixed => return (Grade::Mixed, "the client's attempts disagreed".into()),
        Truth::Works if f.intent == Intent::Break => {
            return (
                Grade::NotBreaking,
                "meant to break, but the client connects".into(),
            );
        }
        Truth::Works if outcome == "connected" => {
            let causes = v["actors"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["role"].as_str() == Some("cause")));
            return if causes {
                (Grade::FalseClaim, "connected, and yet a cause is named".into())
            } else {
                (Grade::Right, "connected, as the client".into())
            };
        }
        Truth::Works => {
            return (
                Grade::FalseClaim,
                format!("the client connects, the verdict says {outcome}"),
            );
        }
        Truth::Broken if outcome == "connected" || outcome.is_empty() => {
            return (
                Grade::FalseClaim,
                format!("the client fails, the verdict says {:?}", outcome),
            );
        }
        Truth::Broken => {}
    }
    if let Some(c) = false_claims.first() {
        return (Grade::FalseClaim, format!("names what is not there: {c}"));
    }
    let actors: Vec<&Value> = v["actors"].as_array().into_iter().flatten().collect();
    let named: Vec<&&Value> = actors
        .iter()
        .filter(|a| matches!(a["role"].as_str(), Some("cause" | "candidate")))
        .collect();
    if named.iter().any(|a| is_injected(f, a)) {
        return (Grade::Right, "the injected actor is named".into());
    }
    if named.is_empty() && outcome == "unknown" {
        return (Grade::Unknown, "unknown, nothing named".into());
    }
    let place_right = place_named(f, v, &named);
    if named.is_empty() {
        return if place_right {
            (Grade::Vague, "right place, no actor named".into())
        } else {
            (Grade::Wrong, "no actor named, and not its place".into())
        };
    }
    let first = named[0];
    let what = format!(
        "named {} in {}",
        first["kind"].as_str().unwrap_or("?"),
        first["netns"].as_str().unwrap_or("?")
    );
    if place_right {
        (Grade::Vague, format!("right place, {what}"))
    } else {
        (Grade::Wrong, what)
    }
}

/// Whether the verdict points at the actor's namespace (and device, when it has one): by an
/// actor, the divergence or the failing hop.
fn place_named(f: &Fault, v: &Value, named: &[&&Value]) -> bool {
    let in_ns = |n: &Value| n.as_str() == Some(f.netns.as_str());
    named.iter().any(|a| in_ns(&a["netns"]))
        || in_ns(&v["divergence"]["netns"])
        || v["failing_hop"]
            .as_u64()
            .and_then(|i| v["hops"].get(i as usize))
            .is_some_and(|h| in_ns(&h["netns"]))
}

/// Whether a verdict's actor is the injected one (identities normalized: an nft rule by
/// handle or comment, an iptables rule by the comment it carries, a route by table and
/// destination, a policy rule by priority, a sysctl by any of its equivalent names ...).
pub fn is_injected(f: &Fault, a: &Value) -> bool {
    let id = &a["id"];
    let s = |k: &str| id[k].as_str().unwrap_or("");
    let ns_ok = a["netns"].as_str().is_none_or(|n| n == f.netns);
    let kind = id["kind"].as_str().unwrap_or("");
    ns_ok
        && match &f.actor {
            Ident::IptablesRule { table, comment, .. } => {
                kind == "firewall_rule"
                    && s("source").starts_with("iptables")
                    && s("table") == table
                    && s("rule").contains(comment.as_str())
            }
            Ident::NftRule {
                family,
                table,
                handle,
                comment,
                ..
            } => {
                kind == "firewall_rule"
                    && s("family") == family
                    && s("table") == table
                    && (handle.is_some_and(|h| id["handle"].as_u64() == Some(h))
                        || s("rule").contains(comment.as_str()))
            }
            Ident::Route { table, dst } => {
                kind == "route" && id["table"].as_u64() == Some(u64::from(*table)) && s("dst") == dst
            }
            Ident::PolicyRule { priority } => {
                kind == "policy_rule" && id["priority"].as_u64() == Some(u64::from(*priority))
            }
            Ident::Neighbour { device, address } => {
                kind == "neighbour" && s("device") == device && s("address") == address
            }
            Ident::Link { device } => kind == "link" && s("device") == device,
            Ident::Address { device, address } => {
                kind == "address"
                    && s("device") == device
                    && s("address").split('/').next() == Some(address.as_str())
            }
            Ident::Sysctl { names } => kind == "sysctl" && names.iter().any(|n| n == s("name")),
            Ident::Qdisc { device } => kind == "qdisc" && s("device") == device,
            Ident::TcFilter { device } => kind == "tc_filter" && s("device") == device,
            Ident::Bpf { name } => kind == "bpf_program" && s("name") == name,
            Ident::Vmm => kind == "vmm",
            Ident::Guest => kind == "guest",
        }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::campaign::grammar::{Family, Leg};

    fn fault(actor: Ident, intent: Intent) -> Fault {
        Fault {
            seed: 1,
            index: 2,
            family: Family::Iptables,
            leg: Some(Leg::Request),
            netns: "ns-1".into(),
            device: None,
            what: String::new(),
            intent,
            actor,
            apply: Vec::new(),
            revert: Vec::new(),
        }
    }

    fn rule() -> Ident {
        Ident::IptablesRule {
            table: "filter".into(),
            chain: "FORWARD".into(),
            comment: "campaign-1-2".into(),
        }
    }

    fn actor(role: &str, netns: &str, rule_text: &str) -> Value {
        json!({"role": role, "netns": netns, "kind": "firewall_rule",
               "id": {"kind": "firewall_rule", "source": "iptables-nft", "family": "ip",
                      "table": "filter", "chain": "FORWARD", "handle": null, "rule": rule_text}})
    }

    #[test]
    fn the_injected_rule_named_is_right_and_another_is_not() {
        let f = fault(rule(), Intent::Break);
        let ours = json!({"outcome": "dropped", "actors": [actor("cause", "ns-1",
            "-A FORWARD -p tcp --dport 49983 -m comment --comment campaign-1-2 -j DROP")]});
        assert_eq!(grade(&f, Truth::Broken, &ours, &[]).0, Grade::Right);
        let other = json!({"outcome": "dropped", "actors": [actor("cause", "ns-1", "-A FORWARD -j DROP")]});
        assert_eq!(
            grade(&f, Truth::Broken, &other, &[]).0,
            Grade::Vague,
            "right place"
        );
        let elsewhere =
            json!({"outcome": "dropped", "actors": [actor("cause", "e2b-host", "-A INPUT -j DROP")]});
        assert_eq!(grade(&f, Truth::Broken, &elsewhere, &[]).0, Grade::Wrong);
        // An actor that only acted on a packet already wrong is not the cause.
        let effect = json!({"outcome": "dropped", "actors": [actor("effect", "ns-1",
            "-A FORWARD -p tcp --dport 49983 -m comment --comment campaign-1-2 -j DROP")]});
        assert_ne!(grade(&f, Truth::Broken, &effect, &[]).0, Grade::Right);
    }

    #[test]
    fn outcomes_that_contradict_the_client_are_false_claims() {
        let f = fault(rule(), Intent::Break);
        assert_eq!(
            grade(&f, Truth::Broken, &json!({"outcome": "connected"}), &[]).0,
            Grade::FalseClaim
        );
        let inert = fault(rule(), Intent::Inert);
        assert_eq!(
            grade(&inert, Truth::Works, &json!({"outcome": "dropped"}), &[]).0,
            Grade::FalseClaim
        );
        assert_eq!(
            grade(&inert, Truth::Works, &json!({"outcome": "connected"}), &[]).0,
            Grade::Right
        );
        assert_eq!(
            grade(&f, Truth::Works, &json!({"outcome": "dropped"}), &[]).0,
            Grade::NotBreaking
        );
        assert_eq!(
            grade(&f, Truth::Mixed, &json!({"outcome": "late"}), &[]).0,
            Grade::Mixed
        );
        assert_eq!(
            grade(
                &f,
                Truth::Broken,
                &json!({"outcome": "unknown", "actors": []}),
                &[]
            )
            .0,
            Grade::Unknown
        );
        // The injected rule named, and another actor that is not there: false all the same.
        let ours = json!({"outcome": "dropped", "actors": [actor("cause", "ns-1",
            "-A FORWARD -p tcp --dport 49983 -m comment --comment campaign-1-2 -j DROP")]});
        let claims = ["link in ns-1: eth0 is up, said to be down".to_string()];
        assert_eq!(grade(&f, Truth::Broken, &ours, &claims).0, Grade::FalseClaim);
        // A working path with a cause named is a false claim too.
        let named = json!({"outcome": "connected", "actors": [actor("cause", "ns-1", "-A FORWARD -j DROP")]});
        assert_eq!(grade(&inert, Truth::Works, &named, &[]).0, Grade::FalseClaim);
    }

    #[test]
    fn identities_are_normalized() {
        let mut f = fault(
            Ident::Sysctl {
                names: vec![
                    "net.ipv4.ip_forward".into(),
                    "net.ipv4.conf.all.forwarding".into(),
                ],
            },
            Intent::Break,
        );
        let a = json!({"role": "cause", "netns": "ns-1",
                       "id": {"kind": "sysctl", "name": "net.ipv4.ip_forward", "value": "0"}});
        assert!(is_injected(&f, &a));
        f.actor = Ident::Address {
            device: "tap0".into(),
            address: "169.254.0.22".into(),
        };
        let a = json!({"role": "cause", "netns": "ns-1",
                       "id": {"kind": "address", "device": "tap0", "address": "169.254.0.22/30", "missing": true}});
        assert!(is_injected(&f, &a));
    }
}
