//! What discovery saw, remembered in /run/tracer: when a sandbox's VMM has died (crashed
//! Firecracker: the very failure being debugged), its id can no longer be found from
//! processes, but its namespace still exists and can still be traced.
use std::{collections::BTreeMap, fs, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::sandbox::Sandbox;

const DIR: &str = "/run/tracer";

fn path() -> PathBuf {
    PathBuf::from(DIR).join("sandboxes.json")
}

/// One remembered sandbox: its id, namespace name and VMM pid when last seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub netns: String,
    pub pid: Option<u32>,
    pub unix_time: u64,
}

fn load() -> BTreeMap<String, Seen> {
    fs::read_to_string(path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Remembers the named sandboxes of a discovery (best effort: a cache, never an error).
pub fn remember(sandboxes: &[&Sandbox]) {
    let mut all = load();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for sb in sandboxes {
        if let (Some(id), Some(ns)) = (&sb.id, &sb.netns.name) {
            all.insert(
                id.clone(),
                Seen {
                    netns: ns.clone(),
                    pid: sb.pid,
                    unix_time: now,
                },
            );
        }
    }
    // Keep it bounded: namespaces that are gone are forgotten.
    all.retain(|_, s| PathBuf::from(crate::netns::NETNS_DIR).join(&s.netns).exists());
    if fs::create_dir_all(DIR).is_ok()
        && let Ok(text) = serde_json::to_string(&all)
    {
        let tmp = path().with_extension("tmp");
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(tmp, path());
        }
    }
}

/// Ids remembered whose namespace still exists.
pub fn ids() -> Vec<String> {
    let mut all = load();
    all.retain(|_, s| PathBuf::from(crate::netns::NETNS_DIR).join(&s.netns).exists());
    all.into_keys().collect()
}

/// Where a sandbox was last seen, if its namespace still exists.
pub fn recall(id: &str) -> Option<Seen> {
    load()
        .remove(id)
        .filter(|s| PathBuf::from(crate::netns::NETNS_DIR).join(&s.netns).exists())
}
