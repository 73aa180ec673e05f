//! Firewall rulesets as the tools print them: `iptables-save -c` (legacy and nft backends)
//! and `nft -j list ruleset`. Parsing is pure; [`read_iptables`]/[`read_nft`] run the tools
//! inside a namespace, read-only.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::netns::Netns;

/// Which iptables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn save_command(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft-save",
            Self::Legacy => "iptables-legacy-save",
        }
    }
}

/// One `iptables-save -c` dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptSave {
    pub tables: Vec<IptTable>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptTable {
    pub name: String,
    pub chains: Vec<IptChain>,
    pub rules: Vec<IptRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptChain {
    pub name: String,
    /// ACCEPT/DROP for built-in chains, None (`-`) for user chains.
    pub policy: Option<String>,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptRule {
    pub chain: String,
    pub packets: u64,
    /// The rule as iptables-save prints it, without counters: `-A FORWARD -i eth0 ... -j DROP`.
    pub text: String,
    /// The `-j` target (DROP, ACCEPT, DNAT, a user chain, ...).
    pub target: Option<String>,
}

impl IptSave {
    pub fn parse(text: &str) -> Result<Self> {
        let mut tables: Vec<IptTable> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                tables.push(IptTable {
                    name: name.to_string(),
                    ..Default::default()
                });
                continue;
            }
            let Some(table) = tables.last_mut() else {
                bail!("line {}: rule outside a table: {line}", n + 1);
            };
            if let Some(rest) = line.strip_prefix(':') {
                table.chains.push(parse_chain(rest));
            } else {
                let (packets, rule) = split_counters(line);
                let mut words = rule.split_whitespace();
                if words.next() != Some("-A") {
                    continue;
                }
                let chain = words.next().unwrap_or_default().to_string();
                let target = rule
                    .split_whitespace()
                    .skip_while(|w| *w != "-j" && *w != "-g")
                    .nth(1)
                    .map(str::to_string);
                table.rules.push(IptRule {
                    chain,
                    packets,
                    text: rule.to_string(),
                    target,
                });
            }
        }
        Ok(Self { tables })
    }

    pub fn table(&self, name: &str) -> Option<&IptTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// True when the dump holds any rule or non-ACCEPT policy (i.e. this backend is in use).
    pub fn in_use(&self) -> bool {
        self.tables
            .iter()
            .any(|t| !t.rules.is_empty() || t.chains.iter().any(|c| c.policy.as_deref() == Some("DROP")))
    }
}

/// `FORWARD DROP [3:180]` → chain.
fn parse_chain(rest: &str) -> IptChain {
    let mut words = rest.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let policy = words.next().filter(|p| *p != "-").map(str::to_string);
    let packets = words.next().map(|c| split_counters(c).0).unwrap_or(0);
    IptChain {
        name,
        policy,
        packets,
    }
}

/// `[12:720] -A ...` → (12, "-A ..."); no counters → (0, line).
fn split_counters(line: &str) -> (u64, &str) {
    if let Some(rest) = line.strip_prefix('[')
        && let Some((counts, rule)) = rest.split_once(']')
    {
        let packets = counts.split(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        return (packets, rule.trim());
    }
    (0, line)
}

/// A rule or chain policy whose packet counter grew between two dumps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterHit {
    pub table: String,
    pub chain: String,
    /// Rule text, or `-P CHAIN DROP` for a chain policy.
    pub rule: String,
    pub target: String,
    pub delta: u64,
}

/// Rules (and chain policies) whose counters grew from `before` to `after`, in `table`.
pub fn ipt_hits(before: &IptSave, after: &IptSave, table: &str) -> Vec<CounterHit> {
    let (Some(b), Some(a)) = (before.table(table), after.table(table)) else {
        return Vec::new();
    };
    let mut old: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for r in &b.rules {
        old.entry((&r.chain, &r.text)).or_default().push(r.packets);
    }
    let mut hits = Vec::new();
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in &a.rules {
        let k = seen.entry((&r.chain, &r.text)).or_default();
        let prev = old
            .get(&(r.chain.as_str(), r.text.as_str()))
            .and_then(|v| v.get(*k))
            .copied()
            .unwrap_or(0);
        *k += 1;
        if r.packets > prev {
            hits.push(CounterHit {
                table: table.into(),
                chain: r.chain.clone(),
                rule: r.text.clone(),
                target: r.target.clone().unwrap_or_default(),
                delta: r.packets - prev,
            });
        }
    }
    for c in &a.chains {
        let prev = b
            .chains
            .iter()
            .find(|x| x.name == c.name)
            .map(|x| x.packets)
            .unwrap_or(0);
        if let Some(policy) = &c.policy
            && c.packets > prev
        {
            hits.push(CounterHit {
                table: table.into(),
                chain: c.name.clone(),
                rule: format!("-P {} {policy}", c.name),
                target: policy.clone(),
                delta: c.packets - prev,
            });
        }
    }
    hits
}

/// One base chain of `nft list ruleset`, with its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NftChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// Hook name for base chains (prerouting, input, forward, output, postrouting).
    pub hook: Option<String>,
    pub priority: Option<i32>,
    pub policy: Option<String>,
    pub rules: Vec<NftRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NftRule {
    pub handle: u64,
    /// Packet count of a `counter` statement, if the rule has one.
    pub packets: Option<u64>,
    /// Verdict of the rule: accept, drop, jump X, ...
    pub verdict: Option<String>,
    /// The rule as nft prints it (reconstructed from the JSON's expressions).
    pub text: String,
}

/// Parses `nft -j list ruleset`.
pub fn parse_nft(json: &str) -> Result<Vec<NftChain>> {
    let v: serde_json::Value = serde_json::from_str(json).context("parse nft JSON")?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let mut chains: Vec<NftChain> = Vec::new();
    for item in &items {
        if let Some(c) = item.get("chain") {
            chains.push(NftChain {
                family: str_of(c, "family"),
                table: str_of(c, "table"),
                name: str_of(c, "name"),
                hook: c["hook"].as_str().map(str::to_string),
                priority: c["prio"].as_i64().map(|p| p as i32),
                policy: c["policy"].as_str().map(str::to_string),
                rules: Vec::new(),
            });
        }
    }
    for item in &items {
        let Some(r) = item.get("rule") else { continue };
        let key = (str_of(r, "family"), str_of(r, "table"), str_of(r, "chain"));
        if let Some(chain) = chains
            .iter_mut()
            .find(|c| (c.family.clone(), c.table.clone(), c.name.clone()) == key)
        {
            chain.rules.push(nft_rule(r));
        }
    }
    Ok(chains)
}

fn str_of(v: &serde_json::Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

fn nft_rule(r: &serde_json::Value) -> NftRule {
    let exprs = r["expr"].as_array().cloned().unwrap_or_default();
    let mut packets = None;
    let mut verdict = None;
    let mut parts = Vec::new();
    for e in &exprs {
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
        handle: r["handle"].as_u64().unwrap_or(0),
        packets,
        verdict,
        text: parts.join(" ").replace(" == ", " "),
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

/// nft rules whose counters grew from `before` to `after` (matched by table, chain, handle).
pub fn nft_hits(before: &[NftChain], after: &[NftChain]) -> Vec<(NftChain, NftRule, u64)> {
    let mut hits = Vec::new();
    for c in after {
        let old = before
            .iter()
            .find(|b| b.family == c.family && b.table == c.table && b.name == c.name);
        for r in &c.rules {
            let Some(now) = r.packets else { continue };
            let prev = old
                .and_then(|o| o.rules.iter().find(|x| x.handle == r.handle))
                .and_then(|x| x.packets)
                .unwrap_or(0);
            if now > prev {
                hits.push((c.clone(), r.clone(), now - prev));
            }
        }
    }
    hits
}

/// Reads `iptables-save -c` of one backend in a namespace. None when that iptables is not
/// installed.
pub fn read_iptables(ns: &Netns, backend: Backend) -> Result<Option<IptSave>> {
    let out = match ns.command(backend.save_command()).arg("-c").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context(backend.save_command()),
    };
    if !out.status.success() {
        // e.g. legacy tables not loaded in this kernel: nothing to read.
        return Ok(None);
    }
    Ok(Some(IptSave::parse(&String::from_utf8_lossy(&out.stdout))?))
}

/// Reads `nft -j list ruleset` in a namespace. None when nft is not installed.
pub fn read_nft(ns: &Netns) -> Result<Option<Vec<NftChain>>> {
    let out = match ns.command("nft").args(["-j", "list", "ruleset"]).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("nft"),
    };
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(parse_nft(&String::from_utf8_lossy(&out.stdout))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [10:600]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [10:600]
:LAB-GUARD - [0:0]
[0:0] -A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP
[0:0] -A FORWARD -i eth0 -j LAB-GUARD
[0:0] -A LAB-GUARD -p tcp -m tcp --dport 49983 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [1:60]
[1:60] -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21
COMMIT
";

    #[test]
    fn parses_tables_chains_rules_and_targets() {
        let s = IptSave::parse(BEFORE).unwrap();
        let f = s.table("filter").unwrap();
        assert_eq!(f.chains.len(), 4);
        assert_eq!(f.chains[3].policy, None);
        assert_eq!(
            f.rules[0].text,
            "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP"
        );
        assert_eq!(f.rules[0].target.as_deref(), Some("DROP"));
        assert_eq!(f.rules[1].target.as_deref(), Some("LAB-GUARD"));
        let nat = s.table("nat").unwrap();
        assert_eq!(nat.rules[0].packets, 1);
        assert!(s.in_use());
    }

    #[test]
    fn counter_deltas_name_the_rule() {
        let before = IptSave::parse(BEFORE).unwrap();
        let after = IptSave::parse(&BEFORE.replace(
            "[0:0] -A FORWARD -i eth0 -o tap0",
            "[3:180] -A FORWARD -i eth0 -o tap0",
        ))
        .unwrap();
        let hits = ipt_hits(&before, &after, "filter");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].chain, "FORWARD");
        assert_eq!(hits[0].target, "DROP");
        assert_eq!(hits[0].delta, 3);
    }

    #[test]
    fn policy_drops_and_user_chains_are_hits_too() {
        let before = IptSave::parse(&BEFORE.replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]")).unwrap();
        let after = IptSave::parse(
            &BEFORE
                .replace(":FORWARD ACCEPT [0:0]", ":FORWARD DROP [2:120]")
                .replace("[0:0] -A LAB-GUARD", "[1:60] -A LAB-GUARD")
                .replace(
                    "[0:0] -A FORWARD -i eth0 -j LAB-GUARD",
                    "[1:60] -A FORWARD -i eth0 -j LAB-GUARD",
                ),
        )
        .unwrap();
        let hits = ipt_hits(&before, &after, "filter");
        let rules: Vec<&str> = hits.iter().map(|h| h.rule.as_str()).collect();
        assert!(rules.contains(&"-P FORWARD DROP"), "{rules:?}");
        assert!(
            rules.contains(&"-A LAB-GUARD -p tcp -m tcp --dport 49983 -j DROP"),
            "{rules:?}"
        );
    }

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
        let chains = parse_nft(NFT).unwrap();
        assert_eq!(chains.len(), 1);
        let c = &chains[0];
        assert_eq!((c.hook.as_deref(), c.priority), (Some("prerouting"), Some(0)));
        assert_eq!(c.rules[0].packets, Some(4));
        assert_eq!(c.rules[0].verdict.as_deref(), Some("drop"));
        assert_eq!(c.rules[0].text, "tcp dport 49983 counter drop");
        let before = parse_nft(&NFT.replace("\"packets\": 4", "\"packets\": 1")).unwrap();
        let hits = nft_hits(&before, &chains);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].2, 3);
    }
}
