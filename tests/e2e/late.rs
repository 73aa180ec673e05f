//! Issue 18: a reply that comes after the client gave up is `late` (a slow guest), not
//! `no_reply`; a reply just in time is `connected` with its latency; a guest slower than the
//! grace window is silent. In probe mode and in passive mode with an independent HTTP client
//! (curl) whose timeout is 50 ms. Root; the lab lock serializes these tests.
mod common;

use std::{process::Command, time::Duration};

use common::{Tracer, probe};
use lab::{Fault, LabConfig, testing::lab_up};
use serde_json::Value;

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.').fold(v, |v, k| &v[k]).as_str().unwrap_or("")
}

fn num(v: &Value, path: &str) -> f64 {
    path.split('.').fold(v, |v, k| &v[k]).as_f64().unwrap_or(f64::NAN)
}

/// curl from e2b-host to the sandbox's host IP with a 50 ms timeout, as the orchestrator's
/// envd client does; true when it got an answer.
fn curl_50ms(host_ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", "e2b-host", "curl", "-s", "-o", "/dev/null"])
        .args(["--connect-timeout", "0.05", "--max-time", "0.05"])
        .arg(format!("http://{host_ip}:49983/health"))
        .status()
        .expect("run curl")
        .success()
}

#[test]
fn a_late_reply_is_late_in_probe_mode_and_a_timely_one_connected_with_its_latency() {
    let Some(mut lab) = lab_up("late_probe", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();

    lab.break_fault(0, Fault::SlowGuest).unwrap();
    let (code, v, err) = probe(&id, &[]);
    assert_eq!(code, 1, "{v}\n{err}");
    assert_eq!(s(&v, "outcome"), "late", "{v}");
    assert!(num(&v, "late.reply_ms") >= 80.0, "{v}");
    assert!(num(&v, "late.after_timeout_ms") > 0.0, "{v}");
    // The time was spent inside the VM (seen from the tap both ways), not on the way.
    assert!(num(&v, "late.split.guest_ms") >= 75.0, "{v}");
    assert!(num(&v, "late.split.to_guest_ms") < 10.0, "{v}");
    assert_eq!(
        s(&v, "late.fate.kind"),
        "reset",
        "the client's stack answers RST: {v}"
    );
    assert!(
        s(&v, "summary").contains("the path works, the guest is slow"),
        "{v}"
    );
    // The fix names both sides: the guest's slowness and the per-attempt timeout.
    let fix = s(&v, "fix");
    assert!(fix.contains("envd answers only after"), "{fix}");
    assert!(fix.contains("give each attempt more than"), "{fix}");

    // With a longer timeout the same guest is in time: connected, and the latency shown.
    let (code, v, _) = probe(&id, &["--timeout", "500ms"]);
    assert_eq!((code, s(&v, "outcome")), (0, "connected"), "{v}");
    assert!(num(&v, "reply_ms") >= 80.0, "{v}");
    assert!(s(&v, "summary").contains(" ms after the SYN"), "{v}");
    lab.heal(0).unwrap();

    // Just in time for the 50 ms attempt: 30 ms.
    lab.control(0, "delay 30").unwrap();
    let (code, v, _) = probe(&id, &[]);
    assert_eq!((code, s(&v, "outcome")), (0, "connected"), "{v}");
    let ms = num(&v, "reply_ms");
    assert!((30.0..50.0).contains(&ms), "reply after {ms} ms: {v}");

    // Slower than the grace window: silent, not late.
    lab.control(0, "delay 1500").unwrap();
    let (_, v, _) = probe(&id, &["--late-window", "300ms"]);
    assert_eq!(s(&v, "outcome"), "no_reply", "{v}");
    assert!(v["late"].is_null(), "{v}");
    lab.control(0, "delay 0").unwrap();
}

#[test]
fn an_independent_clients_late_attempts_are_one_late_verdict_with_their_delays() {
    let Some(mut lab) = lab_up("late_passive", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::SlowGuest).unwrap();
    let t = Tracer::start(&["trace", "--vm", &id, "--json"]);
    for _ in 0..8 {
        assert!(
            !curl_50ms("10.11.0.1"),
            "a 50 ms client must give up on an 80 ms guest"
        );
    }
    let (late, before) = t.next_json(Duration::from_secs(10), |v| v["type"] == "journey");
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(s(&late, "outcome"), "late", "{late}");
    assert!(num(&late, "late.reply_ms") >= 80.0, "{late}");
    assert!(
        (40.0..80.0).contains(&num(&late, "late.timeout_ms")),
        "curl's 50 ms: {late}"
    );
    let rest = t.stop_and_collect();
    let repeat = rest
        .iter()
        .find(|v| v["type"] == "repeat" && v["outcome"] == "late")
        .unwrap_or_else(|| panic!("no repeat of the late attempts: {rest:?}"));
    assert!(repeat["count"].as_u64().unwrap_or(0) >= 6, "{repeat}");
    let d = &repeat["reply_delays_ms"];
    assert!(d["count"].as_u64().unwrap_or(0) >= 6, "{repeat}");
    assert!(
        num(d, "min") >= 80.0 && num(d, "min") <= num(d, "median"),
        "{repeat}"
    );
    assert!(num(d, "median") <= num(d, "max"), "{repeat}");
    // No attempt of a slow guest is called silent or dropped.
    for v in &rest {
        if v["type"] == "journey" {
            assert_eq!(s(v, "outcome"), "late", "{v}");
        }
    }
}
