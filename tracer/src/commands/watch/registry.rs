//! The sandboxes of this node over time. E2B pools namespaces: `ns-N` and its host IP are
//! handed to the next sandbox 3 s after the previous one ends, so a namespace or an address
//! names a slot, not a sandbox. Every entry is one VMM incarnation (pid + start time) with
//! when it started and ended, and an event is attributed to the sandbox that was running
//! there *when the event happened*. Pure: the scanner feeds it.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use crate::discovery::sandbox::Sandbox;

/// Sandboxes remembered at most (running and recently ended).
pub const MAX_SANDBOXES: usize = 8192;
/// How long an ended sandbox is remembered (late events, its incident's last words).
pub const KEEP_ENDED_NS: u64 = 60_000_000_000;

/// One VMM incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pid: u32,
    pub start_ticks: u64,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Key,
    pub sandbox: Arc<Sandbox>,
    /// Monotonic ns (the kernel events' clock).
    pub start_ns: u64,
    /// When a scan first missed it (an upper bound of its end).
    pub end_ns: Option<u64>,
}

impl Entry {
    pub fn netns(&self) -> u32 {
        self.sandbox.netns.inode
    }

    pub fn label(&self) -> String {
        self.sandbox.label()
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<Key, Entry>,
}

impl Registry {
    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Adds a resolved VMM; false when the table is full (it is retried at the next scan).
    pub fn insert(&mut self, key: Key, sandbox: Arc<Sandbox>, start_ns: u64) -> bool {
        if self.entries.len() >= MAX_SANDBOXES && !self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                key,
                sandbox,
                start_ns,
                end_ns: None,
            },
        );
        true
    }

    /// Marks every running entry not in `live` as ended at `now_ns`; returns them.
    pub fn retire_missing(&mut self, live: &HashSet<Key>, now_ns: u64) -> Vec<Key> {
        let mut ended = Vec::new();
        for e in self.entries.values_mut() {
            if e.end_ns.is_none() && !live.contains(&e.key) {
                e.end_ns = Some(now_ns);
                ended.push(e.key);
            }
        }
        ended
    }

    /// Forgets sandboxes that ended long ago; returns them.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Entry> {
        let old: Vec<Key> = self
            .entries
            .values()
            .filter(|e| {
                e.end_ns
                    .is_some_and(|end| now_ns.saturating_sub(end) > KEEP_ENDED_NS)
            })
            .map(|e| e.key)
            .collect();
        old.iter().filter_map(|k| self.entries.remove(k)).collect()
    }

    /// The sandbox whose host IP is `ip` at `at_ns`.
    pub fn by_host_ip(&self, ip: Ipv4Addr, at_ns: u64) -> Option<&Entry> {
        self.at(at_ns, |e| e.sandbox.host_ip == Some(ip))
    }

    /// The sandbox living in namespace `inode` at `at_ns`.
    pub fn by_netns(&self, inode: u32, at_ns: u64) -> Option<&Entry> {
        self.at(at_ns, |e| e.netns() == inode)
    }

    /// Among the entries that match, the last one started at or before `at_ns`: the one that
    /// was there when the event happened (it may have ended since, or even before: an attempt
    /// to a sandbox whose VMM died is that sandbox's).
    fn at(&self, at_ns: u64, matches: impl Fn(&Entry) -> bool) -> Option<&Entry> {
        self.entries
            .values()
            .filter(|e| matches(e) && e.start_ns <= at_ns)
            .max_by_key(|e| (e.start_ns, e.key))
    }

    /// True when nothing known explains an event at `at_ns` for this match: no entry, or the
    /// one found had ended before it (a new sandbox may have taken the slot since the last
    /// scan).
    pub fn stale_for_host_ip(&self, ip: Ipv4Addr, at_ns: u64) -> bool {
        self.by_host_ip(ip, at_ns)
            .is_none_or(|e| e.end_ns.is_some_and(|end| end < at_ns))
    }

    pub fn running(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().filter(|e| e.end_ns.is_none())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::netns::Netns;

    fn sandbox(id: &str, inode: u32, host_ip: [u8; 4]) -> Arc<Sandbox> {
        let ns = Netns::new(inode, Some("ns-1".into()), "/var/run/netns/ns-1".into());
        let mut sb = Sandbox::bare(ns);
        sb.id = Some(id.into());
        sb.host_ip = Some(host_ip.into());
        Arc::new(sb)
    }

    #[test]
    fn a_reused_namespace_is_attributed_by_when_the_event_happened() {
        let mut r = Registry::default();
        let old = Key {
            pid: 10,
            start_ticks: 1,
        };
        let new = Key {
            pid: 20,
            start_ticks: 500,
        };
        r.insert(old, sandbox("iold", 7, [10, 11, 0, 1]), 1_000);
        assert_eq!(r.by_netns(7, 2_000).map(|e| e.key), Some(old));
        // The old VMM ends; 3 s later a new one takes the same namespace and host IP.
        r.retire_missing(&HashSet::new(), 5_000);
        assert!(r.stale_for_host_ip([10, 11, 0, 1].into(), 9_000));
        r.insert(new, sandbox("inew", 7, [10, 11, 0, 1]), 8_000);
        // Events before the new start are the old sandbox's; from it on, the new one's.
        assert_eq!(
            r.by_host_ip([10, 11, 0, 1].into(), 6_000).map(|e| e.key),
            Some(old)
        );
        assert_eq!(
            r.by_host_ip([10, 11, 0, 1].into(), 8_000).map(|e| e.key),
            Some(new)
        );
        assert_eq!(r.by_netns(7, 9_000).map(|e| e.label()), Some("inew".into()));
        assert!(!r.stale_for_host_ip([10, 11, 0, 1].into(), 9_000));
        // Nothing before the first sandbox.
        assert!(r.by_netns(7, 10).is_none());
        // The old entry goes after a while; the new one stays.
        assert!(r.expire(5_000 + KEEP_ENDED_NS + 1).iter().any(|e| e.key == old));
        assert_eq!(r.len(), 1);
        assert_eq!(r.running().count(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut r = Registry::default();
        for pid in 0..MAX_SANDBOXES as u32 {
            assert!(r.insert(Key { pid, start_ticks: 0 }, sandbox("i", pid, [10, 11, 0, 1]), 0));
        }
        assert!(!r.insert(
            Key {
                pid: u32::MAX,
                start_ticks: 0
            },
            sandbox("i", 1, [10, 11, 0, 1]),
            0
        ));
    }
}
