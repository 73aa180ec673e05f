//! Issues 4 and 5: `tracer trace --vm ID` on the lab names where and why envd connections
//! die, for every lab fault; keeps sandboxes apart; works passively; detaches cleanly; and
//! fails clearly. Root; the lab lock serializes these tests.
mod common;

use lab::testing::lab_up;
use std::{process::Command, time::Duration};

use common::{Tracer, loaded_program_names, our_programs, probe, tracer};
use lab::{Datapath, Fault, GuestKind, IptablesBackend, LabConfig, Network, Topology};
use serde_json::Value;

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.').fold(v, |v, k| &v[k]).as_str().unwrap_or("")
}

/// The kinds of the actors the engine named as the cause (`firewall_rule`, `route`, ...).
fn causes(v: &Value) -> Vec<String> {
    v["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["role"] == "cause")
        .map(|a| a["id"]["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

/// What the verdict must name for each fault, on sandbox 0 (ns-1) of a two-sandbox lab.
fn expect(fault: Fault, v: &Value) {
    let ctx = format!("{}: {}", fault.name(), serde_json::to_string_pretty(v).unwrap());
    let is = |path: &str, want: &str| assert_eq!(s(v, path), want, "{path} — {ctx}");
    let has = |path: &str, want: &str| {
        assert!(
            s(v, path).contains(want),
            "{path} should contain {want:?} — {ctx}"
        )
    };
    match fault {
        Fault::ForwardDrop | Fault::ForwardPolicyDrop | Fault::UserChainDrop => {
            is("outcome", "dropped");
            is("drop.direction", "request");
            is("drop.netns", "ns-1");
            is("drop.hook", "FORWARD");
            is("drop.table", "filter");
            is("drop.reason", "NETFILTER_DROP");
            match fault {
                Fault::ForwardDrop => {
                    is("drop.chain", "FORWARD");
                    is(
                        "drop.rule",
                        "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP",
                    );
                }
                Fault::ForwardPolicyDrop => is("drop.rule", "-P FORWARD DROP"),
                _ => {
                    is("drop.chain", "LAB-GUARD");
                    is("drop.rule", "-A LAB-GUARD -p tcp -m tcp --dport 49983 -j DROP");
                }
            }
        }
        Fault::ReplyDrop => {
            is("outcome", "dropped");
            is("drop.direction", "reply");
            is("drop.netns", "ns-1");
            is("drop.hook", "FORWARD");
            has("drop.rule", "--sport 49983");
        }
        Fault::HostInputDrop => {
            is("outcome", "dropped");
            is("drop.direction", "reply");
            is("drop.netns", "e2b-host");
            is("drop.hook", "INPUT");
            is("drop.chain", "INPUT");
            has("drop.rule", "-A INPUT -i veth-1");
        }
        Fault::NoDnat => {
            // The first difference is the destination left unrewritten; the missing DNAT is
            // named for it.
            is("divergence.field", "destination");
            is("divergence.netns", "ns-1");
            is("divergence.observed", "10.11.0.1:49983");
            assert_eq!(causes(v), ["missing_rule"], "{ctx}");
            let a = &v["actors"][0]["id"];
            assert_eq!(
                (a["table"].as_str(), a["chain"].as_str()),
                (Some("nat"), Some("PREROUTING")),
                "{ctx}"
            );
        }
        Fault::TapDown | Fault::TapMissing => {
            // Without the tap's route the SYN leaves by another device: that is the
            // difference, and the tap's state or the route taken instead is named.
            is("divergence.netns", "ns-1");
            assert!(
                v["actors"].to_string().contains("tap0") || v["divergence"].to_string().contains("tap0"),
                "the tap is named — {ctx}"
            );
            let why = v["explained_by"].to_string();
            assert!(why.contains("tap0"), "the doctor tie-in names tap0 — {ctx}");
        }
        Fault::NoReader => {
            is("outcome", "unreachable");
            is("unreachable.kind", "neighbour");
            is("unreachable.netns", "ns-1");
            is("unreachable.device", "tap0");
            is("unreachable.address", "169.254.0.21");
        }
        Fault::GuestNoListener => {
            is("outcome", "reset");
            is("reset.by", "guest");
            is("reset.netns", "ns-1");
        }
        Fault::IpForwardOff => {
            is("outcome", "dropped");
            is("drop.netns", "ns-1");
            is("drop.device", "eth0");
            is("drop.function", "ip_error");
            assert!(v["explained_by"].to_string().contains("ip_forward"), "{ctx}");
        }
        Fault::RpFilter => {
            is("outcome", "dropped");
            is("drop.netns", "ns-1");
            is("drop.device", "eth0");
            is("drop.reason", "IP_RPFILTER");
        }
        Fault::HostRouteMissing => {
            is("outcome", "unreachable");
            is("unreachable.kind", "no_route");
            is("unreachable.netns", "e2b-host");
            is("unreachable.address", "10.11.0.1");
        }
        Fault::PreroutingDropNft => {
            is("outcome", "dropped");
            is("drop.netns", "ns-1");
            is("drop.hook", "PREROUTING");
            is("drop.table", "ip lab-fault");
            is("drop.chain", "pre");
            assert!(
                v["drop"]["rule"].is_null(),
                "no counter: the rule is not guessed — {ctx}"
            );
            has("drop.rule_note", "--nft-trace");
        }
        Fault::PreroutingDropNftCounter => {
            is("drop.table", "ip lab-fault-counter");
            is("drop.chain", "pre");
            has("drop.rule", "tcp dport 49983 counter drop");
        }
        Fault::WrongSlotRoute => {
            // Issue 23: the route read before the probe leads into ns-2; nothing is sent there.
            is("outcome", "misdirected");
            is("misdirected.by", "route");
            is("misdirected.netns", "ns-2");
            is("misdirected.out_device", "veth-2");
            assert!(v["hops"].as_array().is_some_and(|h| h.is_empty()), "{ctx}");
        }
        Fault::SandboxVethDown => {
            // ARP for the sandbox's end goes out a veth without carrier: the link facts say why.
            is("outcome", "unreachable");
            is("unreachable.kind", "neighbour");
            is("unreachable.netns", "e2b-host");
            is("unreachable.device", "veth-1");
            is("unreachable.address", "10.12.0.3");
            has("summary", "veth-1 has no carrier");
            has("summary", "eth0 is down");
        }
        Fault::HostVethDown => {
            is("outcome", "unreachable");
            is("unreachable.kind", "no_route");
            is("unreachable.netns", "e2b-host");
            is("unreachable.errno", "ENETUNREACH");
            assert!(
                v["explained_by"].to_string().contains("veth-1 in e2b-host: DOWN"),
                "{ctx}"
            );
        }
        Fault::BlackholeRoute => {
            is("outcome", "unreachable");
            is("unreachable.kind", "blackhole");
            is("unreachable.netns", "e2b-host");
            is("unreachable.errno", "EINVAL");
            has("summary", "route blackhole 10.11.0.1/32 in table main");
        }
        Fault::ProhibitRule => {
            is("outcome", "unreachable");
            is("unreachable.kind", "prohibited");
            is("unreachable.netns", "e2b-host");
            is("unreachable.errno", "EACCES");
            has("summary", "policy rule 100: from all to 10.11.0.1/32 prohibit");
        }
        Fault::VmmStopped => {
            is("outcome", "queued");
            is("queued.queue", "tap");
            is("queued.netns", "ns-1");
            is("queued.device", "tap0");
            is("queued.reader.state", "T");
            has("summary", "never read");
            has("summary", "is stopped (state T)");
        }
        Fault::TapQueueFull => {
            is("outcome", "dropped");
            is("drop.netns", "ns-1");
            is("drop.device", "tap0");
            is("drop.reason", "FULL_RING");
            has("summary", "is stopped (state T)");
        }
        Fault::RawReplyDrop | Fault::MangleReplyDrop => {
            is("outcome", "dropped");
            is("drop.direction", "reply");
            is("drop.netns", "ns-1");
            is("drop.device", "tap0");
            is("drop.reason", "NETFILTER_DROP");
            if fault == Fault::RawReplyDrop {
                is("drop.hook", "PREROUTING");
                is("drop.table", "raw");
                is(
                    "drop.rule",
                    "-A PREROUTING -i tap0 -p tcp -m tcp --sport 49983 -j DROP",
                );
            } else {
                is("drop.hook", "FORWARD");
                is("drop.table", "mangle");
                is(
                    "drop.rule",
                    "-A FORWARD -i tap0 -p tcp -m tcp --sport 49983 -j DROP",
                );
            }
        }
        Fault::NftOddPriority => {
            is("outcome", "dropped");
            is("drop.direction", "request");
            is("drop.netns", "ns-1");
            is("drop.hook", "FORWARD");
            is("drop.table", "inet lab-odd");
            is("drop.chain", "guard");
            has("drop.rule", "tcp dport 49983 counter drop");
        }
        Fault::ReplyRouteUnreachable => {
            is("outcome", "dropped");
            is("drop.direction", "reply");
            is("drop.netns", "ns-1");
            is("drop.device", "tap0");
            is("drop.function", "ip_error");
            has("summary", "route unreachable 10.12.0.2/32 in table main");
            assert!(
                v["explained_by"].to_string().contains("routes 10.12.0.2"),
                "{ctx}"
            );
        }
        Fault::QdiscDrop => {
            is("outcome", "dropped");
            is("drop.direction", "request");
            is("drop.netns", "e2b-host");
            is("drop.device", "veth-1");
            is("drop.reason", "QDISC_DROP");
        }
        Fault::V2VethNotInSet | Fault::V2CidrNotInSet => {
            // The guest's egress is broken, envd is not: the trace says so.
            is("outcome", "connected");
        }
        Fault::V2HostDrop => {
            is("outcome", "dropped");
            is("drop.direction", "reply");
            is("drop.netns", "e2b-host");
            is("drop.hook", "INPUT");
            is("drop.table", "inet v2-host-firewall");
            is("drop.chain", "lab-input-1");
            has("drop.rule", "tcp sport 49983 counter drop");
        }
        Fault::V2ReplyDrop => {
            // E2B's slot firewall rules have no counters: table and chain, and the note.
            is("outcome", "dropped");
            is("drop.direction", "reply");
            is("drop.netns", "ns-1");
            is("drop.hook", "PREROUTING");
            is("drop.table", "inet slot-firewall");
            is("drop.chain", "PREROUTE_FILTER");
            has("drop.rule_note", "--nft-trace");
        }
        Fault::V2MangleReplyDrop => {
            // E2B's egress DSCP chain (postrouting, mangle priority): named like the filter.
            is("outcome", "dropped");
            is("drop.direction", "reply");
            is("drop.netns", "ns-1");
            is("drop.hook", "POSTROUTING");
            is("drop.table", "inet slot-firewall");
            is("drop.chain", "postroute_mangle");
            has("drop.rule_note", "--nft-trace");
            let a = &v["actors"][0]["id"];
            assert_eq!(
                (a["kind"].as_str(), a["table"].as_str(), a["chain"].as_str()),
                (
                    Some("firewall_rule"),
                    Some("slot-firewall"),
                    Some("postroute_mangle")
                ),
                "{ctx}"
            );
        }
        Fault::SlowGuest => {
            is("outcome", "late");
            is("late.reply", "syn_ack");
            let ms = |k: &str| v["late"][k].as_f64().unwrap_or(-1.0);
            assert!(ms("reply_ms") >= 80.0, "the guest waits 80 ms — {ctx}");
            assert!(
                ms("timeout_ms") > 45.0 && ms("timeout_ms") < 80.0,
                "the probe's 50 ms — {ctx}"
            );
            assert!(ms("after_timeout_ms") > 0.0, "{ctx}");
            is("late.fate.kind", "reset");
            is("late.fate.netns", "e2b-host");
        }
    }
    assert_eq!(causes(v), cause_of(fault), "the engine's cause — {ctx}");
    rests_on_evidence(v, &ctx);
}

/// The kind of actor the engine names as the cause of each lab fault.
fn cause_of(fault: Fault) -> Vec<&'static str> {
    let kind = match fault {
        Fault::ForwardDrop
        | Fault::UserChainDrop
        | Fault::ReplyDrop
        | Fault::HostInputDrop
        | Fault::PreroutingDropNft
        | Fault::PreroutingDropNftCounter
        | Fault::RawReplyDrop
        | Fault::MangleReplyDrop
        | Fault::NftOddPriority
        | Fault::V2HostDrop
        | Fault::V2ReplyDrop
        | Fault::V2MangleReplyDrop => "firewall_rule",
        Fault::ForwardPolicyDrop => "chain_policy",
        Fault::NoDnat => "missing_rule",
        Fault::TapDown | Fault::TapMissing | Fault::SandboxVethDown | Fault::HostVethDown => "link",
        Fault::NoReader | Fault::VmmStopped | Fault::TapQueueFull => "vmm",
        Fault::GuestNoListener | Fault::SlowGuest => "guest",
        Fault::IpForwardOff | Fault::RpFilter => "sysctl",
        Fault::HostRouteMissing => "missing_route",
        Fault::WrongSlotRoute | Fault::BlackholeRoute | Fault::ReplyRouteUnreachable => "route",
        Fault::ProhibitRule => "policy_rule",
        Fault::QdiscDrop => "qdisc",
        // The guest's own egress is broken, not envd's path: nothing is the cause.
        Fault::V2VethNotInSet | Fault::V2CidrNotInSet => return Vec::new(),
    };
    vec![kind]
}

/// Every claim of the summary follows from an event or a fact read (listed in `evidence`).
fn rests_on_evidence(v: &Value, ctx: &str) {
    let summary = s(v, "summary");
    let evidence: Vec<&Value> = v["evidence"].as_array().into_iter().flatten().collect();
    let hops = v["hops"].as_array().cloned().unwrap_or_default();
    let read = |what: &str| {
        evidence
            .iter()
            .any(|e| e["kind"] == "read" && e["source"].as_str().is_some_and(|s| s.starts_with(what)))
    };
    for (i, e) in evidence.iter().enumerate() {
        assert_eq!(e["id"].as_u64(), Some(i as u64), "ids are indexes — {ctx}");
        assert!(
            matches!(e["kind"].as_str(), Some("event" | "read")),
            "evidence items are events or reads — {ctx}"
        );
        if e["kind"] == "event" {
            let hop = e["hop"].as_u64().unwrap_or(u64::MAX) as usize;
            assert!(hop < hops.len(), "an event names its hop — {ctx}");
        }
    }
    if summary.contains("read the SYN") {
        assert!(
            hops.iter()
                .any(|h| h["point"] == "consumed" && h["leg"] == "request"),
            "'read the SYN' needs the tap read (consume) — {ctx}"
        );
    }
    if summary.contains("(pid ") {
        assert!(read("/proc"), "a VMM state needs /proc read — {ctx}");
    }
    if summary.contains("no carrier") || summary.contains(" is down") {
        assert!(read("netlink"), "link states need the netlink read — {ctx}");
    }
    if summary.contains("policy rule")
        || summary.contains("route blackhole")
        || summary.contains("route unreachable")
    {
        assert!(read("netlink"), "a rule or route needs it read — {ctx}");
    }
}

/// Probe attempts for the QEMU guest.
const SLOW: &[&str] = &["--timeout", "1s"];

fn assert_connected(id: &str) -> Value {
    assert_connected_with(id, &[])
}

fn assert_connected_with(id: &str, extra: &[&str]) -> Value {
    let (code, v, err) = probe(id, extra);
    assert_eq!(s(&v, "outcome"), "connected", "{v}\n{err}");
    assert_eq!(code, 0);
    v
}

#[test]
fn every_lab_fault_is_named() {
    let Some(mut lab) = lab_up(
        "every_lab_fault_is_named",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let other = lab.sandbox_ids()[1].clone();
    // Discovery remembers the sandbox: when its VMM is what dies, the trace still finds it.
    assert_eq!(tracer(&["list"]).0, 0);
    assert_connected(&id);
    for &fault in Fault::ALL.iter().filter(|f| f.applies(Datapath::V1)) {
        lab.break_fault(0, fault).unwrap();
        let (code, v, err) = probe(&id, &[]);
        assert_eq!(code, 1, "{}: a failure found exits 1; {err}", fault.name());
        assert_eq!(s(&v, "sandbox.id"), id);
        assert!(
            v["hops"].as_array().is_some_and(|h| !h.is_empty())
                || ["unreachable", "misdirected"].contains(&s(&v, "outcome")),
            "{v}"
        );
        expect(fault, &v);
        // The other sandbox is traced as healthy meanwhile (wrong-slot-route sends sandbox
        // 1's traffic into it, but its own path stays intact).
        assert_connected(&other);
        lab.heal(0).unwrap();
    }
    assert_connected(&id);
}

/// E2B's datapath v2 (nft NAT, v2-host-firewall): every fault that applies is named as on v1,
/// and the v2 ones too.
#[test]
fn every_lab_fault_is_named_on_v2() {
    let Some(mut lab) = lab_up(
        "every_lab_fault_is_named_on_v2",
        LabConfig {
            sandboxes: 2,
            network: Network::V2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let other = lab.sandbox_ids()[1].clone();
    assert_eq!(tracer(&["list"]).0, 0);
    assert_connected(&id);
    for &fault in Fault::ALL.iter().filter(|f| f.applies(Datapath::V2)) {
        lab.break_fault(0, fault).unwrap();
        let (code, v, err) = probe(&id, &[]);
        let want = if fault.breaks_envd() { 1 } else { 0 };
        assert_eq!(code, want, "{}: {err}\n{v}", fault.name());
        expect(fault, &v);
        assert_connected(&other);
        lab.heal(0).unwrap();
    }
    assert_connected(&id);
    // With --nft-trace the uncounted slot-firewall rule is named exactly.
    lab.break_fault(0, Fault::V2ReplyDrop).unwrap();
    let (_, v, err) = probe(&id, &["--nft-trace"]);
    assert!(
        s(&v, "drop.rule").starts_with("iifname tap0 tcp sport 49983 drop # handle "),
        "{v}\n{err}"
    );
    lab.heal(0).unwrap();
    lab.break_fault(0, Fault::V2MangleReplyDrop).unwrap();
    let (_, v, err) = probe(&id, &["--nft-trace"]);
    assert!(
        s(&v, "drop.rule").starts_with("oifname eth0 tcp sport 49983 drop # handle "),
        "{v}\n{err}"
    );
}

#[test]
fn healthy_journey_shows_every_hop_and_the_sandbox() {
    let Some(lab) = lab_up("healthy_journey_shows_every_hop", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let v = assert_connected(&id);
    assert_eq!(s(&v, "sandbox.netns"), "ns-1");
    assert_eq!(s(&v, "sandbox.tap"), "tap0");
    assert_eq!(s(&v, "sandbox.guest_ip"), "169.254.0.21");
    assert_eq!(s(&v, "sandbox.host_ip"), "10.11.0.1");
    assert!(v["sandbox"]["pid"].as_u64().is_some());
    let hops = v["hops"].as_array().unwrap();
    let seen = |leg: &str, ns: &str, dev: &str, point: &str| {
        hops.iter()
            .any(|h| h["leg"] == leg && h["netns"] == ns && h["device"] == dev && s(h, "point") == point)
    };
    assert!(
        seen("request", "e2b-host", "veth-1", "tcx/egress"),
        "left the host by veth-1"
    );
    assert!(
        seen("request", "ns-1", "eth0", "tcx/ingress"),
        "entered ns-1 by eth0"
    );
    assert!(
        hops.iter().any(|h| h["netns"] == "ns-1"
            && s(h, "point") == "nf/PREROUTING"
            && s(h, "tuple").contains("169.254.0.21:49983")),
        "DNATed to the guest in PREROUTING"
    );
    assert!(seen("request", "ns-1", "tap0", "xmit"), "handed to tap0");
    assert!(seen("request", "ns-1", "tap0", "consumed"), "read by the VMM");
    assert!(
        seen("reply", "ns-1", "tap0", "tcx/ingress"),
        "the guest's SYN-ACK came in on tap0"
    );
    assert!(
        seen("reply", "e2b-host", "veth-1", "tcx/ingress"),
        "and back into the host"
    );
    assert!(
        hops.iter().any(|h| s(h, "detail") == "SYN_SENT → ESTABLISHED"),
        "the client socket connected"
    );
}

#[test]
fn another_sandbox_is_never_mixed_in_and_passive_mode_sees_the_orchestrator() {
    let Some(mut lab) = lab_up(
        "passive_mode",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    // Healthy: all attempts of sandbox 1 connect; sandbox 2's traffic is not reported.
    let t = Tracer::start(&["trace", "--vm", &id, "--json"]);
    assert!(lab.connect(1, 20).unwrap().succeeded());
    assert!(lab.connect(0, 5).unwrap().succeeded());
    let (first, _) = t.next_json(Duration::from_secs(10), |v| v["type"] == "journey");
    assert_eq!(s(&first, "outcome"), "connected", "{first}");
    assert_eq!(t.stop(), 0, "only connections: exit 0");

    // Broken: the orchestrator's failing attempts are caught and aggregated.
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    let t = Tracer::start(&["trace", "--vm", &id, "--json"]);
    assert!(!lab.connect(0, 20).unwrap().succeeded());
    assert!(lab.connect(1, 10).unwrap().succeeded());
    let (drop, before) = t.next_json(Duration::from_secs(10), |v| v["outcome"] == "dropped");
    assert!(before.is_empty(), "nothing else first: {before:?}");
    assert_eq!(s(&drop, "drop.netns"), "ns-1");
    assert_eq!(s(&drop, "target"), "10.11.0.1:49983");
    // The sandbox-2 connections made meanwhile must not appear; the 20 failures are one
    // journey plus a repeat count, printed at exit.
    // SAFETY: signal to our own child.
    let rest = t.stop_and_collect();
    let repeat = rest
        .iter()
        .find(|v| v["type"] == "repeat")
        .unwrap_or_else(|| panic!("no repeat record: {rest:?}"));
    assert!(repeat["count"].as_u64().unwrap() >= 15, "{repeat}");
    for v in rest.iter().chain([&drop]) {
        assert_eq!(s(v, "sandbox.netns"), "ns-1");
        assert_ne!(s(v, "target"), "10.11.0.2:49983", "sandbox 2 mixed in: {v}");
        for h in v["hops"].as_array().into_iter().flatten() {
            assert_ne!(h["netns"], "ns-2", "sandbox 2 mixed in: {v}");
        }
    }
}

#[test]
fn bridge_variant_shows_the_bridge_hops_and_drops() {
    let Some(mut lab) = lab_up(
        "bridge_variant",
        LabConfig {
            topology: Topology::Bridge,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let v = assert_connected(&id);
    let hops = v["hops"].as_array().unwrap();
    assert!(
        hops.iter()
            .any(|h| h["device"] == "br0" && s(h, "point") == "xmit"),
        "through br0: {v}"
    );
    assert!(
        hops.iter()
            .any(|h| h["device"] == "tap0" && s(h, "point") == "tcx/egress"),
        "out the tap port: {v}"
    );
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    let (_, v, _) = probe(&id, &[]);
    assert_eq!(s(&v, "drop.out_device"), "br0", "{v}");
    lab.heal(0).unwrap();
    lab.break_fault(0, Fault::NoReader).unwrap();
    let (_, v, _) = probe(&id, &[]);
    // With the guest's MAC still in the neighbour cache the bridge drops the frame for its
    // disabled port; without it, ARP on br0 goes unanswered. Both name the bridge.
    match s(&v, "outcome") {
        "dropped" => {
            assert_eq!(s(&v, "drop.device"), "br0", "dropped at the bridge: {v}");
            assert_eq!(s(&v, "drop.function"), "br_dev_xmit", "{v}");
        }
        _ => {
            assert_eq!(s(&v, "outcome"), "unreachable", "{v}");
            assert_eq!(s(&v, "unreachable.device"), "br0", "{v}");
        }
    }
}

#[test]
fn the_legacy_backend_names_rules_on_both_legs_and_in_every_table() {
    let Some(mut lab) = lab_up(
        "legacy_backend_faults",
        LabConfig {
            iptables: IptablesBackend::Legacy,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    for fault in [
        Fault::ForwardDrop,
        Fault::UserChainDrop,
        Fault::RawReplyDrop,
        Fault::MangleReplyDrop,
        Fault::HostInputDrop,
    ] {
        lab.break_fault(0, fault).unwrap();
        let (code, v, err) = probe(&id, &[]);
        assert_eq!(code, 1, "{}: {err}", fault.name());
        expect(fault, &v);
        lab.heal(0).unwrap();
    }
    assert_connected(&id);
}

#[test]
fn qemu_guest_healthy_forward_drop_and_no_reader() {
    let Some(mut lab) = lab_up(
        "qemu_guest",
        LabConfig {
            guest: GuestKind::Qemu,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    assert_eq!(tracer(&["list"]).0, 0);
    // An emulated guest under the load of a test run can take longer than 50 ms to answer.
    assert_connected_with(&id, SLOW);
    for fault in [Fault::ForwardDrop, Fault::NoReader] {
        lab.break_fault(0, fault).unwrap();
        let (code, v, _) = probe(&id, SLOW);
        assert_eq!(code, 1);
        expect(fault, &v);
        lab.heal(0).unwrap();
    }
    assert_connected_with(&id, SLOW);
}

#[test]
fn nft_trace_names_an_uncounted_rule_and_removes_itself() {
    let Some(mut lab) = lab_up("nft_trace", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::PreroutingDropNft).unwrap();
    // Rule counters move with traffic; the set of tables and rules must not.
    let shape = || {
        lab::sh::run_in(Some("ns-1"), "nft", &["-a", "list", "ruleset"])
            .unwrap()
            .lines()
            .filter(|l| !l.contains("counter"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = shape();
    let (_, v, err) = probe(&id, &["--nft-trace"]);
    assert!(s(&v, "drop.rule").contains("tcp dport 49983 drop"), "{v}\n{err}");
    let after = shape();
    assert_eq!(before, after, "the ruleset is exactly as before");
}

#[test]
fn nothing_stays_attached_after_exit_signal_or_panic() {
    let Some(lab) = lab_up("detach", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let ours = || {
        loaded_program_names()
            .into_iter()
            .filter(|n| our_programs().contains(&n.as_str()))
            .collect::<Vec<_>>()
    };
    let gone = || {
        lab::testing::wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            ours().is_empty().then_some(())
        })
    };
    assert!(gone().is_some(), "programs of an earlier run: {:?}", ours());

    assert_connected(&id);
    assert!(gone().is_some(), "after a normal exit: {:?}", ours());

    for signal in [libc::SIGINT, libc::SIGTERM] {
        let t = Tracer::start(&["trace", "--vm", &id]);
        assert!(!ours().is_empty(), "attached while running");
        // SAFETY: signal to our own child.
        unsafe { libc::kill(t.pid() as i32, signal) };
        t.wait();
        assert!(gone().is_some(), "after signal {signal}: {:?}", ours());
    }

    let out = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["trace", "--vm", &id, "--probe"])
        .env("TRACER_TEST_PANIC", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(101),
        "it panicked (the test build needs --features tracer/test-hooks, as `cargo xtask test` passes)"
    );
    assert!(gone().is_some(), "after a panic: {:?}", ours());
}

#[test]
fn errors_are_one_sentence_with_the_exit_code_of_their_kind() {
    let Some(lab) = lab_up("errors", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();

    let (code, _, err) = tracer(&["trace", "--vm", "NOT-AN-ID", "--probe"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a sandbox id"), "{err}");

    let (code, _, err) = tracer(&["trace", "--vm", "zzzzzzzzzzzzzzzzzzzz", "--probe"]);
    assert_eq!(code, 5, "no such sandbox");
    assert!(
        err.contains("no sandbox zzzzzzzzzzzzzzzzzzzz") && err.contains(&id),
        "lists the known ids: {err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["trace", "--vm", &id, "--probe"])
        .env("TRACER_BTF", "/nonexistent/vmlinux")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "the kernel lacks what is needed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("BTF"), "{out:?}");

    // Without privileges (as nobody).
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_tracer"),
            "trace",
            "--vm",
            &id,
        ])
        .output()
        .unwrap();
    if out.status.code() != Some(126) && out.status.code() != Some(127) {
        assert_eq!(out.status.code(), Some(3), "no privileges: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs root"),
            "{out:?}"
        );
    }

    let (code, _, err) = tracer(&["trace", "--probe"]);
    assert_eq!(code, 2, "usage error: {err}");
}

/// Issue 15: on a kernel whose consume_skb and tcp_send_reset pass fewer arguments (before
/// 6.3 and 6.10), the older program forms are loaded: the trace says what it loses and still
/// names the fault. The test hook loads them here as such a kernel's verifier would force.
#[test]
fn older_tracepoint_forms_degrade_and_still_name_the_fault() {
    let Some(mut lab) = lab_up("older_tracepoints", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let older = |id: &str| {
        let out = Command::new(common::tracer_bin())
            .args(["trace", "--vm", id, "--probe", "--json"])
            .env("TRACER_TEST_OLDER_TRACEPOINTS", "1")
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code(),
            v,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, v, err) = older(&id);
    assert_eq!((code, s(&v, "outcome")), (Some(0), "connected"), "{v}\n{err}");
    assert!(
        err.contains(
            "warning: tcp_send_reset passes fewer arguments here: traces go without the reason of a RST"
        ) && err.contains("warning: consume_skb passes fewer arguments here"),
        "{err}"
    );
    // The tap's read is still seen, without where it happened.
    let read = v["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["point"] == "consumed" && h["device"] == "tap0")
        .unwrap_or_else(|| panic!("the tap's read: {v}"));
    assert!(read["detail"].is_null(), "{read}");
    // With the newer forms, the same hop says where.
    let (_, v, _) = probe(&id, &[]);
    assert!(v.to_string().contains("freed normally at tun_"), "{v}");

    for fault in [Fault::GuestNoListener, Fault::ForwardDrop] {
        lab.break_fault(0, fault).unwrap();
        let (code, v, err) = older(&id);
        assert_eq!(code, Some(1), "{err}");
        expect(fault, &v);
        lab.heal(0).unwrap();
    }
}
