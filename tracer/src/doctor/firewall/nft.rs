//! `nft -j list ruleset` → the rule model.
use std::{collections::HashMap, net::Ipv4Addr};

use serde_json::Value;

use super::{Action, Chain, Cond, HookPoint, Rule, Source, Table, flag_bit, flags};

/// The native nftables tables of a ruleset, leaving out the tables iptables-nft owns (their
/// rules are read from iptables-nft-save, which prints every match).
pub fn from_nft_json(json: &str, iptables_nft_tables: &[String]) -> anyhow::Result<Vec<Table>> {
    let v: Value = serde_json::from_str(json).map_err(|e| anyhow::anyhow!("parse nft JSON: {e}"))?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let mut tables: Vec<Table> = Vec::new();
    for item in &items {
        if let Some(t) = item.get("table") {
            let (family, name) = (str_of(t, "family"), str_of(t, "name"));
            if !matches!(family.as_str(), "ip" | "inet" | "netdev") {
                continue;
            }
            if family == "ip" && iptables_nft_tables.contains(&name) {
                continue;
            }
            tables.push(Table {
                source: Source::Nft,
                family,
                name,
                chains: Vec::new(),
            });
        }
    }
    for item in &items {
        if let Some(c) = item.get("chain")
            && let Some(t) = find_table(&mut tables, c)
        {
            t.chains.push(nft_chain(c));
        }
    }
    let texts = rule_texts(json);
    for item in &items {
        if let Some(r) = item.get("rule")
            && let Some(t) = find_table(&mut tables, r)
            && let Some(c) = t.chains.iter_mut().find(|c| c.name == str_of(r, "chain"))
        {
            let mut rule = nft_rule(r);
            let key = (t.family.clone(), t.name.clone(), c.name.clone(), rule.handle);
            rule.text = texts.get(&key).cloned().unwrap_or_default();
            c.rules.push(rule);
        }
    }
    Ok(tables)
}

/// Rule texts as `rules::parse_nft` renders them, by (family, table, chain, handle).
fn rule_texts(json: &str) -> HashMap<(String, String, String, Option<u64>), String> {
    crate::rules::parse_nft(json)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| {
            c.rules.into_iter().map(move |r| {
                (
                    (c.family.clone(), c.table.clone(), c.name.clone(), Some(r.handle)),
                    r.text,
                )
            })
        })
        .collect()
}

fn find_table<'t>(tables: &'t mut [Table], v: &Value) -> Option<&'t mut Table> {
    let (family, table) = (str_of(v, "family"), str_of(v, "table"));
    tables.iter_mut().find(|t| t.family == family && t.name == table)
}

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

fn nft_chain(c: &Value) -> Chain {
    let hook = c["hook"].as_str().and_then(HookPoint::from_nft);
    let device = match &c["dev"] {
        Value::String(d) => Some(d.clone()),
        _ => None,
    };
    Chain {
        name: str_of(c, "name"),
        hook,
        priority: c["prio"].as_i64().unwrap_or(0) as i32,
        is_nat: c["type"] == "nat",
        policy_drop: c["policy"] == "drop",
        device,
        rules: Vec::new(),
    }
}

fn nft_rule(r: &Value) -> Rule {
    let exprs = r["expr"].as_array().cloned().unwrap_or_default();
    let mut conds = Vec::new();
    let mut action = Action::Continue;
    for e in &exprs {
        if let Some(m) = e.get("match") {
            conds.push(nft_match(m));
            continue;
        }
        let Some((k, val)) = e.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
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
        text: String::new(),
        handle: r["handle"].as_u64(),
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
            "nfproto" => Cond::from_bool(strings(right).is_some_and(|v| v.iter().any(|p| p == "ipv4"))),
            "protocol" => Cond::from_bool(strings(right).is_some_and(|v| v.iter().any(|p| p == "ip"))),
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

impl Cond {
    fn from_bool(b: bool) -> Self {
        if b {
            Self::True
        } else {
            Self::Not(Box::new(Self::True))
        }
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
