//! `nft -j list ruleset`, read into typed items (tables, base chains, rules with their
//! expressions) without failing on what this version of the model does not know, and turned
//! into the rule model.
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

use super::model::{Action, Chain, Cond, Effect, HookPoint, Rule, Source, Table, flag_bit, flags};

/// One ruleset as `nft -j list ruleset` prints it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NftRuleset {
    pub tables: Vec<NftTable>,
    pub chains: Vec<NftChain>,
    /// Named sets with their elements (E2B v2 keeps its slots' veths and host IPs in sets).
    pub sets: Vec<NftSet>,
}

/// A named set: its elements as nft prints them (`"veth-1"`, `10.11.0.1`, `10.0.0.0/8`,
/// `10.0.0.1-10.0.0.9`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSet {
    pub family: String,
    pub table: String,
    pub name: String,
    pub elements: Vec<String>,
}

impl NftSet {
    /// Whether `value` (a name or an IPv4 address) is an element, or inside one.
    pub fn contains(&self, value: &str) -> bool {
        let addr: Option<Ipv4Addr> = value.parse().ok();
        self.elements.iter().any(|e| {
            if e == value {
                return true;
            }
            let Some(a) = addr else { return false };
            if let Some((net, len)) = e.split_once('/') {
                let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
                    return false;
                };
                let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
                return u32::from(a) & mask == u32::from(net) & mask;
            }
            if let Some((lo, hi)) = e.split_once('-') {
                let (Ok(lo), Ok(hi)) = (lo.parse::<Ipv4Addr>(), hi.parse::<Ipv4Addr>()) else {
                    return false;
                };
                return (u32::from(lo)..=u32::from(hi)).contains(&u32::from(a));
            }
            false
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NftTable {
    pub family: String,
    pub name: String,
}

/// A chain with its rules (base chains have a hook and a priority).
#[derive(Debug, Clone, PartialEq)]
pub struct NftChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// Hook name for base chains (prerouting, input, forward, output, postrouting, ingress).
    pub hook: Option<String>,
    pub priority: Option<i32>,
    pub policy: Option<String>,
    /// filter, nat, route.
    pub kind: Option<String>,
    /// The device of a netdev/inet ingress chain, when nft prints it.
    pub device: Option<String>,
    pub rules: Vec<NftRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NftRule {
    pub handle: u64,
    /// Packet count of a `counter` statement, if the rule has one.
    pub packets: Option<u64>,
    /// Verdict of the rule: accept, drop, jump X, ...
    pub verdict: Option<String>,
    /// The rule as nft prints it (reconstructed from the JSON's expressions).
    pub text: String,
    /// The statements, as nft gives them: `{"match": ...}`, `{"counter": ...}`, `{"drop":
    /// null}` ... (read into the rule model by [`NftRuleset::tables`]).
    pub exprs: Vec<Value>,
}

/// The JSON as nft writes it: a list of one-key objects. Keys this model does not use (sets,
/// maps, elements, flowtables, metainfo ...) are skipped.
#[derive(Deserialize)]
struct Json {
    nftables: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    table: Option<NftTable>,
    chain: Option<ChainJson>,
    rule: Option<RuleJson>,
    set: Option<SetJson>,
}

#[derive(Deserialize)]
struct SetJson {
    family: String,
    table: String,
    name: String,
    #[serde(default)]
    elem: Vec<Value>,
}

#[derive(Deserialize)]
struct ChainJson {
    family: String,
    table: String,
    name: String,
    hook: Option<String>,
    prio: Option<Value>,
    policy: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    dev: Option<Value>,
}

#[derive(Deserialize)]
struct RuleJson {
    family: String,
    table: String,
    chain: String,
    handle: Option<u64>,
    #[serde(default)]
    expr: Vec<Value>,
}

impl NftRuleset {
    /// Parses `nft -j list ruleset`.
    pub fn parse(json: &str) -> Result<Self> {
        let parsed: Json = serde_json::from_str(json).context("parse nft JSON")?;
        let mut out = Self::default();
        for item in &parsed.nftables {
            if let Some(t) = &item.table {
                out.tables.push(t.clone());
            }
            if let Some(c) = &item.chain {
                out.chains.push(chain_of(c));
            }
            if let Some(s) = &item.set {
                out.sets.push(NftSet {
                    family: s.family.clone(),
                    table: s.table.clone(),
                    name: s.name.clone(),
                    elements: s.elem.iter().map(element_text).collect(),
                });
            }
        }
        for r in parsed.nftables.into_iter().filter_map(|i| i.rule) {
            let chain = out
                .chains
                .iter_mut()
                .find(|c| c.family == r.family && c.table == r.table && c.name == r.chain);
            if let Some(c) = chain {
                c.rules.push(rule_of(r));
            }
        }
        Ok(out)
    }

    pub fn set(&self, family: &str, table: &str, name: &str) -> Option<&NftSet> {
        self.sets
            .iter()
            .find(|s| s.family == family && s.table == table && s.name == name)
    }

    /// Base chains (those with a hook).
    pub fn base_chains(&self) -> impl Iterator<Item = &NftChain> {
        self.chains.iter().filter(|c| c.hook.is_some())
    }

    /// The native nftables tables in the rule model, leaving out the tables iptables-nft owns
    /// (their rules are read from iptables-nft-save, which prints every match).
    pub fn tables(&self, iptables_nft_tables: &[String]) -> Vec<Table> {
        self.tables
            .iter()
            .filter(|t| matches!(t.family.as_str(), "ip" | "inet" | "netdev"))
            .filter(|t| !(t.family == "ip" && iptables_nft_tables.contains(&t.name)))
            .map(|t| Table {
                source: Source::Nft,
                family: t.family.clone(),
                name: t.name.clone(),
                chains: self
                    .chains
                    .iter()
                    .filter(|c| c.family == t.family && c.table == t.name)
                    .map(model_chain)
                    .collect(),
            })
            .collect()
    }
}

fn chain_of(c: &ChainJson) -> NftChain {
    NftChain {
        family: c.family.clone(),
        table: c.table.clone(),
        name: c.name.clone(),
        hook: c.hook.clone(),
        priority: c.prio.as_ref().and_then(Value::as_i64).map(clamp_i32),
        policy: c.policy.clone(),
        kind: c.kind.clone(),
        device: match &c.dev {
            Some(Value::String(d)) => Some(d.clone()),
            _ => None,
        },
        rules: Vec::new(),
    }
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

fn rule_of(r: RuleJson) -> NftRule {
    let mut packets = None;
    let mut verdict = None;
    let mut parts = Vec::new();
    for e in &r.expr {
        if let Some(c) = e.get("counter") {
            packets = c["packets"].as_u64();
            parts.push("counter".to_string());
        } else if let Some(m) = e.get("match") {
            parts.push(format!(
                "{} {} {}",
                expr_text(&m["left"]),
                m["op"].as_str().unwrap_or("=="),
                expr_text(&m["right"])
            ));
        } else if let Some((k, val)) = e.as_object().and_then(|o| o.iter().next()) {
            let text = match k.as_str() {
                "accept" | "drop" | "return" | "continue" => k.clone(),
                "jump" | "goto" => format!("{k} {}", val["target"].as_str().unwrap_or("?")),
                "mangle" => mangle_text(val),
                other => other.to_string(),
            };
            if matches!(
                k.as_str(),
                "accept" | "drop" | "jump" | "goto" | "return" | "reject"
            ) {
                verdict = Some(text.clone());
            }
            parts.push(text);
        }
    }
    NftRule {
        handle: r.handle.unwrap_or(0),
        packets,
        verdict,
        text: parts.join(" ").replace(" == ", " "),
        exprs: r.expr,
    }
}

/// One set element as nft prints it (`{"elem": {"val": ...}}` wraps elements with options).
fn element_text(v: &Value) -> String {
    match v.get("elem").and_then(|e| e.get("val")) {
        Some(val) => element_text(val),
        None => expr_text(v),
    }
}

/// Renders the operand of an nft JSON match.
fn expr_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Array(a) => a.iter().map(expr_text).collect::<Vec<_>>().join(","),
        serde_json::Value::Object(o) => {
            if let Some(p) = o.get("payload") {
                format!(
                    "{} {}",
                    p["protocol"].as_str().unwrap_or(""),
                    p["field"].as_str().unwrap_or("")
                )
                .trim()
                .to_string()
            } else if let Some(m) = o.get("meta") {
                m["key"].as_str().unwrap_or("meta").to_string()
            } else if let Some(ct) = o.get("ct") {
                format!("ct {}", ct["key"].as_str().unwrap_or(""))
            } else if let Some(set) = o.get("set") {
                format!("{{ {} }}", expr_text(set))
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", expr_text(&p["addr"]), p["len"])
            } else if let Some(r) = o.get("range") {
                format!("{}-{}", expr_text(&r[0]), expr_text(&r[1]))
            } else {
                o.keys().next().cloned().unwrap_or_default()
            }
        }
        other => other.to_string(),
    }
}

fn model_chain(c: &NftChain) -> Chain {
    Chain {
        name: c.name.clone(),
        hook: c.hook.as_deref().and_then(HookPoint::from_nft),
        priority: c.priority.unwrap_or(0),
        is_nat: c.kind.as_deref() == Some("nat"),
        policy_drop: c.policy.as_deref() == Some("drop"),
        device: c.device.clone(),
        rules: c.rules.iter().map(model_rule).collect(),
    }
}

fn model_rule(r: &NftRule) -> Rule {
    let mut conds = Vec::new();
    let mut action = Action::Continue;
    for e in &r.exprs {
        if let Some(m) = e.get("match") {
            conds.push(nft_match(m));
            continue;
        }
        let Some((k, val)) = e.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let str_of = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
        match k.as_str() {
            "accept" => action = Action::Accept,
            "drop" => action = Action::Drop,
            "reject" => action = Action::Reject,
            "return" => action = Action::Return,
            "jump" => action = Action::Jump(str_of(val, "target")),
            "goto" => action = Action::Goto(str_of(val, "target")),
            "dnat" => action = Action::Dnat(val["addr"].as_str().and_then(|a| a.parse().ok())),
            "snat" => action = Action::Snat(val["addr"].as_str().and_then(|a| a.parse().ok())),
            "masquerade" => action = Action::Masquerade,
            "redirect" => action = Action::Redirect,
            "queue" | "vmap" | "tproxy" | "synproxy" => action = Action::Divert(k.clone()),
            "notrack" if action == Action::Continue => action = Action::Set(Effect::Notrack),
            "mangle" if action == Action::Continue => action = Action::Set(mangle_effect(val)),
            "limit" | "quota" => conds.push(Cond::Unknown(k.clone())),
            "xt" => {
                let name = str_of(val, "name");
                if val["type"] == "target" {
                    action = Action::Divert(format!("xt {name}"));
                } else {
                    conds.push(Cond::Unknown(format!("xt {name}")));
                }
            }
            // counter, log, mangle, notrack, ct helpers, set updates: no verdict.
            _ => {}
        }
    }
    Rule {
        conds,
        action,
        text: r.text.clone(),
        handle: Some(r.handle),
    }
}

/// One `{"match": {op, left, right}}`.
fn nft_match(m: &Value) -> Cond {
    let op = m["op"].as_str().unwrap_or("==");
    let cond = match_left(&m["left"], &m["right"], op);
    match (op, cond) {
        ("!=", c) => Cond::Not(Box::new(c)),
        (_, c) => c,
    }
}

fn match_left(left: &Value, right: &Value, op: &str) -> Cond {
    let unknown = || Cond::Unknown(format!("{left} {op} {right}"));
    if !matches!(op, "==" | "!=" | "in") {
        return unknown();
    }
    if let Some(meta) = left.get("meta") {
        return match meta["key"].as_str().unwrap_or("") {
            "iifname" | "iif" => Cond::InDev(
                strings(right)
                    .map(|v| v.iter().map(|d| nft_wildcard(d)).collect())
                    .unwrap_or_default(),
            ),
            "oifname" | "oif" => Cond::OutDev(
                strings(right)
                    .map(|v| v.iter().map(|d| nft_wildcard(d)).collect())
                    .unwrap_or_default(),
            ),
            "l4proto" => Cond::Tcp(strings_or_numbers(right).iter().any(|p| p == "tcp" || p == "6")),
            "nfproto" => Cond::always(strings(right).is_some_and(|v| v.iter().any(|p| p == "ipv4"))),
            "protocol" => Cond::always(strings(right).is_some_and(|v| v.iter().any(|p| p == "ip"))),
            _ => unknown(),
        };
    }
    if let Some(p) = left.get("payload") {
        let (proto, field) = (
            p["protocol"].as_str().unwrap_or(""),
            p["field"].as_str().unwrap_or(""),
        );
        return match (proto, field) {
            ("ip", "saddr") => addr_set(right).map(Cond::Src).unwrap_or_else(unknown),
            ("ip", "daddr") => addr_set(right).map(Cond::Dst).unwrap_or_else(unknown),
            ("ip", "protocol") => Cond::Tcp(strings_or_numbers(right).iter().any(|p| p == "tcp" || p == "6")),
            ("tcp" | "th", "dport") => port_set(right).map(Cond::DPort).unwrap_or_else(unknown),
            ("tcp" | "th", "sport") => port_set(right).map(Cond::SPort).unwrap_or_else(unknown),
            ("tcp", "flags") => {
                let bits = nft_flags(right);
                if op == "in" {
                    Cond::FlagsAny(bits)
                } else {
                    Cond::Flags {
                        mask: flags::ALL,
                        cmp: bits,
                    }
                }
            }
            ("udp" | "icmp" | "sctp" | "udplite", _) => Cond::Tcp(false),
            _ => unknown(),
        };
    }
    if let Some(and) = left.get("&").and_then(Value::as_array)
        && and.len() == 2
        && and[0]["payload"]["field"] == "flags"
        && and[0]["payload"]["protocol"] == "tcp"
    {
        return Cond::Flags {
            mask: nft_flags(&and[1]),
            cmp: nft_flags(right),
        };
    }
    if left["meta"]["key"] == "mark" || left.get("&").is_some_and(|a| a[0]["meta"]["key"] == "mark") {
        let value = right.as_u64().map(|v| v as u32);
        let mask = left["&"][1].as_u64().map_or(u32::MAX, |m| m as u32);
        return value.map_or_else(unknown, |value| Cond::Mark { value, mask });
    }
    if left["ct"]["key"] == "state" {
        return Cond::CtState(
            strings(right)
                .unwrap_or_default()
                .iter()
                .map(|s| s.to_ascii_uppercase())
                .collect(),
        );
    }
    unknown()
}

/// What an nft `mangle` statement changes: `meta mark set`, `ct zone set`, `ip ttl set`,
/// `ip dscp set cs1` (E2B v2's `postroute_mangle`) ...
fn mangle_effect(val: &Value) -> Effect {
    let key = &val["key"];
    let num = val["value"].as_u64();
    if key["meta"]["key"] == "mark" {
        Effect::Mark(num.map(|v| v as u32))
    } else if key["ct"]["key"] == "zone" {
        Effect::CtZone(num.and_then(|v| u16::try_from(v).ok()))
    } else if key["payload"]["field"] == "ttl" {
        Effect::Ttl(num.and_then(|v| u8::try_from(v).ok()))
    } else if key["ct"]["key"] == "mark" {
        Effect::Other("ct mark".into())
    } else {
        match mangle_key(key) {
            Some(k) => Effect::Other(k),
            None => Effect::Other("mangle".into()),
        }
    }
}

/// The field a `mangle` statement writes, as nft prints it (`ip dscp`, `meta mark`, `ct
/// mark`); None for a key this model does not know (a raw payload, a future expression).
fn mangle_key(key: &Value) -> Option<String> {
    let name = |v: &Value, k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(p) = key.get("payload") {
        return Some(format!("{} {}", name(p, "protocol")?, name(p, "field")?));
    }
    if let Some(m) = key.get("meta") {
        return Some(format!("meta {}", name(m, "key")?));
    }
    if let Some(c) = key.get("ct") {
        return Some(format!("ct {}", name(c, "key")?));
    }
    None
}

/// A `mangle` statement as nft prints it: `ip dscp set cs1`, `meta mark set 1`; `mangle`
/// when the key is not known.
fn mangle_text(val: &Value) -> String {
    match mangle_key(&val["key"]) {
        Some(k) if !val["value"].is_null() => format!("{k} set {}", expr_text(&val["value"])),
        _ => "mangle".into(),
    }
}

/// nft's `eth*` → iptables' `eth+`.
fn nft_wildcard(d: &str) -> String {
    match d.strip_suffix('*') {
        Some(p) if !p.ends_with('\\') => format!("{p}+"),
        _ => d.to_string(),
    }
}

/// A string, a list of strings, or a set of strings.
fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) if !s.starts_with('@') => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        Value::Object(o) => o.get("set").and_then(strings),
        _ => None,
    }
}

fn strings_or_numbers(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().flat_map(strings_or_numbers).collect(),
        Value::Object(o) => o.get("set").map(strings_or_numbers).unwrap_or_default(),
        Value::Number(n) => vec![n.to_string()],
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn nft_flags(v: &Value) -> u8 {
    match v {
        Value::String(s) => flag_bit(s),
        Value::Array(a) => a.iter().map(nft_flags).fold(0, |x, y| x | y),
        Value::Object(o) => o.get("|").map(nft_flags).unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0) as u8,
        _ => 0,
    }
}

/// Addresses, prefixes, ranges (as their covering prefixes: only used to match one address)
/// and sets of them. None for what the model cannot read (named sets).
fn addr_set(v: &Value) -> Option<Vec<(Ipv4Addr, u8)>> {
    match v {
        Value::String(s) => Some(vec![(s.parse().ok()?, 32)]),
        Value::Array(a) => a
            .iter()
            .map(addr_set)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        Value::Object(o) => {
            if let Some(set) = o.get("set") {
                return addr_set(set);
            }
            if let Some(p) = o.get("prefix") {
                return Some(vec![(
                    p["addr"].as_str()?.parse().ok()?,
                    p["len"].as_u64()? as u8,
                )]);
            }
            None
        }
        _ => None,
    }
}

fn port_set(v: &Value) -> Option<Vec<(u16, u16)>> {
    match v {
        Value::Number(n) => {
            let p = n.as_u64()? as u16;
            Some(vec![(p, p)])
        }
        Value::Array(a) => a
            .iter()
            .map(port_set)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        Value::Object(o) => {
            if let Some(set) = o.get("set") {
                return port_set(set);
            }
            let r = o.get("range")?.as_array()?;
            Some(vec![(r.first()?.as_u64()? as u16, r.get(1)?.as_u64()? as u16)])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT: &str = r#"{"nftables": [
 {"metainfo": {"version": "1.0.6"}},
 {"table": {"family": "ip", "name": "lab-fault", "handle": 1}},
 {"chain": {"family": "ip", "table": "lab-fault", "name": "pre", "handle": 1, "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "lab-fault", "chain": "pre", "handle": 2, "expr": [
   {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 49983}},
   {"counter": {"packets": 4, "bytes": 240}}, {"drop": null}]}}
]}"#;

    #[test]
    fn nft_chains_rules_and_counters() {
        let set = NftRuleset::parse(NFT).unwrap();
        assert_eq!(set.chains.len(), 1);
        let c = &set.chains[0];
        assert_eq!((c.hook.as_deref(), c.priority), (Some("prerouting"), Some(0)));
        assert_eq!(c.rules[0].packets, Some(4));
        assert_eq!(c.rules[0].verdict.as_deref(), Some("drop"));
        assert_eq!(c.rules[0].text, "tcp dport 49983 counter drop");
    }

    /// E2B v2's egress DSCP chain as the lab's `nft -j list table inet slot-firewall` prints
    /// it (nft 1.0.6; dscp.go's rule with `SANDBOX_EGRESS_DSCP=8`), with a drop put in front.
    const POSTROUTE_MANGLE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "slot-firewall", "handle": 1}},
      {"chain": {"family": "inet", "table": "slot-firewall", "name": "postroute_mangle", "handle": 1, "type": "filter", "hook": "postrouting", "prio": -150, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "postroute_mangle", "handle": 3, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "sport"}}, "right": 49983}},
        {"drop": null}]}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "postroute_mangle", "handle": 2, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
        {"mangle": {"key": {"payload": {"protocol": "ip", "field": "dscp"}}, "value": "cs1"}}]}}]}"#;

    #[test]
    fn e2b_v2_postroute_mangle_chain() {
        let set = NftRuleset::parse(POSTROUTE_MANGLE).unwrap();
        let c = &set.chains[0];
        assert_eq!(
            (c.name.as_str(), c.hook.as_deref(), c.priority, c.kind.as_deref()),
            (
                "postroute_mangle",
                Some("postrouting"),
                Some(-150),
                Some("filter")
            )
        );
        let [drop, dscp] = &c.rules[..] else {
            panic!("{:?}", c.rules)
        };
        assert_eq!(
            (drop.text.as_str(), drop.verdict.as_deref()),
            ("oifname eth0 tcp sport 49983 drop", Some("drop"))
        );
        assert_eq!(
            (dscp.text.as_str(), dscp.verdict.as_deref()),
            ("oifname eth0 ip dscp set cs1", None)
        );
        let tables = set.tables(&[]);
        let chain = &tables[0].chains[0];
        assert_eq!(chain.hook, Some(HookPoint::Postrouting));
        assert_eq!(chain.priority, -150);
        assert!(!chain.is_nat && !chain.policy_drop);
        assert_eq!(chain.rules[0].action, Action::Drop);
        assert_eq!(chain.rules[0].handle, Some(3));
        assert!(
            matches!(&chain.rules[0].conds[..], [Cond::OutDev(d), Cond::SPort(p)] if d == &["eth0"] && p == &[(49983, 49983)])
        );
        // The mark is a change, not a verdict: packets go on to the next rule.
        assert_eq!(
            chain.rules[1].action,
            Action::Set(Effect::Other("ip dscp".into()))
        );
        assert!(matches!(&chain.rules[1].conds[..], [Cond::OutDev(d)] if d == &["eth0"]));
    }

    #[test]
    fn mangle_statements_are_named_and_unknown_ones_do_not_fail() {
        let rule = |stmt: &str| {
            let json = format!(
                r#"{{"nftables": [{{"table": {{"family": "inet", "name": "t"}}}},
                  {{"chain": {{"family": "inet", "table": "t", "name": "c", "type": "filter", "hook": "postrouting", "prio": -150}}}},
                  {{"rule": {{"family": "inet", "table": "t", "chain": "c", "handle": 1, "expr": [{stmt}]}}}}]}}"#
            );
            let set = NftRuleset::parse(&json).unwrap();
            let model = set.tables(&[])[0].chains[0].rules[0].clone();
            (set.chains[0].rules[0].text.clone(), model.action)
        };
        let other = |w: &str| Action::Set(Effect::Other(w.into()));
        assert_eq!(
            rule(r#"{"mangle": {"key": {"payload": {"protocol": "ip6", "field": "dscp"}}, "value": 8}}"#),
            ("ip6 dscp set 8".into(), other("ip6 dscp"))
        );
        assert_eq!(
            rule(r#"{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}"#),
            ("meta mark set 1".into(), Action::Set(Effect::Mark(Some(1))))
        );
        assert_eq!(
            rule(r#"{"mangle": {"key": {"meta": {"key": "priority"}}, "value": "1:2"}}"#),
            ("meta priority set 1:2".into(), other("meta priority"))
        );
        // A raw payload write (`@nh,8,8 set 1`) or a key of a later nft: still one rule.
        assert_eq!(
            rule(r#"{"mangle": {"key": {"payload": {"base": "nh", "offset": 8, "len": 8}}, "value": 1}}"#),
            ("mangle".into(), other("mangle"))
        );
        assert_eq!(
            rule(r#"{"mangle": {"key": {"future": {"x": 1}}, "value": {"y": [1]}}}"#),
            ("mangle".into(), other("mangle"))
        );
        assert_eq!(rule(r#"{"mangle": null}"#), ("mangle".into(), other("mangle")));
    }

    #[test]
    fn named_sets_and_their_elements() {
        // As nft 1.0.6 prints E2B v2's host firewall sets (the lab's).
        let json = r#"{"nftables": [{"table": {"family": "inet", "name": "v2-host-firewall", "handle": 9}},
          {"set": {"family": "inet", "name": "v2_veths", "table": "v2-host-firewall", "type": "ifname", "handle": 4, "elem": ["veth-2", "veth-4"]}},
          {"set": {"family": "inet", "name": "v2_host_cidrs", "table": "v2-host-firewall", "type": "ipv4_addr", "handle": 5, "flags": ["interval"],
                   "elem": ["10.11.0.2", {"prefix": {"addr": "10.11.1.0", "len": 24}}, {"range": ["10.11.2.1", "10.11.2.9"]},
                            {"elem": {"val": "10.11.3.3", "counter": {"packets": 0, "bytes": 0}}}]}},
          {"set": {"family": "inet", "name": "empty", "table": "v2-host-firewall", "type": "ifname", "handle": 6}}]}"#;
        let r = NftRuleset::parse(json).unwrap();
        let veths = r.set("inet", "v2-host-firewall", "v2_veths").unwrap();
        assert!(veths.contains("veth-2") && !veths.contains("veth-1"));
        let cidrs = r.set("inet", "v2-host-firewall", "v2_host_cidrs").unwrap();
        for inside in ["10.11.0.2", "10.11.1.77", "10.11.2.5", "10.11.3.3"] {
            assert!(cidrs.contains(inside), "{inside} in {:?}", cidrs.elements);
        }
        assert!(!cidrs.contains("10.11.0.3") && !cidrs.contains("10.11.2.10"));
        assert!(
            r.set("inet", "v2-host-firewall", "empty")
                .unwrap()
                .elements
                .is_empty()
        );
    }

    #[test]
    fn unknown_items_and_odd_values_do_not_fail_the_parse() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.9", "json_schema_version": 1}},
          {"set": {"family": "inet", "name": "v2_veths", "table": "t", "type": "ifname", "handle": 3}},
          {"table": {"family": "inet", "name": "t", "handle": 1}},
          {"chain": {"family": "inet", "table": "t", "name": "c", "handle": 2, "type": "filter", "hook": "input", "prio": {"weird": 1}, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 4, "expr": [{"future-statement": {"x": [1, {"y": null}]}}]}},
          {"rule": {"family": "inet", "table": "t", "chain": "missing", "handle": 5, "expr": []}},
          {"flowtable": {"family": "inet", "name": "f"}}]}"#;
        let set = NftRuleset::parse(json).unwrap();
        assert_eq!(set.chains[0].priority, None);
        assert_eq!(set.chains[0].rules.len(), 1);
        assert_eq!(set.tables(&[]).len(), 1);
        assert!(NftRuleset::parse("not json").is_err());
        assert!(NftRuleset::parse(r#"{"nftables": [{"rule": {"family": 1}}]}"#).is_err());
    }
}
