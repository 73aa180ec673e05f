//! Issue 12: `tracer watch` on the lab: one incident per broken sandbox with the right id and
//! cause, none for healthy ones, `resolved` after healing, recycled slots attributed to the
//! new id, late replies as one `late` incident with their delays, Prometheus scraping its
//! metrics, Markdown reports, and nothing left attached after SIGKILL. Issue 27: `--log-http`
//! posting every record, stamped for E2B's log pipeline, to a real HTTP receiver. Root; the
//! lab lock serializes these tests.
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

/// Issue 27 (failure storms): six sandboxes broken each in its own namespace, one zoom-in slot.
/// A slot is freed as soon as its attempt is handed to the judge, and zoom-ins started while
/// others wait attach no tcx (their devices are blind spots saying why); each verdict is still
/// followed hop by hop and names its own namespace's rule.
#[test]
fn a_storm_of_separate_faults_is_followed_one_by_one_without_tcx() {
    let Some(mut lab) = lab_up(
        "watch_storm",
        LabConfig {
            sandboxes: 6,
            ..Default::default()
        },
    ) else {
        return;
    };
    let ids = lab.sandbox_ids();
    for i in 0..ids.len() {
        lab.break_fault(i, Fault::ForwardDrop).unwrap();
    }
    let t = watch(&["--max-zoom", "1"]);
    let orchestrator = lab.orchestrator_loop();
    let mut incidents: HashMap<String, Value> = HashMap::new();
    while incidents.len() < ids.len() {
        let (v, _) = t.next_json(Duration::from_secs(30), |v| v["type"] == "incident");
        incidents.insert(s(&v, "sandbox.id").to_string(), v);
    }
    orchestrator.stop().unwrap();
    t.stop_and_collect();
    let mut without_tcx = 0;
    for (i, id) in ids.iter().enumerate() {
        let v = &incidents[id];
        assert_eq!(s(v, "localized"), "followed", "{v}");
        assert_eq!(
            (s(v, "outcome"), s(v, "drop.netns"), s(v, "drop.hook")),
            ("dropped", format!("ns-{}", i + 1).as_str(), "FORWARD"),
            "{v}"
        );
        assert!(s(v, "drop.rule").contains("--dport 49983 -j DROP"), "{v}");
        assert!(!v["hops"].as_array().unwrap().is_empty(), "{v}");
        let storm = v["blind_spots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b.as_str().unwrap_or("").contains("a failure storm"));
        without_tcx += usize::from(storm);
    }
    assert!(
        without_tcx >= 1,
        "zoom-ins started while others waited attach no tcx"
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

/// Issue 27: `watch --log-http` posts every record to an HTTP receiver (this test's, on
/// 127.0.0.1 inside the lab's orchestrator namespace, where the watcher runs) as NDJSON
/// batches, each record stamped with sandboxID, timestamp, service and node; a refused post is
/// retried; at exit, what waits is posted; nothing is posted twice or left behind. The records
/// posted are kept in target/test-artifacts/watch-log-http.ndjson.
#[test]
fn records_are_posted_as_ndjson_batches_to_an_http_receiver() {
    let Some(mut lab) = lab_up("watch_log_http", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    // The first post is answered 503: the watcher retries it (backoff 0.5 s).
    let receiver = Receiver::start("/var/run/netns/e2b-host", 1);
    let url = format!("http://127.0.0.1:{}/tracer", receiver.port);
    let started = tracer::report::format::rfc3339(unix_ns());
    let t = watch(&["--log-http", &url, "--node", "lab-node-7", "--repeat-every", "1s"]);
    let orchestrator = lab.orchestrator_loop();
    let (inc, mut printed) = next(&t, "incident", &id, Duration::from_secs(20));
    printed.push(inc.clone());
    let (rep, before) = next(&t, "repeat", &id, Duration::from_secs(20));
    printed.extend(before);
    printed.push(rep);
    // The incident has been posted (batches go within 1 s, the retry 0.5 s later).
    let posted = lab::testing::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        receiver
            .accepted()
            .iter()
            .any(|v| v["type"] == "incident")
            .then_some(())
    });
    assert!(posted.is_some(), "no incident posted; stderr: {}", t.stderr());
    orchestrator.stop().unwrap();
    // SIGINT: the last repeat counts are printed and posted before the watcher exits.
    let (rest, stderr) = t.stop_and_collect_with_stderr();
    printed.extend(rest);
    let ended = tracer::report::format::rfc3339(unix_ns());
    let posts = receiver.stop();

    assert!(posts.len() >= 2, "the refused post and its retry: {posts:?}");
    assert_eq!(posts[0].status, 503);
    for p in &posts {
        assert_eq!((p.method.as_str(), p.path.as_str()), ("POST", "/tracer"), "{p:?}");
        assert_eq!(p.content_type, "application/x-ndjson", "{p:?}");
        assert!(!p.body.is_empty() && p.body.ends_with(b"\n"), "NDJSON: {p:?}");
    }
    let accepted = receiver_records(posts.iter().filter(|p| p.status == 200));
    assert!(!accepted.is_empty());
    // What the receiver took is kept, as a log pipeline would see it.
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let bodies: Vec<u8> = posts
        .iter()
        .filter(|p| p.status == 200)
        .flat_map(|p| p.body.clone())
        .collect();
    std::fs::write(artifacts.join("watch-log-http.ndjson"), bodies).unwrap();
    for v in &accepted {
        assert_eq!(
            v["sandboxID"],
            id.as_str(),
            "the broken sandbox's id at the top level: {v}"
        );
        assert_eq!(v["sandboxID"], v["sandbox"]["id"], "{v}");
        assert_eq!((s(v, "service"), s(v, "node")), ("tracer", "lab-node-7"), "{v}");
        let ts = s(v, "timestamp");
        let shape = ts.len() == 24
            && ts.ends_with('Z')
            && ts.as_bytes()[10] == b'T'
            && ts.as_bytes()[19] == b'.'
            && ts[20..23].bytes().all(|b| b.is_ascii_digit());
        assert!(shape, "RFC 3339, UTC, with milliseconds: {v}");
        assert!(
            started.as_str() <= ts && ts <= ended.as_str(),
            "made during the test ({started} .. {ended}): {v}"
        );
    }
    let incident = accepted
        .iter()
        .find(|v| v["type"] == "incident")
        .expect("an incident posted");
    assert_eq!(
        (s(incident, "outcome"), s(incident, "incident_id")),
        ("dropped", s(&inc, "incident_id")),
        "{incident}"
    );
    // Nothing left behind: what stdout printed was posted, once each, and nothing else.
    let key = |v: &Value| serde_json::to_string(v).unwrap();
    let mut on_stdout: Vec<String> = printed.iter().map(key).collect();
    let mut on_http: Vec<String> = accepted.iter().map(key).collect();
    on_stdout.sort();
    on_http.sort();
    assert_eq!(
        on_http, on_stdout,
        "stdout and the receiver differ; stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{} records posted to {url}, 0 dropped", on_http.len())),
        "{stderr}"
    );
    assert!(stderr.contains("failed (it answered 503)"), "{stderr}");
    let released = lab::testing::wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        loaded_program_names()
            .iter()
            .all(|n| !our_programs().contains(&n.as_str()))
            .then_some(())
    });
    assert!(released.is_some(), "{:?}", loaded_program_names());
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Every record of the posts' NDJSON bodies, each line checked to be one JSON object.
fn receiver_records<'a>(posts: impl Iterator<Item = &'a Post>) -> Vec<Value> {
    posts
        .flat_map(|p| p.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()))
        .map(|l| {
            let v: Value = serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(l)));
            assert!(v.is_object(), "one object per line: {v}");
            v
        })
        .collect()
}

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Post {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
    status: u16,
}

/// An HTTP receiver on 127.0.0.1 inside a namespace (Vector's `http_server` as the watcher
/// sees it): answers the first `refuse` requests 503, the rest 200, and keeps them all.
struct Receiver {
    port: u16,
    posts: std::sync::Arc<std::sync::Mutex<Vec<Post>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(netns: &str, refuse: usize) -> Self {
        use std::{
            net::TcpListener,
            os::fd::AsRawFd as _,
            sync::{Arc, Mutex, atomic::AtomicBool},
        };
        let posts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let netns = netns.to_string();
        let (p, st) = (posts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&netns).expect("open netns");
            // SAFETY: plain syscall; this thread lives and ends in that namespace.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let status = if p.lock().unwrap().len() < refuse {
                            503
                        } else {
                            200
                        };
                        if let Some(post) = serve(conn, status) {
                            p.lock().unwrap().push(post);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the receiver listens");
        Self {
            port,
            posts,
            stop,
            thread: Some(thread),
        }
    }

    /// The records of the posts answered 200 so far.
    fn accepted(&self) -> Vec<Value> {
        let posts = self.posts.lock().unwrap().clone();
        receiver_records(posts.iter().filter(|p| p.status == 200))
    }

    fn stop(mut self) -> Vec<Post> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("receiver thread");
        }
        self.posts.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads one request (head, then Content-Length bytes) and answers `status`.
fn serve(mut conn: std::net::TcpStream, status: u16) -> Option<Post> {
    use std::io::{Read as _, Write as _};
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().ok()?;
    while data.len() < head_end + len {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let post = Post {
        method: first.next().unwrap_or_default().to_string(),
        path: first.next().unwrap_or_default().to_string(),
        content_type: header("content-type"),
        body: data[head_end..head_end + len].to_vec(),
        status,
    };
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(post)
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
