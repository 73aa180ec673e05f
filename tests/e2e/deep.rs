//! Issue 16: deep mode. `trace --deep --pcapng FILE` on a broken lab sandbox: every hop carries
//! its packet and skb facts, the drop its kernel stack, the verdict the flow's conntrack
//! entry, routes and neighbours; the capture reads back in Debian's tshark with one interface
//! per hop place, comments and TCP flags; `tracer report` renders the saved JSON. Root.
mod common;

use std::{path::PathBuf, process::Command};

use common::{probe, tracer};
use lab::{Fault, LabConfig, testing::lab_up};
use serde_json::Value;

/// A directory for one test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tracer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hop<'a>(v: &'a Value, netns: &str, device: &str, point: &str) -> &'a Value {
    v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["netns"] == netns && h["device"] == device && h["point"] == point)
        .unwrap_or_else(|| panic!("no hop {netns} {device} {point}: {v:#}"))
}

/// `tshark -r FILE` fields, one row per packet.
fn tshark(file: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r"])
        .arg(file)
        .args(["-T", "fields", "-E", "separator=\t"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

#[test]
fn deep_trace_capture_and_report_of_a_broken_sandbox() {
    let Some(mut lab) = lab_up("deep", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let dir = TempDir::new("deep");
    let pcap = dir.0.join("forward-drop.pcapng");
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    let (code, v, err) = probe(&id, &["--deep", "--pcapng", pcap.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}\n{v:#}");
    assert_eq!(v["outcome"], "dropped", "{v:#}");

    // Every hop: the packet's header fields; where there is an Ethernet header, its MACs.
    let ingress = &hop(&v, "ns-1", "eth0", "tcx/ingress")["deep"];
    assert!(ingress["len"].as_u64().unwrap() >= 54, "{ingress}");
    assert_eq!(ingress["l2"]["ethertype"], "0x0800", "{ingress}");
    assert_eq!(ingress["l2"]["src"].as_str().unwrap().len(), 17, "{ingress}");
    assert!(
        ingress["ttl"].as_u64().unwrap() > 0 && ingress["window"].as_u64().unwrap() > 0,
        "{ingress}"
    );
    assert!(
        ingress["conntrack"].is_null(),
        "no conntrack before PREROUTING: {ingress}"
    );
    // After PREROUTING's DNAT the skb holds a new, NATed conntrack entry.
    let fwd = &hop(&v, "ns-1", "eth0", "nf/FORWARD")["deep"];
    assert_eq!(fwd["conntrack"]["state"], "NEW", "{fwd}");
    assert!(
        fwd["conntrack"]["status"].to_string().contains("DST_NAT"),
        "{fwd}"
    );
    // The drop: the kernel stack, through the netfilter hook.
    let drop = &hop(&v, "ns-1", "eth0", "drop")["deep"];
    let stack = drop["stack"].to_string();
    assert!(stack.contains("nf_hook_slow"), "{drop}");
    // The verdict: conntrack where it was dropped (never confirmed: no entry), and routing.
    let deep = &v["deep"];
    assert_eq!(deep["conntrack_netns"], "ns-1", "{deep}");
    assert!(
        deep["conntrack_error"].is_null() && deep["conntrack"].as_array().unwrap().is_empty(),
        "{deep}"
    );
    let routes = deep["routing"].as_array().unwrap();
    let host = routes.iter().find(|r| r["netns"] == "e2b-host").unwrap();
    assert!(
        host["route"]
            .as_str()
            .unwrap()
            .contains("via 10.12.0.3 dev veth-1"),
        "{host}"
    );
    assert!(
        host["neighbour"]
            .as_str()
            .unwrap()
            .starts_with("10.12.0.3 lladdr"),
        "{host}"
    );
    assert!(deep["captured_packets"].as_u64().unwrap() >= 4, "{deep}");

    // The capture, as tshark reads it: one interface per place, comments, the SYN's flags.
    let rows = tshark(
        &pcap,
        &[
            "frame.interface_name",
            "frame.comment",
            "tcp.flags.syn",
            "tcp.flags.ack",
        ],
    );
    assert_eq!(
        rows.len() as u64,
        deep["captured_packets"].as_u64().unwrap(),
        "{rows:?}"
    );
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    for want in [
        "e2b-host/veth-1/tcx/egress",
        "ns-1/eth0/tcx/ingress",
        "ns-1/eth0/nf/FORWARD",
        "ns-1/eth0/drop",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    assert!(rows[0][1].starts_with("request #1 copy 1: e2b-host "), "{rows:?}");
    assert!(rows.last().unwrap()[1].contains("verdict: DROPPED"), "{rows:?}");
    assert!(
        rows.iter().all(|r| r[2] == "1" && r[3] == "0"),
        "every copy is the SYN: {rows:?}"
    );

    // The saved JSON, rendered again: as text (as live) and as Markdown.
    let saved = dir.0.join("trace.json");
    std::fs::write(&saved, v.to_string()).unwrap();
    let (code, text, err) = tracer(&["report", saved.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("verdict: DROPPED") && text.contains("kernel stack:") && text.contains("| ct NEW"),
        "{text}"
    );
    let (code, md, err) = tracer(&["report", "--format", "md", saved.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        md.starts_with(&format!("# envd attempt to sandbox `{id}`: dropped")),
        "{md}"
    );
    assert!(
        md.contains("**Rule:** `-A FORWARD -i eth0 -o tap0") && md.contains("```"),
        "{md}"
    );
    let (code, _, err) = tracer(&["report", "/nonexistent/trace.json"]);
    assert_eq!(code, 2, "{err}");

    // A dropped reply: its flow's conntrack entry exists, in the state the handshake left it.
    lab.heal(0).unwrap();
    lab.break_fault(0, Fault::ReplyDrop).unwrap();
    let (code, v, err) = probe(&id, &["--deep"]);
    assert_eq!(code, 1, "{err}");
    let ct = v["deep"]["conntrack"].as_array().unwrap();
    assert!(
        ct.iter()
            .any(|e| e["tcp_state"] == "SYN_RECV" && e["orig"]["dport"] == 49983),
        "{:#}",
        v["deep"]
    );
}
