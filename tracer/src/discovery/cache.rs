//! What discovery saw, remembered in /run/tracer: when a sandbox's VMM has died (crashed
//! Firecracker: the very failure being debugged), its id can no longer be found from
//! processes, but its namespace still exists and can still be traced.
//!
//! E2B pools namespaces and hands `ns-N` to the next sandbox 3 s after one ends, so a name is
//! not enough: the namespace's inode and the VMM's identity (pid and start time) are kept
//! too, and a slot that another sandbox holds now is never traced under the dead one's id.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::PathBuf,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::discovery::sandbox::Sandbox;

const DIR: &str = "/run/tracer";
/// Sandboxes remembered at most (oldest forgotten first).
const MAX_ENTRIES: usize = 4096;

fn path() -> PathBuf {
    PathBuf::from(DIR).join("sandboxes.json")
}

/// One remembered sandbox: its namespace and VMM when last seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub netns: String,
    /// Inode of that namespace (0 in caches written before it was kept).
    #[serde(default)]
    pub netns_inode: u32,
    pub pid: Option<u32>,
    /// The VMM's start time (clock ticks since boot, /proc/PID/stat field 22): with the pid,
    /// the process's identity.
    #[serde(default)]
    pub pid_start: Option<u64>,
    pub unix_time: u64,
}

/// The cache file's content; anything unreadable counts as empty (it is only a cache).
pub fn parse(text: &str) -> BTreeMap<String, Seen> {
    serde_json::from_str(text).unwrap_or_default()
}

fn load() -> BTreeMap<String, Seen> {
    fs::read_to_string(path()).map(|t| parse(&t)).unwrap_or_default()
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
                    netns_inode: sb.netns.inode,
                    pid: sb.pid,
                    pid_start: sb.pid.and_then(crate::system::proc::start_ticks),
                    unix_time: now,
                },
            );
        }
    }
    // Keep it bounded: namespaces that are gone are forgotten, then the oldest.
    all.retain(|_, s| {
        PathBuf::from(crate::system::netns::NETNS_DIR)
            .join(&s.netns)
            .exists()
    });
    while all.len() > MAX_ENTRIES {
        let Some(oldest) = all
            .iter()
            .min_by_key(|(_, s)| s.unix_time)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        all.remove(&oldest);
    }
    let _ = write(&all);
}

/// Writes the cache atomically, readable by root only: a temporary file of this process's own
/// (two tracers never write the same one), then a rename.
fn write(all: &BTreeMap<String, Seen>) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(DIR)?;
    let text = serde_json::to_vec(all).map_err(std::io::Error::other)?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = path().with_extension(format!("tmp.{}.{nanos}", std::process::id()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| fs::rename(&tmp, path()));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Ids remembered whose namespace still exists.
pub fn ids() -> Vec<String> {
    let mut all = load();
    all.retain(|_, s| {
        PathBuf::from(crate::system::netns::NETNS_DIR)
            .join(&s.netns)
            .exists()
    });
    all.into_keys().collect()
}

/// Where a sandbox was last seen, if its namespace still exists.
pub fn recall(id: &str) -> Option<Seen> {
    load().remove(id).filter(|s| {
        PathBuf::from(crate::system::netns::NETNS_DIR)
            .join(&s.netns)
            .exists()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_broken_caches_read_as_what_they_hold() {
        let old = r#"{"ix7hj8hustuvlxiqc0g0u": {"netns": "ns-1", "pid": 7, "unix_time": 1}}"#;
        let all = parse(old);
        assert_eq!(all["ix7hj8hustuvlxiqc0g0u"].netns_inode, 0);
        assert!(parse("{not json").is_empty());
        assert!(parse("").is_empty());
    }

    #[test]
    fn start_time_of_this_process() {
        assert!(crate::system::proc::start_ticks(std::process::id()).is_some());
    }
}
