//! What every watcher record carries for a log pipeline (E2B's: Vector to Loki), whatever its
//! kind (`incident`, `repeat`, `resolved`, `closed`). Stamped in one place, as the record
//! leaves the watcher (`Watcher::print`, and `Watcher::report` before the report is written):
//!
//! - `sandboxID`: the E2B sandbox id, at the top level like E2B's own records (its transform
//!   renames `instanceID`, `sandbox_id` and `sandbox.id` to it); `null` when the sandbox's id
//!   is unknown (a namespace whose VMM was not found). Always present, so every record has the
//!   same top-level fields;
//! - `timestamp`: when the record was made, RFC 3339 in UTC with milliseconds (Vector's remap
//!   parses `.timestamp`);
//! - `service`: `"tracer"` (E2B's transform takes a record without one for envd's);
//! - `node`: the node's name (`--node`, by default the host name).
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::report::format::rfc3339;

/// The `service` of every record.
pub const SERVICE: &str = "tracer";

/// Puts the common fields on a record (an object; anything else is left as it is). A field of
/// the same name is replaced: these are the watcher's.
pub fn stamp(record: &mut Value, node: &str, unix_ns: u64) {
    let Some(obj) = record.as_object_mut() else {
        return;
    };
    let id = obj
        .get("sandbox")
        .and_then(|s| s.get("id"))
        .filter(|id| id.is_string())
        .cloned()
        .unwrap_or(Value::Null);
    obj.insert("sandboxID".into(), id);
    obj.insert("timestamp".into(), json!(rfc3339(unix_ns)));
    obj.insert("service".into(), json!(SERVICE));
    obj.insert("node".into(), json!(node));
}

/// The wall clock, in ns since the epoch.
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The host name (of this UTS namespace): the default `node`.
pub fn host_name() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname writes at most that much.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        bail!(
            "cannot read the host name ({}): name the node with --node",
            std::io::Error::last_os_error()
        );
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_string();
    if name.is_empty() {
        bail!("the host name is empty: name the node with --node");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::record::SandboxRef;

    fn sandbox(id: Option<&str>) -> Value {
        serde_json::to_value(SandboxRef {
            id: id.map(String::from),
            netns: "ns-1".into(),
            tap: "tap0".into(),
            guest_ip: "169.254.0.21".into(),
            host_ip: "10.11.0.1".into(),
            pid: Some(7),
        })
        .unwrap()
    }

    const AT: u64 = 1_796_060_479_129_000_000;

    #[test]
    fn every_kind_gets_the_same_fields() {
        for kind in ["incident", "repeat", "resolved", "closed"] {
            let mut v = json!({"type": kind, "incident_id": "x-1", "sandbox": sandbox(Some("iabc"))});
            stamp(&mut v, "node-7", AT);
            assert_eq!(v["sandboxID"], "iabc", "{v}");
            assert_eq!(v["timestamp"], "2026-11-30T17:41:19.129Z", "{v}");
            assert_eq!(
                (v["service"].as_str(), v["node"].as_str()),
                (Some("tracer"), Some("node-7"))
            );
            // The record itself is untouched.
            assert_eq!(
                (v["type"].as_str(), v["sandbox"]["netns"].as_str()),
                (Some(kind), Some("ns-1"))
            );
        }
    }

    #[test]
    fn an_unknown_sandbox_id_is_null_and_present() {
        let mut v = json!({"type": "incident", "sandbox": sandbox(None)});
        stamp(&mut v, "n", AT);
        assert!(v.as_object().unwrap().contains_key("sandboxID"));
        assert!(v["sandboxID"].is_null(), "{v}");
        let mut v = json!({"type": "incident", "sandbox": null});
        stamp(&mut v, "n", AT);
        assert!(v["sandboxID"].is_null(), "{v}");
    }

    #[test]
    fn the_watcher_s_fields_win_and_stamping_twice_is_harmless() {
        let mut v = json!({"type": "repeat", "sandbox": sandbox(Some("iabc")), "service": "envd", "sandboxID": "ifake"});
        stamp(&mut v, "n", AT);
        stamp(&mut v, "n", AT + 1_000_000);
        assert_eq!(
            (v["service"].as_str(), v["sandboxID"].as_str()),
            (Some("tracer"), Some("iabc"))
        );
        assert_eq!(v["timestamp"], "2026-11-30T17:41:19.130Z");
        let mut not_an_object = json!([1, 2]);
        stamp(&mut not_an_object, "n", AT);
        assert_eq!(not_an_object, json!([1, 2]));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_a_fraction() {
        let mut v = json!({"type": "closed", "sandbox": sandbox(Some("i1"))});
        stamp(&mut v, "n", now_unix_ns());
        let t = v["timestamp"].as_str().unwrap();
        // YYYY-MM-DDTHH:MM:SS.mmmZ
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.',
            "{t}"
        );
        assert!(t.starts_with("20"), "{t}");
    }

    #[test]
    fn the_host_name_is_read() {
        assert!(!host_name().unwrap().is_empty());
    }
}
