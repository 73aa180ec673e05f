//! Sandbox discovery against the lab: `tracer list` and `sandbox::find/from_netns/from_pid`
//! find every lab-vmm with its namespace, tap, DNAT addresses and host side, and only those
//! that are running.
mod common;

use lab::testing::lab_up;
use std::{
    process::Command,
    time::{Duration, Instant},
};

use lab::{Fault, IptablesBackend, Lab, LabConfig, Topology};
use serde_json::Value;
use tracer::{discovery::sandbox, error::EnvError};

/// `tracer list --json`, parsed; the exit code must be 0.
fn list_json() -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["list", "--json"])
        .output()
        .expect("run tracer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "tracer list failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    v.as_array().cloned().expect("a JSON array")
}

fn row_of<'a>(rows: &'a [Value], id: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["id"] == id)
}

/// What the lab built for sandbox `i`, as list rows show it.
fn assert_row_matches_lab(row: &Value, lab: &Lab, i: usize) {
    let sb = &lab.sandboxes()[i];
    let slot = sb.slot;
    assert_eq!(row["pid"], sb.guest_pid.expect("guest pid"), "{row}");
    assert_eq!(row["netns"], slot.netns(), "{row}");
    assert_eq!(row["tap"], "tap0", "{row}");
    assert_eq!(row["tap_held"], true, "{row}");
    assert_eq!(row["guest_ip"], "169.254.0.21", "{row}");
    assert_eq!(row["host_ip"], slot.host_ip().to_string(), "{row}");
    assert_eq!(row["host_ns"], "e2b-host", "{row}");
    assert_eq!(row["host_veth"], slot.veth(), "{row}");
    assert_eq!(row["ns_veth"], "eth0", "{row}");
    assert_eq!(row["slot"], slot.0, "{row}");
    assert!(row["netns_inode"].as_u64().is_some_and(|i| i > 0), "{row}");
    assert_eq!(row["warnings"], Value::Array(vec![]), "{row}");
}

#[test]
fn list_shows_running_sandboxes_only() {
    let Some(mut lab) = lab_up(
        "list_shows_running_sandboxes_only",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let ids = lab.sandbox_ids();

    let rows = list_json();
    for (i, id) in ids.iter().enumerate() {
        let row = row_of(&rows, id).unwrap_or_else(|| panic!("sandbox {id} missing from {rows:?}"));
        assert_row_matches_lab(row, &lab, i);
    }

    let text = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .arg("list")
        .output()
        .expect("run tracer");
    let text = String::from_utf8_lossy(&text.stdout);
    eprintln!("{text}");
    assert!(ids.iter().all(|id| text.contains(id.as_str())), "{text}");
    assert!(text.contains("e2b-host/veth-1"), "{text}");

    // Without its VMM, a sandbox is no longer running: it leaves the list.
    lab.break_fault(0, Fault::NoReader).expect("break no-reader");
    let rows = list_json();
    assert!(
        row_of(&rows, &ids[0]).is_none(),
        "a sandbox without VMM is listed: {rows:?}"
    );
    assert_row_matches_lab(row_of(&rows, &ids[1]).expect("the other sandbox stays"), &lab, 1);
}

#[test]
fn find_is_fast_and_names_unknown_and_malformed_ids() {
    let Some(lab) = lab_up(
        "find_is_fast_and_names_unknown_and_malformed_ids",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let ids = lab.sandbox_ids();

    let start = Instant::now();
    let sb = sandbox::find(&ids[1]).expect("find");
    let took = start.elapsed();
    eprintln!("sandbox::find took {took:?}");
    assert_eq!(sb.id.as_deref(), Some(ids[1].as_str()));
    assert_eq!(sb.pid, lab.sandboxes()[1].guest_pid);
    assert_eq!(sb.netns.name.as_deref(), Some("ns-2"));
    assert_eq!(sb.netns.path, std::path::Path::new("/var/run/netns/ns-2"));
    assert_eq!(
        sb.api_sock,
        Some(lab.sandboxes()[1].api_sock().display().to_string())
    );
    assert_eq!(sb.ns_veth_ip, Some("10.12.0.5".parse().unwrap()));
    assert_eq!(sb.host_veth_ip, Some("10.12.0.4".parse().unwrap()));
    assert_eq!(sb.bridge, None);
    assert!(took < Duration::from_millis(500), "find took {took:?}");

    let start = Instant::now();
    let all = sandbox::discover_all().expect("discover_all");
    eprintln!(
        "sandbox::discover_all took {:?} for {} sandboxes",
        start.elapsed(),
        all.len()
    );

    let unknown = "zzzzzzzzzzzzzzzzzzzz";
    let err = sandbox::find(unknown).unwrap_err();
    match err.downcast_ref::<EnvError>() {
        Some(EnvError::UnknownSandbox { id, known }) => {
            assert_eq!(id, unknown);
            assert!(ids.iter().all(|i| known.contains(i)), "{known:?}");
        }
        other => panic!("expected UnknownSandbox, got {other:?}: {err:#}"),
    }
    let err = sandbox::find("ns-1").unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<EnvError>(),
            Some(EnvError::MalformedSandboxId(_))
        ),
        "{err:#}"
    );
}

#[test]
fn netns_and_pid_find_the_same_sandbox_and_see_a_tap_without_reader() {
    let Some(mut lab) = lab_up(
        "netns_and_pid_find_the_same_sandbox",
        LabConfig {
            sandboxes: 1,
            ..Default::default()
        },
    ) else {
        return;
    };
    let pid = lab.sandboxes()[0].guest_pid.expect("guest pid");

    let by_pid = sandbox::from_pid(pid).expect("from_pid");
    let by_ns = sandbox::from_netns("ns-1").expect("from_netns");
    assert_eq!(by_pid.id.as_deref(), Some(lab.sandboxes()[0].id.as_str()));
    assert_eq!(by_ns.id, None, "--netns knows no sandbox id");
    for sb in [&by_pid, &by_ns] {
        assert_eq!(sb.pid, Some(pid));
        assert_eq!((sb.tap.as_deref(), sb.tap_held), (Some("tap0"), true));
        assert_eq!(sb.host_veth.as_deref(), Some("veth-1"));
        assert_eq!(sb.host_ip, Some("10.11.0.1".parse().unwrap()));
    }

    // The VMM is gone, tap0 stays: the tap is found but nobody holds it.
    lab.break_fault(0, Fault::NoReader).expect("break no-reader");
    let orphan = sandbox::from_netns("ns-1").expect("from_netns");
    assert_eq!(orphan.pid, None);
    assert_eq!((orphan.tap.as_deref(), orphan.tap_held), (Some("tap0"), false));
    assert!(sandbox::from_netns("no-such-netns").is_err());
}

#[test]
fn legacy_iptables_and_bridged_taps_are_understood() {
    let config = LabConfig {
        sandboxes: 1,
        iptables: IptablesBackend::Legacy,
        topology: Topology::Bridge,
        ..Default::default()
    };
    let Some(lab) = lab_up("legacy_iptables_and_bridged_taps_are_understood", config) else {
        return;
    };
    let sb = sandbox::find(&lab.sandbox_ids()[0]).expect("find");
    assert_eq!(sb.host_ip, Some("10.11.0.1".parse().unwrap()), "{sb:?}");
    assert_eq!(sb.guest_ip, Some("169.254.0.21".parse().unwrap()), "{sb:?}");
    assert_eq!(sb.bridge.as_deref(), Some("br0"), "{sb:?}");
    assert_eq!(sb.tap.as_deref(), Some("tap0"), "{sb:?}");
}

/// Timing with many sandboxes (slow to build: run with `--ignored`).
#[test]
#[ignore]
fn discovery_scales_to_many_sandboxes() {
    let n: u32 = lab::testing::env_count("LIST_SANDBOXES", 50);
    let start = Instant::now();
    let Some(lab) = lab_up(
        "discovery_scales_to_many_sandboxes",
        LabConfig {
            sandboxes: n,
            ..Default::default()
        },
    ) else {
        return;
    };
    eprintln!("lab with {n} sandboxes up in {:?}", start.elapsed());
    let ids = lab.sandbox_ids();
    for _ in 0..3 {
        let start = Instant::now();
        let sb = sandbox::find(&ids[ids.len() / 2]).expect("find");
        eprintln!("find one of {n}: {:?}", start.elapsed());
        assert_eq!(sb.host_veth, Some(format!("veth-{}", ids.len() / 2 + 1)));
    }
    for _ in 0..3 {
        let start = Instant::now();
        let all = sandbox::discover_all().expect("discover_all");
        eprintln!("discover_all of {n}: {:?}", start.elapsed());
        assert!(
            ids.iter()
                .all(|id| all.iter().any(|s| s.id.as_deref() == Some(id)))
        );
        assert!(
            all.iter().all(|s| s.warnings.is_empty() && s.host_ip.is_some()),
            "{all:?}"
        );
    }
    let start = Instant::now();
    let rows = list_json();
    eprintln!("tracer list --json of {n}: {:?}", start.elapsed());
    assert!(rows.len() >= ids.len());
}

/// Issue 17: the two VMMs of a real node's report (../shared/field/), with exactly their
/// command-line shape and ids, are found by `list`, `doctor` and `trace`, by id and by a
/// unique prefix; an ambiguous prefix lists both.
#[test]
fn the_field_reports_ids_work_for_list_doctor_and_trace() {
    const REPORT: [(&str, &str); 2] = [
        ("ix7hj8hustuvlxiqc0g0u", "5v46qx8woej5mafpjhog"),
        ("i2fewa6azuz8dedm8btll", "uur67n8z1artmx5wym8s"),
    ];
    let Some(mut lab) = lab_up(
        "the_field_reports_ids_work_for_list_doctor_and_trace",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    for (i, (id, rand)) in REPORT.iter().enumerate() {
        lab.recycle(i, Duration::ZERO, Some((id.to_string(), rand.to_string())))
            .unwrap();
    }
    // The VMM stand-in carries the report's command-line shape.
    let pid = lab.sandboxes()[0].guest_pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--api-sock").expect("--api-sock");
    assert_eq!(
        args[at + 1],
        "/tmp/fc-ix7hj8hustuvlxiqc0g0u-5v46qx8woej5mafpjhog.sock"
    );

    let rows = list_json();
    for (i, (id, _)) in REPORT.iter().enumerate() {
        let row = row_of(&rows, id).unwrap_or_else(|| panic!("{id} listed: {rows:?}"));
        assert_row_matches_lab(row, &lab, i);
    }

    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(args)
            .output()
            .expect("run tracer");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["doctor", "--vm", REPORT[0].0, "--json", "--no-connect"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["id"], REPORT[0].0);
    assert_eq!(report["netns"], "ns-1");

    for arg in [REPORT[0].0, "ix7hj8"] {
        let (code, out, err) = run(&["trace", "--vm", arg, "--probe", "--json"]);
        assert_eq!(code, 0, "{arg}: {out}\n{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["outcome"], "connected", "{arg}: {v}");
        assert_eq!(v["sandbox"]["id"], REPORT[0].0, "{arg}: {v}");
    }

    let (code, _, err) = run(&["trace", "--vm", "i", "--probe"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("several sandbox ids") && err.contains(REPORT[0].0) && err.contains(REPORT[1].0),
        "{err}"
    );
    let (code, _, err) = run(&["doctor", "--vm", "ix7hj8hustuvlxiqc0g0uX"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a sandbox id"), "{err}");
}

/// Issue 9: output is a type; a reader that goes away (`tracer list --json | head -1`) is a
/// normal end: exit 0, nothing on stderr.
#[test]
fn a_closed_stdout_ends_quietly() {
    if !common::require_root("a_closed_stdout_ends_quietly") {
        return;
    }
    for args in [&["list", "--json"][..], &["list"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run tracer");
        // The reader is gone before the tracer writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {:?}", out);
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
