//! The lab itself (issue 3): built, healthy, broken the way production breaks, healed, and
//! gone without a trace afterwards. Needs root; runs serially (the lab lock).
use lab::testing::lab_up;
use std::{path::Path, process::Command};

use lab::{
    AttemptResult, Fault, GuestKind, IptablesBackend, Lab, LabConfig, Topology, faults::Symptom,
    testing::require_root,
};

fn netns_list() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

/// Nothing of the lab is left: namespaces, guests, sockets, state.
fn assert_nothing_left(ids: &[String]) {
    let list = netns_list();
    for ns in ["e2b-host", "ns-1", "ns-2"] {
        assert!(
            !list.lines().any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} left behind: {list}"
        );
    }
    // Only our own guests: lab-vmm's tests may run their own meanwhile.
    let ours: Vec<u32> = lab::guest::all_lab_vmms()
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ids.iter()
                .any(|id| String::from_utf8_lossy(&cmdline).contains(id.as_str()))
        })
        .collect();
    assert!(ours.is_empty(), "lab-vmm processes left: {ours:?}");
    assert!(!Path::new("/run/e2b-lab/state.json").exists(), "state file left");
    for id in ids {
        let left: Vec<_> = std::fs::read_dir("/tmp")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("fc-{id}-")))
            .collect();
        assert!(left.is_empty(), "api sockets left: {left:?}");
    }
}

fn healthy(lab: &Lab, i: usize) {
    let r = lab.reachable(i, 20).unwrap();
    assert!(r.succeeded(), "sandbox {i} should answer: {}", r.summary());
}

fn up_connect_down(guest: GuestKind) {
    let start = std::time::Instant::now();
    let lab = Lab::up(LabConfig {
        guest,
        ..Default::default()
    })
    .unwrap();
    eprintln!("{guest:?}: up and ready in {:?}", start.elapsed());
    let ids = lab.sandbox_ids();
    healthy(&lab, 0);
    let status = lab.status();
    assert_eq!(status.len(), 1);
    assert!(status[0].healthy && status[0].guest_pid.is_some());
    assert_eq!(status[0].host_ip, "10.11.0.1");
    let _lock = lab.down_and_hold().unwrap();
    assert_nothing_left(&ids);
}

#[test]
fn userspace_guest_up_connect_down() {
    if require_root("userspace_guest_up_connect_down") {
        up_connect_down(GuestKind::Userspace);
    }
}

#[test]
fn qemu_guest_up_connect_down() {
    if require_root("qemu_guest_up_connect_down") {
        up_connect_down(GuestKind::Qemu);
    }
}

/// What the orchestrator stand-in sees during a fault.
fn symptom_of(r: &lab::ConnectReport) -> Option<Symptom> {
    if r.succeeded() {
        return Some(Symptom::Works);
    }
    match r.last()? {
        AttemptResult::Timeout => Some(Symptom::Timeout),
        AttemptResult::Refused => Some(Symptom::Refused),
        AttemptResult::Unreachable { .. } => Some(Symptom::Unreachable),
        AttemptResult::Rejected { .. } => Some(Symptom::Rejected),
        _ => None,
    }
}

/// Breaks `fault` in sandbox 0: the stand-in must fail the way production would (and
/// sandbox `other`, if given, keep working); healed, sandbox 0 works again.
fn break_and_heal(lab: &mut Lab, fault: Fault, other: Option<usize>) {
    lab.break_fault(0, fault).unwrap();
    let r = lab.connect(0, 3).unwrap();
    assert_eq!(
        !r.succeeded(),
        fault.breaks_envd(),
        "{}: {}",
        fault.name(),
        r.summary()
    );
    assert_eq!(
        symptom_of(&r),
        Some(fault.symptom()),
        "{}: {}",
        fault.name(),
        r.summary()
    );
    if let Some(i) = other {
        healthy(lab, i);
    }
    lab.heal(0).unwrap();
    healthy(lab, 0);
}

#[test]
fn every_fault_fails_like_production_and_heals() {
    let Some(mut lab) = lab_up(
        "every_fault_fails_like_production_and_heals",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    for &fault in Fault::ALL.iter().filter(|f| f.applies(lab::Datapath::V1)) {
        // The other sandbox stays independent meanwhile.
        break_and_heal(&mut lab, fault, Some(1));
    }
}

/// Each fault fails the same way whatever came before it: the reply-drop fault leaves the
/// guest half-open connections whose peer resets them once healed, and such a socket must not
/// listen again while the listener is off (it answered SYNs under guest-no-listener).
#[test]
fn a_fault_fails_the_same_after_another() {
    let Some(mut lab) = lab_up("a_fault_fails_the_same_after_another", LabConfig::default()) else {
        return;
    };
    break_and_heal(&mut lab, Fault::ReplyDrop, None);
    lab.break_fault(0, Fault::GuestNoListener).unwrap();
    // The guest retransmits its dropped SYN-ACKs for a while (smoltcp's RTO starts at 1 s);
    // every attempt meanwhile must be refused.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let r = lab.connect(0, 1).unwrap();
        assert_eq!(
            symptom_of(&r),
            Some(Fault::GuestNoListener.symptom()),
            "{}",
            r.summary()
        );
    }
    lab.heal(0).unwrap();
    healthy(&lab, 0);
}

#[test]
fn v2_datapath_works_breaks_and_heals_beside_v1() {
    // A node mid-rollout: slot 1 is v1, slot 2 v2.
    let Some(mut lab) = lab_up(
        "v2_datapath_works_breaks_and_heals_beside_v1",
        LabConfig {
            sandboxes: 2,
            network: lab::Network::Mixed,
            ..Default::default()
        },
    ) else {
        return;
    };
    healthy(&lab, 0);
    healthy(&lab, 1);
    let nat = lab::sh::run_in(Some("ns-2"), "nft", &["list", "table", "inet", "slot-firewall"]).unwrap();
    assert!(
        nat.contains("ip daddr 10.11.0.2 dnat ip to 169.254.0.21"),
        "{nat}"
    );
    let ipt = lab::sh::run_in(Some("ns-2"), "iptables-nft-save", &["-t", "nat"]).unwrap_or_default();
    assert!(!ipt.contains("DNAT"), "v2 has no iptables NAT: {ipt}");
    v2_egress_dscp_marks_envd_replies(&lab);
    // v2-only faults are refused on the v1 slot; on the v2 slot they break and heal.
    assert!(lab.break_fault(0, Fault::V2HostDrop).is_err());
    for &fault in Fault::ALL.iter().filter(|f| f.applies(lab::Datapath::V2)) {
        lab.break_fault(1, fault).unwrap();
        let r = lab.connect(1, 3).unwrap();
        assert_eq!(
            symptom_of(&r),
            Some(fault.symptom()),
            "{}: {}",
            fault.name(),
            r.summary()
        );
        healthy(&lab, 0);
        lab.heal(1).unwrap();
        healthy(&lab, 1);
    }
}

/// E2B v2's `postroute_mangle` (network/v2/dscp.go) is in slot 2's slot firewall: a filter
/// chain at postrouting, mangle priority, stamping DSCP on what leaves by eth0. envd's
/// SYN-ACKs reach the host carrying the class; the v1 slot's do not.
fn v2_egress_dscp_marks_envd_replies(lab: &Lab) {
    let json = lab::sh::run_in(
        Some("ns-2"),
        "nft",
        &["-j", "list", "table", "inet", "slot-firewall"],
    )
    .unwrap();
    let items: serde_json::Value = serde_json::from_str(&json).unwrap();
    let items = items["nftables"].as_array().unwrap();
    let chain = items
        .iter()
        .map(|i| &i["chain"])
        .find(|c| c["name"] == "postroute_mangle")
        .unwrap_or_else(|| panic!("no postroute_mangle: {json}"));
    assert_eq!(
        (&chain["type"], &chain["hook"], &chain["prio"], &chain["policy"]),
        (
            &serde_json::json!("filter"),
            &serde_json::json!("postrouting"),
            &serde_json::json!(-150),
            &serde_json::json!("accept")
        ),
        "{json}"
    );
    let text = lab::sh::run_in(
        Some("ns-2"),
        "nft",
        &["list", "chain", "inet", "slot-firewall", "postroute_mangle"],
    )
    .unwrap();
    assert!(text.contains("oifname \"eth0\" ip dscp set cs1"), "{text}");
    let v1 = lab::sh::run_in(Some("ns-1"), "nft", &["list", "table", "inet", "slot-firewall"]).unwrap();
    assert!(
        !v1.contains("postroute_mangle"),
        "v1 marks with iptables, if at all: {v1}"
    );

    // Count, on the host, envd's replies by their DSCP class (a table of the test's own).
    let count = "table ip lab-dscp-count {\n  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n    iifname \"veth-1\" tcp sport 49983 ip dscp cs1 counter\n    iifname \"veth-2\" tcp sport 49983 ip dscp cs1 counter\n  }\n}\n";
    lab::sh::run_in_with_input(Some("e2b-host"), "nft", &["-f", "-"], count).unwrap();
    let (r1, r2) = (lab.connect(0, 3).unwrap(), lab.connect(1, 3).unwrap());
    let counted = lab::sh::run_in(
        Some("e2b-host"),
        "nft",
        &["list", "table", "ip", "lab-dscp-count"],
    )
    .unwrap();
    lab::sh::run_in(
        Some("e2b-host"),
        "nft",
        &["delete", "table", "ip", "lab-dscp-count"],
    )
    .unwrap();
    assert!(
        r1.succeeded() && r2.succeeded(),
        "{}\n{}",
        r1.summary(),
        r2.summary()
    );
    let packets = |veth: &str| -> u64 {
        let line = counted.lines().find(|l| l.contains(veth)).unwrap_or_default();
        line.split("packets ")
            .nth(1)
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter for {veth}: {counted}"))
    };
    assert_eq!(packets("veth-1"), 0, "{counted}");
    assert!(packets("veth-2") > 0, "slot 2's replies carry CS1: {counted}");
}

/// The host's egress REDIRECTs (E2B's, both datapaths) match only connections a guest starts:
/// after envd attempts in both directions' worth of packets, none of them counted a packet.
#[test]
fn egress_redirects_never_match_envd_traffic() {
    let Some(lab) = lab_up(
        "egress_redirects_never_match_envd_traffic",
        LabConfig {
            sandboxes: 2,
            network: lab::Network::Mixed,
            ..Default::default()
        },
    ) else {
        return;
    };
    healthy(&lab, 0);
    healthy(&lab, 1);
    assert!(lab.connect(0, 20).unwrap().succeeded());
    assert!(lab.connect(1, 20).unwrap().succeeded());
    // v1: iptables REDIRECTs for veth-1, with their counters.
    let save = lab::sh::run_in(Some("e2b-host"), "iptables-nft-save", &["-c", "-t", "nat"]).unwrap();
    let redirects: Vec<&str> = save.lines().filter(|l| l.contains("REDIRECT")).collect();
    assert!(redirects.len() >= 6, "E2B's redirects are there: {save}");
    for r in &redirects {
        assert!(r.starts_with("[0:0]"), "a REDIRECT matched envd traffic: {r}");
    }
    // v2: the redirects of inet v2-host-firewall (counted in the lab).
    let nft = lab::sh::run_in(
        Some("e2b-host"),
        "nft",
        &["list", "chain", "inet", "v2-host-firewall", "prerouting"],
    )
    .unwrap();
    let counted: Vec<&str> = nft.lines().filter(|l| l.contains("redirect")).collect();
    assert_eq!(counted.len(), 6, "{nft}");
    for r in counted {
        assert!(
            r.contains("counter packets 0 bytes 0"),
            "a v2 REDIRECT matched envd traffic: {r}"
        );
    }
}

#[test]
fn legacy_iptables_backend_works_and_breaks() {
    let Some(mut lab) = lab_up(
        "legacy_iptables_backend_works_and_breaks",
        LabConfig {
            iptables: IptablesBackend::Legacy,
            ..Default::default()
        },
    ) else {
        return;
    };
    healthy(&lab, 0);
    let save = lab::sh::run_in(Some("ns-1"), "iptables-legacy-save", &["-t", "nat"]).unwrap();
    assert!(save.contains("-j DNAT --to-destination 169.254.0.21"), "{save}");
    lab.break_fault(0, Fault::ForwardDrop).unwrap();
    assert_eq!(symptom_of(&lab.connect(0, 2).unwrap()), Some(Symptom::Timeout));
    lab.heal(0).unwrap();
    healthy(&lab, 0);
}

#[test]
fn bridge_variant() {
    let Some(mut lab) = lab_up(
        "bridge_variant",
        LabConfig {
            topology: Topology::Bridge,
            ..Default::default()
        },
    ) else {
        return;
    };
    healthy(&lab, 0);
    let link = lab::sh::ip(Some("ns-1"), &["link", "show", "tap0"]).unwrap();
    assert!(link.contains("master br0"), "tap0 must be a port of br0: {link}");
    for fault in [Fault::ForwardDrop, Fault::NoReader, Fault::GuestNoListener] {
        break_and_heal(&mut lab, fault, None);
    }
}

#[test]
fn down_cleans_up_after_a_crashed_run_and_twice() {
    let Some(lab) = lab_up(
        "down_cleans_up_after_a_crashed_run_and_twice",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let ids = lab.sandbox_ids();
    // As if the process had been killed before it wrote its final state: no teardown ran,
    // and only the leftovers themselves tell what to remove.
    let lock = lab.crash().unwrap();
    std::fs::remove_file("/run/e2b-lab/state.json").unwrap();
    lab::lab::down_all_locked(&lock).unwrap();
    assert_nothing_left(&ids);
    lab::lab::down_all_locked(&lock).unwrap();
}
