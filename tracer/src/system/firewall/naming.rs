//! Naming the exact rule of a netfilter drop, read-only, by comparing rule counters with a
//! baseline taken when the trace started: iptables keeps counters on every rule (legacy and
//! nft backends alike), native nft rules only with `counter`. Without a counter, the chain
//! that drops there is named and the rule is left to `--nft-trace`.
use std::{collections::HashMap, sync::Arc};

use tracer_model::{
    hook::Hook,
    rule::{NftChainRef, RuleName, RuleNote, RuleText},
};

use super::{
    Rulesets,
    iptables::{CounterHit, ipt_hits},
    nft::{NftChain, NftRule},
};

/// Where a drop happened, as the verdict placed it.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub hook: Hook,
    /// The standard table, when the priority window holds only one.
    pub table: Option<&'a str>,
    /// Netfilter priorities between which the packet stopped.
    pub window: Option<(i32, i32)>,
}

/// Rulesets of the path's namespaces when the trace started, by namespace inode.
#[derive(Default, Clone)]
pub struct RuleBaseline {
    by_ns: HashMap<u32, Arc<Rulesets>>,
}

impl RuleBaseline {
    pub fn insert(&mut self, inode: u32, rules: Arc<Rulesets>) {
        self.by_ns.insert(inode, rules);
    }

    pub fn get(&self, inode: u32) -> Option<&Arc<Rulesets>> {
        self.by_ns.get(&inode)
    }

    /// Names the rule of a drop at `place` in namespace `inode`, from the counters of `after`.
    pub fn name(&self, inode: u32, after: &Rulesets, place: Place<'_>) -> RuleName {
        let empty = Rulesets::default();
        let before = self.by_ns.get(&inode).map_or(&empty, |r| r.as_ref());
        name_rule(before, after, place)
    }
}

/// The rule (or chain) whose counters show the drop at `place`.
pub fn name_rule(before: &Rulesets, after: &Rulesets, place: Place<'_>) -> RuleName {
    iptables_rule(before, after, place).unwrap_or_else(|| nft_rule(before, after, place))
}

const BUILTIN: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// The iptables rule (or chain policy) that counted the most dropped packets at the hook.
fn iptables_rule(before: &Rulesets, after: &Rulesets, place: Place<'_>) -> Option<RuleName> {
    let mut best: Option<CounterHit> = None;
    let empty = Default::default();
    for (backend, now) in &after.ipt {
        // A backend first used after the baseline was read counted everything since.
        let old = before
            .ipt
            .iter()
            .find(|(b, _)| b == backend)
            .map_or(&empty, |(_, s)| s);
        let tables: Vec<String> = match place.table {
            Some(t) => vec![t.to_string()],
            None => now.tables.iter().map(|t| t.name.clone()).collect(),
        };
        for table in tables {
            for hit in ipt_hits(old, now, &table) {
                let drops = matches!(hit.target.as_str(), "DROP" | "REJECT");
                let on_hook = hit.chain == place.hook.name() || !BUILTIN.contains(&hit.chain.as_str());
                if drops && on_hook && best.as_ref().is_none_or(|b| hit.delta > b.delta) {
                    best = Some(hit);
                }
            }
        }
    }
    let hit = best?;
    Some(RuleName {
        table: Some(hit.table),
        chain: Some(hit.chain),
        rule: Some(hit.rule),
        note: None,
    })
}

/// Native nft: the counted rule, else the base chain that drops, with a note that the rule
/// itself needs --nft-trace.
fn nft_rule(before: &Rulesets, after: &Rulesets, place: Place<'_>) -> RuleName {
    let (lo, hi) = place.window.unwrap_or((i32::MIN, i32::MAX));
    let in_window = |c: &NftChain| {
        c.hook.as_deref() == Some(place.hook.nft_name())
            && c.priority.is_some_and(|p| p > lo && (p < hi || hi == i32::MAX))
    };
    let chains = |r: &Rulesets| r.nft.as_ref().map(|n| n.chains.clone()).unwrap_or_default();
    let (old, now) = (chains(before), chains(after));
    let base: Vec<&NftChain> = now.iter().filter(|c| in_window(c)).collect();
    let tables: Vec<(&str, &str)> = base
        .iter()
        .map(|c| (c.family.as_str(), c.table.as_str()))
        .collect();
    let hit = nft_hits(&old, &now)
        .into_iter()
        .filter(|(c, r, _)| {
            tables.contains(&(c.family.as_str(), c.table.as_str())) && is_drop(r.verdict.as_deref())
        })
        .max_by_key(|(_, _, delta)| *delta);
    if let Some((c, r, _)) = hit {
        return RuleName {
            table: Some(format!("{} {}", c.family, c.table)),
            chain: Some(c.name.clone()),
            rule: Some(RuleText::Nft {
                text: r.text.clone(),
                handle: r.handle,
            }),
            note: None,
        };
    }
    uncounted_chain(&base, place)
}

/// No counted rule: the one chain at the place that can drop, or the candidates.
fn uncounted_chain(base: &[&NftChain], place: Place<'_>) -> RuleName {
    let dropping: Vec<&&NftChain> = base
        .iter()
        .filter(|c| {
            c.policy.as_deref() == Some("drop") || c.rules.iter().any(|r| is_drop(r.verdict.as_deref()))
        })
        .collect();
    match dropping.as_slice() {
        [c] => RuleName {
            table: Some(format!("{} {}", c.family, c.table)),
            chain: Some(c.name.clone()),
            rule: None,
            note: Some(RuleNote::NoCounter(NftChainRef {
                family: c.family.clone(),
                table: c.table.clone(),
                chain: c.name.clone(),
                priority: c.priority.unwrap_or(0),
            })),
        },
        [] => RuleName::default(),
        _ if place.table.is_none() => RuleName {
            note: Some(RuleNote::OneOf(
                dropping
                    .iter()
                    .map(|c| format!("{} {} {}", c.family, c.table, c.name))
                    .collect(),
            )),
            ..RuleName::default()
        },
        _ => RuleName::default(),
    }
}

/// Every rule (iptables of each backend, nft rules with a counter) whose counter rose from
/// `before` to `after`: what acted on packets in between, for the engine to match against
/// the rules it evaluates.
pub fn counted(before: &Rulesets, after: &Rulesets) -> Vec<tracer_model::engine::inventory::CountedRule> {
    use tracer_model::engine::inventory::CountedRule;
    let mut out = Vec::new();
    let empty = Default::default();
    for (backend, now) in &after.ipt {
        let old = before
            .ipt
            .iter()
            .find(|(b, _)| b == backend)
            .map_or(&empty, |(_, s)| s);
        let source = super::model::Source::Iptables(*backend).label().to_string();
        for table in &now.tables {
            for hit in ipt_hits(old, now, &table.name) {
                let text = match &hit.rule {
                    RuleText::Iptables(t) => t.clone(),
                    other => other.render(),
                };
                out.push(CountedRule {
                    source: source.clone(),
                    family: "ip".into(),
                    table: hit.table,
                    chain: hit.chain,
                    handle: None,
                    text,
                    packets: hit.delta,
                });
            }
        }
    }
    let chains = |r: &Rulesets| r.nft.as_ref().map(|n| n.chains.clone()).unwrap_or_default();
    let (old, now) = (chains(before), chains(after));
    for (c, r, delta) in nft_hits(&old, &now) {
        out.push(CountedRule {
            source: "nft".into(),
            family: c.family.clone(),
            table: c.table.clone(),
            chain: c.name.clone(),
            handle: Some(r.handle),
            text: r.text.clone(),
            packets: delta,
        });
    }
    out
}

/// nft rules whose counters grew from `before` to `after` (matched by table, chain, handle).
fn nft_hits<'a>(before: &[NftChain], after: &'a [NftChain]) -> Vec<(&'a NftChain, &'a NftRule, u64)> {
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
                hits.push((c, r, now - prev));
            }
        }
    }
    hits
}

fn is_drop(verdict: Option<&str>) -> bool {
    matches!(verdict, Some("drop") | Some("reject"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::firewall::{iptables::IptSave, model::Backend, nft::NftRuleset};

    const IPT: &str = "*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP\nCOMMIT\n";

    fn ipt(text: &str) -> Rulesets {
        Rulesets {
            ipt: vec![(Backend::Nft, IptSave::parse(text).unwrap())],
            ..Default::default()
        }
    }

    fn nft(packets: u64, counter: bool) -> Rulesets {
        let counter = if counter {
            format!(r#"{{"counter": {{"packets": {packets}, "bytes": 0}}}},"#)
        } else {
            String::new()
        };
        let json = format!(
            r#"{{"nftables": [{{"table": {{"family": "ip", "name": "lab-fault"}}}},
            {{"chain": {{"family": "ip", "table": "lab-fault", "name": "pre", "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}}}},
            {{"rule": {{"family": "ip", "table": "lab-fault", "chain": "pre", "handle": 2, "expr": [
              {{"match": {{"op": "==", "left": {{"payload": {{"protocol": "tcp", "field": "dport"}}}}, "right": 49983}}}},
              {counter} {{"drop": null}}]}}}}]}}"#
        );
        Rulesets {
            nft: Some(NftRuleset::parse(&json).unwrap()),
            ..Default::default()
        }
    }

    const FORWARD: Place<'static> = Place {
        hook: Hook::Forward,
        table: Some("filter"),
        window: Some((1, 51)),
    };
    const PRE: Place<'static> = Place {
        hook: Hook::Prerouting,
        table: None,
        window: Some((-99, 1)),
    };

    #[test]
    fn an_iptables_rule_is_named_by_its_counter() {
        let after = ipt(&IPT.replace("[0:0] -A", "[3:180] -A"));
        let r = name_rule(&ipt(IPT), &after, FORWARD);
        assert_eq!(r.chain.as_deref(), Some("FORWARD"));
        assert_eq!(
            r.rule.unwrap().render(),
            "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP"
        );
        assert_eq!(name_rule(&ipt(IPT), &ipt(IPT), FORWARD), RuleName::default());
    }

    #[test]
    fn a_rule_added_after_the_baseline_is_named_too() {
        // The watcher's baseline is read when it finds the sandbox; the table came later.
        let after = ipt(&IPT.replace("[0:0] -A", "[3:180] -A"));
        let nat_only = ipt("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        let r = name_rule(&nat_only, &after, FORWARD);
        assert_eq!(r.table.as_deref(), Some("filter"), "{r:?}");
        let r = name_rule(&Rulesets::default(), &after, FORWARD);
        assert_eq!(r.chain.as_deref(), Some("FORWARD"), "{r:?}");
    }

    #[test]
    fn nft_rules_with_a_counter_are_named_and_without_one_their_chain() {
        let r = name_rule(&nft(0, true), &nft(2, true), PRE);
        assert_eq!(r.table.as_deref(), Some("ip lab-fault"));
        assert_eq!(
            r.rule.unwrap().render(),
            "tcp dport 49983 counter drop # handle 2"
        );
        let r = name_rule(&nft(0, false), &nft(0, false), PRE);
        assert_eq!(
            (r.table.as_deref(), r.chain.as_deref()),
            (Some("ip lab-fault"), Some("pre"))
        );
        assert!(r.rule.is_none());
        assert!(matches!(r.note, Some(RuleNote::NoCounter(_))));
    }

    /// E2B v2's slot firewall (rules without counters): its filter at prerouting and its egress
    /// DSCP chain at postrouting share priority -150, and each hook names its own.
    fn slot_firewall(mangle_drop: bool) -> Rulesets {
        let drop = if mangle_drop {
            r#"{"rule": {"family": "inet", "table": "slot-firewall", "chain": "postroute_mangle", "handle": 9, "expr": [
              {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
              {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "sport"}}, "right": 49983}},
              {"drop": null}]}},"#
        } else {
            ""
        };
        let json = format!(
            r#"{{"nftables": [{{"table": {{"family": "inet", "name": "slot-firewall"}}}},
            {{"chain": {{"family": "inet", "table": "slot-firewall", "name": "PREROUTE_FILTER", "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}}},
            {{"chain": {{"family": "inet", "table": "slot-firewall", "name": "preroute_nat", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}}},
            {{"chain": {{"family": "inet", "table": "slot-firewall", "name": "postroute_nat", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}},
            {{"chain": {{"family": "inet", "table": "slot-firewall", "name": "postroute_mangle", "type": "filter", "hook": "postrouting", "prio": -150, "policy": "accept"}}}},
            {{"rule": {{"family": "inet", "table": "slot-firewall", "chain": "PREROUTE_FILTER", "handle": 4, "expr": [
              {{"match": {{"op": "==", "left": {{"meta": {{"key": "iifname"}}}}, "right": "tap0"}}}},
              {{"match": {{"op": "==", "left": {{"payload": {{"protocol": "ip", "field": "daddr"}}}}, "right": {{"prefix": {{"addr": "10.0.0.0", "len": 8}}}}}}}},
              {{"drop": null}}]}}}},
            {drop}
            {{"rule": {{"family": "inet", "table": "slot-firewall", "chain": "postroute_mangle", "handle": 8, "expr": [
              {{"match": {{"op": "==", "left": {{"meta": {{"key": "oifname"}}}}, "right": "eth0"}}}},
              {{"mangle": {{"key": {{"payload": {{"protocol": "ip", "field": "dscp"}}}}, "value": "cs1"}}}}]}}}}]}}"#
        );
        Rulesets {
            nft: Some(NftRuleset::parse(&json).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn a_drop_in_e2b_v2_postroute_mangle_names_that_chain() {
        let at = |hook| Place {
            hook,
            table: Some("mangle"),
            window: Some((-200, -149)),
        };
        let (before, after) = (slot_firewall(true), slot_firewall(true));
        let r = name_rule(&before, &after, at(Hook::Postrouting));
        assert_eq!(
            (r.table.as_deref(), r.chain.as_deref()),
            (Some("inet slot-firewall"), Some("postroute_mangle")),
            "{r:?}"
        );
        assert!(
            matches!(&r.note, Some(RuleNote::NoCounter(c)) if c.chain == "postroute_mangle" && c.priority == -150)
        );
        // The filter at prerouting, same priority, is named for drops there.
        let r = name_rule(&before, &after, at(Hook::Prerouting));
        assert_eq!(r.chain.as_deref(), Some("PREROUTE_FILTER"), "{r:?}");
        // E2B's own DSCP rule never drops: nothing is named for it.
        let plain = slot_firewall(false);
        assert_eq!(
            name_rule(&plain, &plain, at(Hook::Postrouting)),
            RuleName::default()
        );
    }
}
