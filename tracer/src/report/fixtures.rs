//! Records for the renderers' tests: journeys the lab's tracer printed for each fault (saved
//! from `tracer trace --probe --json`), an old record without the newer fields, and records
//! with names no honest kernel would report.
use serde_json::{Value, json};

use super::record::JourneyRecord;

/// A saved lab record by its fault's name, as JSON.
pub fn json(name: &str) -> Value {
    let text = match name {
        "forward-drop" => include_str!("../../../tests/e2e/fixtures/report/forward-drop.json"),
        "reply-drop" => include_str!("../../../tests/e2e/fixtures/report/reply-drop.json"),
        "connected" => include_str!("../../../tests/e2e/fixtures/report/connected.json"),
        "guest-no-listener" => include_str!("../../../tests/e2e/fixtures/report/guest-no-listener.json"),
        "no-reader" => include_str!("../../../tests/e2e/fixtures/report/no-reader.json"),
        "vmm-stopped" => include_str!("../../../tests/e2e/fixtures/report/vmm-stopped.json"),
        "slow-guest" => include_str!("../../../tests/e2e/fixtures/report/slow-guest.json"),
        "tap-queue-full" => include_str!("../../../tests/e2e/fixtures/report/tap-queue-full.json"),
        "bridge-tap-down" => include_str!("../../../tests/e2e/fixtures/report/bridge-tap-down.json"),
        "wrong-slot-route" => include_str!("../../../tests/e2e/fixtures/report/wrong-slot-route.json"),
        "host-input-drop" => include_str!("../../../tests/e2e/fixtures/report/host-input-drop.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).expect("a fixture is one JSON record")
}

pub fn record(name: &str) -> JourneyRecord {
    from(json(name))
}

pub fn from(v: Value) -> JourneyRecord {
    serde_json::from_value(v).expect("a journey record")
}

/// The guest read the SYN and never answered: the connected journey up to the VMM's read.
pub fn no_reply() -> JourneyRecord {
    let mut v = json("connected");
    let hops: Vec<Value> = v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["leg"] == "request")
        .cloned()
        .collect();
    v["hops"] = Value::Array(hops);
    v["outcome"] = json!("no_reply");
    v["failing_hop"] = Value::Null;
    v["reply_ms"] = Value::Null;
    from(v)
}

/// A record as the first versions wrote it: no queued, late, reply_ms, evidence, lost events,
/// blind spots, failing hop, actors or divergence; a watcher's `unknown` with no hops.
pub fn old_unknown() -> JourneyRecord {
    from(json!({
        "type": "incident", "sandbox": null, "outcome": "unknown",
        "summary": "the namespace was gone before the zoom-in could attach",
        "fix": null, "drop": null, "reset": null, "unreachable": null, "findings": [],
        "cause": null, "explained_by": [], "client": null, "target": null, "count": 1,
        "first_seen": "", "last_seen": "", "verdict_latency_us": 0, "hops": []
    }))
}

/// The forward drop with names and rule text an attacker chose, and the newer fields.
pub fn hostile() -> JourneyRecord {
    let mut v = json("forward-drop");
    let evil = "<script>alert(1)</script>\"'&#`|\u{1b}[31m\n```";
    for h in v["hops"].as_array_mut().unwrap() {
        if h["device"] == "eth0" {
            h["device"] = json!(evil);
        }
        h["detail"] = json!(format!("detail {evil}"));
    }
    v["drop"]["device"] = json!(evil);
    v["drop"]["rule"] = json!(format!("-A FORWARD -m comment --comment \"{evil}\" -j DROP"));
    v["summary"] = json!(format!("dropped by {evil}"));
    v["sandbox"]["netns"] = json!("ns-1");
    v["actors"] =
        json!([{"kind": "rule", "netns": "ns-1", "device": evil, "text": format!("iptables {evil}")}]);
    v["divergence"] = json!({"hop": 15, "field": "device", "expected": "tap0", "observed": evil});
    from(v)
}
