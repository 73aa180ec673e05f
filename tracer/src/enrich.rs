//! After a verdict: name the exact rule of a netfilter drop, read-only, by comparing rule
//! counters with a baseline taken when the trace started (iptables keeps counters on every
//! rule, legacy and nft backends alike; native nft rules only with `counter`).
use std::collections::HashMap;

use crate::{
    hop::Hook,
    netns::Netns,
    rules::{self, Backend, IptSave, NftChain},
    verdict::DropInfo,
};

/// Rulesets of the path's namespaces when the trace started.
#[derive(Default)]
pub struct RuleBaseline {
    by_ns: HashMap<u32, Rulesets>,
}

#[derive(Default, Clone)]
struct Rulesets {
    ipt: Vec<(Backend, IptSave)>,
    nft: Vec<NftChain>,
}

fn read(ns: &Netns) -> Rulesets {
    let mut r = Rulesets::default();
    for b in [Backend::Nft, Backend::Legacy] {
        if let Ok(Some(s)) = rules::read_iptables(ns, b) {
            r.ipt.push((b, s));
        }
    }
    if let Ok(Some(n)) = rules::read_nft(ns) {
        r.nft = n;
    }
    r
}

impl RuleBaseline {
    /// Reads the rulesets of `namespaces` (in parallel: it runs while programs attach).
    pub fn capture(namespaces: &[Netns]) -> Self {
        let handles: Vec<_> = namespaces
            .iter()
            .cloned()
            .map(|ns| std::thread::spawn(move || (ns.inode, read(&ns))))
            .collect();
        Self {
            by_ns: handles.into_iter().filter_map(|h| h.join().ok()).collect(),
        }
    }

    /// Priorities at which hook functions exist in namespace `ns`, per hook number: its nft
    /// base chains (iptables-nft tables are nft tables too), the legacy iptables tables, and
    /// conntrack, which may be loaded without any rule.
    pub fn hook_priorities(&self, ns: u32) -> [Vec<i32>; tracer_common::hook::COUNT] {
        let mut out: [Vec<i32>; tracer_common::hook::COUNT] = Default::default();
        let all = [
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
        ];
        let push = |out: &mut [Vec<i32>; 5], hook: Hook, prio: i32| out[hook as usize].push(prio);
        for (name, prio, hooks) in crate::path::STANDARD {
            if *name == "conntrack" {
                hooks.iter().for_each(|h| push(&mut out, *h, *prio));
            }
        }
        let Some(r) = self.by_ns.get(&ns) else { return out };
        for c in &r.nft {
            if let (Some(h), Some(p)) = (
                all.iter().find(|h| Some(h.nft_name()) == c.hook.as_deref()),
                c.priority,
            ) {
                push(&mut out, *h, p);
            }
        }
        for (backend, save) in &r.ipt {
            if *backend != Backend::Legacy {
                continue;
            }
            for table in &save.tables {
                for (name, prio, hooks) in crate::path::STANDARD {
                    if *name == table.name {
                        hooks.iter().for_each(|h| push(&mut out, *h, *prio));
                    }
                }
            }
        }
        out
    }

    /// Fills table, chain and rule of a netfilter drop in namespace `ns`.
    pub fn resolve(&self, ns: &Netns, d: &mut DropInfo) {
        let Some(hook) = d.hook else { return };
        let before = self.by_ns.get(&ns.inode).cloned().unwrap_or_default();
        let after = read(ns);
        if resolve_iptables(&before, &after, hook, d) {
            return;
        }
        resolve_nft(&before, &after, hook, d);
    }
}

const BUILTIN: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// The iptables rule (or chain policy) that counted the dropped packets.
fn resolve_iptables(before: &Rulesets, after: &Rulesets, hook: Hook, d: &mut DropInfo) -> bool {
    let mut best: Option<rules::CounterHit> = None;
    for (backend, now) in &after.ipt {
        let Some(old) = before.ipt.iter().find(|(b, _)| b == backend).map(|(_, s)| s) else {
            continue;
        };
        let tables: Vec<String> = match &d.table {
            Some(t) => vec![t.clone()],
            None => now.tables.iter().map(|t| t.name.clone()).collect(),
        };
        for table in tables {
            for hit in rules::ipt_hits(old, now, &table) {
                let drops = matches!(hit.target.as_str(), "DROP" | "REJECT");
                let on_hook = hit.chain == hook.name() || !BUILTIN.contains(&hit.chain.as_str());
                if drops && on_hook && best.as_ref().is_none_or(|b| hit.delta > b.delta) {
                    best = Some(hit);
                }
            }
        }
    }
    let Some(hit) = best else { return false };
    d.table = Some(hit.table);
    d.chain = Some(hit.chain);
    d.rule = Some(hit.rule);
    true
}

/// Native nft: the counted rule, else the base chain with a drop, and a plain statement that
/// the rule itself needs --nft-trace.
fn resolve_nft(before: &Rulesets, after: &Rulesets, hook: Hook, d: &mut DropInfo) {
    let (lo, hi) = d.priority_window.unwrap_or((i32::MIN, i32::MAX));
    let in_window = |c: &NftChain| {
        c.hook.as_deref() == Some(hook.nft_name())
            && c.priority.is_some_and(|p| p > lo && (p < hi || hi == i32::MAX))
    };
    let base: Vec<&NftChain> = after.nft.iter().filter(|c| in_window(c)).collect();
    let tables: Vec<(&str, &str)> = base
        .iter()
        .map(|c| (c.family.as_str(), c.table.as_str()))
        .collect();
    let hits = rules::nft_hits(&before.nft, &after.nft);
    let hit = hits
        .iter()
        .filter(|(c, r, _)| {
            tables.contains(&(c.family.as_str(), c.table.as_str())) && is_drop(r.verdict.as_deref())
        })
        .max_by_key(|(_, _, delta)| *delta);
    if let Some((c, r, _)) = hit {
        d.table = Some(format!("{} {}", c.family, c.table));
        d.chain = Some(c.name.clone());
        d.rule = Some(format!("{} # handle {}", r.text, r.handle));
        return;
    }
    let dropping: Vec<&&NftChain> = base
        .iter()
        .filter(|c| {
            c.policy.as_deref() == Some("drop") || c.rules.iter().any(|r| is_drop(r.verdict.as_deref()))
        })
        .collect();
    if let [c] = dropping.as_slice() {
        d.table = Some(format!("{} {}", c.family, c.table));
        d.chain = Some(c.name.clone());
        d.rule_note = Some(format!(
            "the nft chain {} {} {} (priority {}) drops here, but its rules have no counter: the exact rule cannot be known without a change; rerun with --nft-trace",
            c.family,
            c.table,
            c.name,
            c.priority.unwrap_or(0)
        ));
    } else if d.table.is_none() && !dropping.is_empty() {
        let names: Vec<String> = dropping
            .iter()
            .map(|c| format!("{} {} {}", c.family, c.table, c.name))
            .collect();
        d.rule_note = Some(format!(
            "one of the nft chains {} dropped it; rerun with --nft-trace to name the rule",
            names.join(", ")
        ));
    }
}

fn is_drop(verdict: Option<&str>) -> bool {
    matches!(verdict, Some("drop") | Some("reject"))
}
