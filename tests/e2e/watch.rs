//! Issue 12: `tracer watch` on the lab: one incident per broken sandbox with the right id and
//! cause, none for healthy ones, `resolved` after healing, recycled slots attributed to the
//! new id, late replies as one `late` incident with their delays, Prometheus scraping its
//! metrics, Markdown reports, and nothing left attached after SIGKILL. Root; the lab lock
//! serializes these tests.
mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{RemoveOnDrop, Tracer, loaded_program_names, our_programs};
use lab::{Fault, LabConfig, testing::lab_up};
use serde_json::Value;

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.').fold(v, |v, k| &v[k]).as_str().unwrap_or("")
}

/// `tracer watch` run inside the lab's orchestrator namespace (so its metrics listener and
/// everything it serves stay in a namespace of ours), started and ready.
fn watch(extra: &[&str]) -> Tracer {
    let bin = common::tracer_bin();
    let mut args = vec!["netns", "exec", "e2b-host", bin.to_str().unwrap(), "watch"];
    args.extend_from_slice(extra);
    let t = Tracer::start_program("ip", &args);
    t.wait_stderr("sandboxes (scan", Duration::from_secs(20));
    t
}

/// The next record of `kind` for sandbox `id`.
fn next(t: &Tracer, kind: &str, id: &str, within: Duration) -> (Value, Vec<Value>) {
    t.next_json(within, |v| v["type"] == kind && v["sandbox"]["id"] == id)
}

#[test]
fn twenty_sandboxes_three_faults_three_incidents_and_a_resolution() {
    let Some(mut lab) = lab_up(
        "watch_twenty",
        LabConfig {
            sandboxes: 20,
            ..Default::default()
        },
    ) else {
        return;
    };
    let ids = lab.sandbox_ids();
    let broken = [
        (2, Fault::ForwardDrop),
        (7, Fault::ReplyDrop),
        (13, Fault::GuestNoListener),
    ];
    for (i, f) in broken {
        lab.break_fault(i, f).unwrap();
    }
    let t = watch(&["--repeat-every", "1s"]);
    let orchestrator = lab.orchestrator_loop();
    let mut incidents: HashMap<String, Value> = HashMap::new();
    let mut others = Vec::new();
    while incidents.len() < 3 {
        let (v, before) = t.next_json(Duration::from_secs(20), |v| v["type"] == "incident");
        others.extend(before);
        incidents.insert(s(&v, "sandbox.id").to_string(), v);
    }
    let forward = &incidents[&ids[2]];
    assert_eq!(s(forward, "outcome"), "dropped", "{forward}");
    assert_eq!(
        (s(forward, "drop.netns"), s(forward, "drop.hook")),
        ("ns-3", "FORWARD"),
        "{forward}"
    );
    assert!(
        s(forward, "drop.rule").contains("--dport 49983 -j DROP"),
        "{forward}"
    );
    let reply = &incidents[&ids[7]];
    assert_eq!(
        (
            s(reply, "outcome"),
            s(reply, "drop.direction"),
            s(reply, "drop.netns")
        ),
        ("dropped", "reply", "ns-8"),
        "{reply}"
    );
    let refused = &incidents[&ids[13]];
    assert_eq!(
        (s(refused, "outcome"), s(refused, "reset.by")),
        ("reset", "guest"),
        "{refused}"
    );
    for v in incidents.values() {
        assert!(v["attempts_seen"].as_u64().unwrap_or(0) >= 1, "{v}");
        assert!(
            !s(v, "incident_id").is_empty() && !s(v, "first_failure").is_empty(),
            "{v}"
        );
        assert!(!v["hops"].as_array().unwrap().is_empty(), "{v}");
    }
    // Healing one resolves its incident; the others keep failing.
    lab.heal(2).unwrap();
    let (resolved, before) = next(&t, "resolved", &ids[2], Duration::from_secs(20));
    others.extend(before);
    assert_eq!(s(&resolved, "incident_id"), s(forward, "incident_id"));
    assert!(resolved["duration_ms"].as_u64().is_some(), "{resolved}");
    orchestrator.stop().unwrap();
    others.extend(t.stop_and_collect());
    // Healthy sandboxes never got anything; no second incident for a broken one.
    let broken_ids: Vec<&str> = broken.iter().map(|(i, _)| ids[*i].as_str()).collect();
    for v in &others {
        assert!(
            broken_ids.contains(&s(v, "sandbox.id")),
            "a healthy sandbox got {v}"
        );
        assert_ne!(v["type"], "incident", "one incident per sandbox: {v}");
    }
    // The kernel frees a program once its last fd is closed and an RCU grace period passed.
    let released = lab::testing::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        loaded_program_names()
            .iter()
            .all(|n| !our_programs().contains(&n.as_str()))
            .then_some(())
    });
    assert!(
        released.is_some(),
        "nothing stays attached after the watcher exits: {:?}",
        loaded_program_names()
    );
}

/// Issue 27 (failure storms): one host-side rule breaks every sandbox but one; with one
/// zoom-in slot, the first verdict's rule is confirmed on the waiting sandboxes' own attempts
/// (`localized: "shared"`), and the sandbox the rule does not match keeps waiting for its own
/// zoom-in, which finds its own cause.
#[test]
fn a_host_side_rule_is_shared_with_the_sandboxes_it_matches_and_no_other() {
    let Some(mut lab) = lab_up(
        "watch_shared",
        LabConfig {
            sandboxes: 8,
            ..Default::default()
        },
    ) else {
        return;
    };
    let ids = lab.sandbox_ids();
    let spared = 5;
    let spared_ip = lab.host_ips()[spared].to_string();
    lab.break_fault(spared, Fault::ForwardDrop).unwrap();
    // Removed with the lab's host namespace.
    lab::sh::run_in(
        Some("e2b-host"),
        "iptables",
        &[
            "-I", "OUTPUT", "-p", "tcp", "--dport", "49983", "!", "-d", &spared_ip, "-j", "DROP",
        ],
    )
    .unwrap();
    let t = watch(&["--max-zoom", "1"]);
    let orchestrator = lab.orchestrator_loop();
    let mut incidents: HashMap<String, Value> = HashMap::new();
    while incidents.len() < ids.len() {
        let (v, _) = t.next_json(Duration::from_secs(30), |v| v["type"] == "incident");
        incidents.insert(s(&v, "sandbox.id").to_string(), v);
    }
    orchestrator.stop().unwrap();
    t.stop_and_collect();
    let own = &incidents[&ids[spared]];
    assert_eq!(s(own, "localized"), "followed", "{own}");
    assert_eq!(
        (s(own, "drop.netns"), s(own, "drop.hook")),
        (format!("ns-{}", spared + 1).as_str(), "FORWARD"),
        "{own}"
    );
    let followed: Vec<&str> = incidents
        .values()
        .filter(|v| v["localized"] == "followed")
        .map(|v| s(v, "incident_id"))
        .collect();
    let mut shared = 0;
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != spared) {
        let v = &incidents[id];
        assert_eq!(
            (s(v, "outcome"), s(v, "drop.netns"), s(v, "drop.hook")),
            ("dropped", "e2b-host", "OUTPUT"),
            "sandbox {i}: {v}"
        );
        let rule = v["actors"][0]["text"].as_str().unwrap_or("");
        assert!(rule.contains("--dport 49983") && rule.contains("DROP"), "{v}");
        if v["localized"] == "shared" {
            shared += 1;
            assert!(v["hops"].as_array().unwrap().is_empty(), "{v}");
            assert!(
                followed.contains(&s(v, "shared_from.incident_id")),
                "shared from a followed verdict: {v}"
            );
            assert!(!v["evidence"][0]["text"].as_str().unwrap_or("").is_empty(), "{v}");
        }
    }
    assert!(
        shared >= 1,
        "with one zoom-in slot, the waiting sandboxes share the verdict"
    );
}

#[test]
fn a_recycled_slot_is_reported_under_the_new_id() {
    let Some(mut lab) = lab_up(
        "watch_recycle",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let old = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    let t = watch(&[]);
    let orchestrator = lab.orchestrator_loop();
    let (first, _) = next(&t, "incident", &old, Duration::from_secs(20));
    assert_eq!(s(&first, "drop.netns"), "ns-1");
    orchestrator.stop().unwrap();
    // The sandbox ends; 1 s later a new one takes ns-1 (the fault stays with the namespace,
    // as a slot's rules do).
    let new = lab.recycle(0, Duration::from_secs(1), None).unwrap();
    let orchestrator = lab.orchestrator_loop();
    let (second, before) = next(&t, "incident", &new, Duration::from_secs(20));
    orchestrator.stop().unwrap();
    assert_eq!(s(&second, "sandbox.netns"), "ns-1");
    assert_ne!(s(&second, "incident_id"), s(&first, "incident_id"));
    assert_eq!(s(&second, "outcome"), "dropped", "{second}");
    for v in before.iter().chain(t.stop_and_collect().iter()) {
        if v["type"] == "incident" {
            assert_ne!(
                s(v, "sandbox.id"),
                old,
                "nothing new is reported under the dead id: {v}"
            );
        }
    }
}

#[test]
fn late_attempts_are_one_late_incident_with_their_delays() {
    let Some(mut lab) = lab_up("watch_late", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::SlowGuest).unwrap();
    let t = watch(&["--repeat-every", "1s"]);
    let orchestrator = lab.orchestrator_loop();
    let (inc, _) = next(&t, "incident", &id, Duration::from_secs(20));
    assert_eq!(s(&inc, "outcome"), "late", "{inc}");
    assert!(inc["late"]["reply_ms"].as_f64().unwrap_or(0.0) >= 80.0, "{inc}");
    let (rep, _) = t.next_json(Duration::from_secs(20), |v| {
        v["type"] == "repeat" && v["reply_delays_ms"]["count"].as_u64().unwrap_or(0) >= 3
    });
    orchestrator.stop().unwrap();
    assert_eq!(s(&rep, "incident_id"), s(&inc, "incident_id"));
    let d = &rep["reply_delays_ms"];
    assert!(d["min"].as_f64().unwrap() >= 80.0, "{rep}");
    assert!(d["max"].as_f64().unwrap() < 1000.0, "{rep}");
    let rest = t.stop_and_collect();
    assert!(
        rest.iter().all(|v| v["type"] != "incident"),
        "all late attempts are one incident: {rest:?}"
    );
}

#[test]
fn a_failure_nobody_retries_still_gets_an_incident_saying_so() {
    let Some(mut lab) = lab_up("watch_no_retry", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    let t = watch(&["--zoom-window", "1s"]);
    assert!(!lab.connect(0, 1).unwrap().succeeded());
    let (inc, _) = next(&t, "incident", &id, Duration::from_secs(10));
    // No attempt to follow, but detection saw where its SYN was dropped.
    assert_eq!(s(&inc, "outcome"), "dropped", "{inc}");
    assert_eq!(
        (s(&inc, "drop.netns"), s(&inc, "drop.reason")),
        ("ns-1", "NETFILTER_DROP"),
        "{inc}"
    );
    let summary = s(&inc, "summary");
    assert!(
        summary.contains("as detection saw it")
            && summary.contains("none was made while the path was followed"),
        "{inc}"
    );
    // Decided by the engine like any verdict, and said to be not localized.
    assert_eq!(inc["localized"], "detection", "{inc}");
    assert_eq!(inc["schema_version"], 2, "{inc}");
    assert!(
        inc["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["about"] == "watcher")),
        "{inc}"
    );
    t.stop();
}

#[test]
fn reports_are_written_per_incident_and_metrics_are_scraped_by_prometheus() {
    let Some(mut lab) = lab_up("watch_metrics", LabConfig::default()) else {
        return;
    };
    let Some(prometheus) = which("prometheus") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no prometheus: cargo xtask setup installs it"
        );
        eprintln!("skipped: no prometheus (cargo xtask setup installs it)");
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    let dir = std::env::temp_dir().join(format!("tracer-watch-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let reports = dir.join("reports");
    let t = watch(&[
        "--metrics",
        "127.0.0.1:9464",
        "--report-dir",
        reports.to_str().unwrap(),
    ]);
    let orchestrator = lab.orchestrator_loop();
    let (inc, _) = next(&t, "incident", &id, Duration::from_secs(20));
    // The Markdown report of that incident.
    let report = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(s(&inc, "incident_id")))
        .expect("a report for the incident");
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains(&format!("sandbox `{id}`")), "{text}");
    assert!(text.contains("-j DROP"), "names the rule: {text}");
    assert!(text.contains("## The attempt, hop by hop"), "{text}");

    // A real Prometheus in the same namespace scrapes the watcher every second.
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['127.0.0.1:9464']\n",
    )
    .unwrap();
    let _prom = common::ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", "e2b-host"])
            .arg(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let query = "tracer_drops_total{netns_kind=\"sandbox\",hook=\"FORWARD\",table=\"filter\",reason=\"NETFILTER_DROP\"}";
    let value = lab::testing::wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        let out = in_host_ns(
            "curl",
            &[
                "-sG",
                "http://127.0.0.1:9090/api/v1/query",
                "--data-urlencode",
                &format!("query={query}"),
            ],
        )?;
        let v: Value = serde_json::from_str(&out).ok()?;
        let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (n >= 1.0).then_some(n)
    });
    orchestrator.stop().unwrap();
    assert!(value.is_some(), "Prometheus never saw the drop counter");
    // The exposition passes promtool.
    let exposition = in_host_ns("curl", &["-s", "http://127.0.0.1:9464/metrics"]).expect("metrics");
    assert!(
        exposition.contains("tracer_incidents_total{outcome=\"dropped\"} 1"),
        "{exposition}"
    );
    if let Some(promtool) = which("promtool") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    t.stop();
}

#[test]
fn sigkill_leaves_nothing_attached_and_a_restart_picks_up() {
    let Some(mut lab) = lab_up("watch_sigkill", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::SlowGuest).unwrap();
    // A long zoom window keeps the path programs attached when the kill comes.
    let t = watch(&["--zoom-window", "30s"]);
    let orchestrator = lab.orchestrator_loop();
    let attached = lab::testing::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        loaded_program_names()
            .iter()
            .any(|n| n == "tcx_ingress")
            .then_some(())
    });
    assert!(attached.is_some(), "the zoom-in attached tcx");
    // SAFETY: signal to the watcher (the child of `ip netns exec`, which execs it).
    unsafe { libc::kill(t.pid() as i32, libc::SIGKILL) };
    let gone = lab::testing::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        loaded_program_names()
            .iter()
            .all(|n| !our_programs().contains(&n.as_str()))
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "programs left after SIGKILL: {:?}",
        loaded_program_names()
    );
    drop(t);
    let t = watch(&[]);
    let (inc, _) = next(&t, "incident", &id, Duration::from_secs(20));
    orchestrator.stop().unwrap();
    assert_eq!(s(&inc, "outcome"), "late", "{inc}");
    t.stop();
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// Runs a tool inside the lab's orchestrator namespace; its stdout when it succeeded.
fn in_host_ns(tool: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", "e2b-host", tool])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
