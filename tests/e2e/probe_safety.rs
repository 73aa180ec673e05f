//! Issue 23: a probe is sent only toward the sandbox. The tracer runs in a namespace of its
//! own whose default route leads into a *sink* namespace, and the lab's host side gets one too,
//! so a packet the tracer wrongly sends is counted at a sink instead of failing with
//! ENETUNREACH. Each variant breaks the link between the sandbox and its host side in another
//! way and asserts the typed refusal and 0 packets at every sink. Root; the lab lock
//! serializes these tests.
mod common;

use std::{
    net::{SocketAddrV4, TcpStream},
    process::Command,
    time::Duration,
};

use common::{TestNetns, sh, tracer_bin};
use lab::{Fault, LabConfig, testing::lab_up};
use serde_json::Value;

const SANDBOX_HOST_IP: &str = "10.11.0.1";

/// A namespace whose default route leads into a sink namespace that counts every TCP SYN to
/// envd's port it receives (an nft counter), and answers ARP for its gateway address, so a
/// leaked SYN is really transmitted there.
struct Sink {
    /// The namespace that routes into the sink (`from`), and the sink.
    from: String,
    sink: TestNetns,
    /// The device in `from` that leads to the sink, and the sink's address.
    dev: String,
    gateway: String,
}

impl Sink {
    /// Joins `from` (an existing namespace) to a new sink by a veth on `net` (a /30 such as
    /// "10.201.0"), with `from`'s default route into it.
    fn attach(from: &str, tag: &str, net: &str) -> Self {
        let sink = TestNetns::new(&format!("{tag}sink"));
        let dev = format!("{tag}leak");
        sh(&[
            "ip", "-n", from, "link", "add", &dev, "type", "veth", "peer", "name", "in", "netns", &sink.name,
        ]);
        let (near, gateway) = (format!("{net}.1"), format!("{net}.2"));
        sh(&[
            "ip",
            "-n",
            from,
            "addr",
            "add",
            &format!("{near}/30"),
            "dev",
            &dev,
        ]);
        sh(&[
            "ip",
            "-n",
            &sink.name,
            "addr",
            "add",
            &format!("{gateway}/30"),
            "dev",
            "in",
        ]);
        sh(&["ip", "-n", from, "link", "set", &dev, "up"]);
        sh(&["ip", "-n", &sink.name, "link", "set", "in", "up"]);
        sh(&[
            "ip", "-n", from, "route", "add", "default", "via", &gateway, "dev", &dev,
        ]);
        sink.run(&["nft", "add table inet count; add counter inet count syns; add chain inet count pre { type filter hook prerouting priority -500; }; add rule inet count pre tcp dport 49983 counter name syns"]);
        Self {
            from: from.to_string(),
            sink,
            dev,
            gateway,
        }
    }

    /// SYNs to envd's port the sink has received.
    fn syns(&self) -> u64 {
        let out = self
            .sink
            .run(&["nft", "list", "counter", "inet", "count", "syns"]);
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {out:?}"))
    }

    /// Proves the sink would see a leak: one connection attempt to the sandbox's host IP from
    /// `from` is counted there.
    fn prove_it_counts(&self) {
        let before = self.syns();
        let path = format!("/var/run/netns/{}", self.from);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).expect("open netns");
            // SAFETY: plain syscall; this thread ends in that namespace.
            assert_eq!(
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) },
                0
            );
            let to = SocketAddrV4::new(SANDBOX_HOST_IP.parse().unwrap(), 49983);
            let _ = TcpStream::connect_timeout(&to.into(), Duration::from_millis(100));
        })
        .join()
        .expect("connect thread");
        assert!(
            self.syns() > before,
            "the sink behind {} must count a SYN sent its way, or the test could not see a leak",
            self.from
        );
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // The sink's namespace goes with its guard (and the veth pair, and the route, with it).
        let _ = Command::new("ip")
            .args(["-n", &self.from, "link", "del", &self.dev])
            .status();
    }
}

/// The tracer's own namespace: loopback, and a default route into a sink.
struct Isolated {
    ns: TestNetns,
    sink: Sink,
}

impl Isolated {
    fn new(tag: &str) -> Self {
        let ns = TestNetns::new(&format!("{tag}self"));
        let sink = Sink::attach(&ns.name, tag, "10.201.0");
        Self { ns, sink }
    }

    /// `tracer trace --vm ID --probe --json` run inside this namespace: (exit code, verdict).
    fn probe(&self, id: &str) -> (i32, Value, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(tracer_bin())
            .args(["trace", "--vm", id, "--probe", "--json"])
            .output()
            .expect("run tracer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one verdict; got {lines:?}; stderr: {stderr}");
        let v: Value = serde_json::from_str(lines[0]).expect("JSON verdict");
        (out.status.code().unwrap_or(-1), v, stderr)
    }
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.').fold(v, |v, k| &v[k]).as_str().unwrap_or("")
}

/// Every variant: the lab (two sandboxes), the tracer isolated, a sink behind the lab's host
/// side; `breakage` breaks sandbox 1's link to its host side; `check` judges the verdict.
fn variant(test: &str, breakage: impl FnOnce(&lab::Lab, &Sink), check: impl FnOnce(&Value, &str)) {
    let Some(lab) = lab_up(
        test,
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let tag = format!("ps{}", test.len());
    let isolated = Isolated::new(&tag);
    let host_sink = Sink::attach("e2b-host", &format!("{tag}h"), "10.202.0");
    isolated.sink.prove_it_counts();
    // The lab's host side reaches its sandbox: the host sink sees nothing of a healthy probe.
    let (code, v, stderr) = isolated.probe(&id);
    assert_eq!(
        (code, s(&v, "outcome")),
        (0, "connected"),
        "healthy first: {v} {stderr}"
    );
    breakage(&lab, &host_sink);
    let before = (isolated.sink.syns(), host_sink.syns());
    let (code, v, stderr) = isolated.probe(&id);
    let ctx = format!(
        "{test}: {}\nstderr: {stderr}",
        serde_json::to_string_pretty(&v).unwrap()
    );
    assert_eq!(code, 1, "a refusal is a finding (exit 1): {ctx}");
    assert!(
        v["hops"].as_array().is_some_and(|h| h.is_empty()),
        "nothing was sent: {ctx}"
    );
    check(&v, &ctx);
    // What an operator reads (`--nocapture` shows it per variant).
    eprintln!(
        "{test}: exit {code}, {} ({}): {}",
        s(&v, "outcome"),
        s(&v, "unreachable.kind"),
        s(&v, "summary")
    );
    assert_eq!(
        (isolated.sink.syns(), host_sink.syns()),
        before,
        "no SYN may reach a sink: {ctx}"
    );
    for text in [s(&v, "summary"), s(&v, "fix")] {
        assert!(
            !text.contains("  ") && !text.contains("dev  ") && !text.contains("not  "),
            "a hole in {text:?}"
        );
    }
}

fn host_side_unknown(v: &Value, ctx: &str) {
    assert_eq!(s(v, "outcome"), "unreachable", "{ctx}");
    assert_eq!(s(v, "unreachable.kind"), "host_side_unknown", "{ctx}");
    assert!(
        s(v, "summary").contains("ns-1"),
        "names the sandbox's namespace: {ctx}"
    );
    assert!(
        s(v, "summary").contains("tap0"),
        "lists the devices it has: {ctx}"
    );
}

#[test]
fn a_sandbox_veth_moved_to_another_namespace_is_never_guessed() {
    let moved = TestNetns::new("psmoved");
    let name = moved.name.clone();
    variant(
        "a_sandbox_veth_moved_to_another_namespace_is_never_guessed",
        move |_, _| {
            sh(&["ip", "-n", "ns-1", "link", "set", "eth0", "down"]);
            sh(&["ip", "-n", "ns-1", "link", "set", "eth0", "name", "eth9"]);
            sh(&["ip", "-n", "ns-1", "link", "set", "eth9", "netns", &name]);
        },
        host_side_unknown,
    );
}

#[test]
fn a_deleted_sandbox_veth_is_never_guessed() {
    variant(
        "a_deleted_sandbox_veth_is_never_guessed",
        |_, _| {
            sh(&["ip", "-n", "ns-1", "link", "del", "eth0"]);
        },
        host_side_unknown,
    );
}

#[test]
fn a_missing_host_route_is_not_followed_off_the_host_side() {
    variant(
        "a_missing_host_route_is_not_followed_off_the_host_side",
        |_, _| {
            sh(&[
                "ip",
                "-n",
                "e2b-host",
                "route",
                "del",
                &format!("{SANDBOX_HOST_IP}/32"),
            ]);
        },
        |v, ctx| {
            assert_eq!(s(v, "outcome"), "unreachable", "{ctx}");
            assert_eq!(s(v, "unreachable.kind"), "routed_elsewhere", "{ctx}");
            assert!(
                s(v, "summary").contains("in e2b-host 10.11.0.1 is routed via 10.202.0.2 dev"),
                "{ctx}"
            );
            assert!(s(v, "summary").contains("not to the sandbox's veth-1"), "{ctx}");
        },
    );
}

#[test]
fn a_route_to_a_device_that_is_no_sandboxs_is_refused() {
    variant(
        "a_route_to_a_device_that_is_no_sandboxs_is_refused",
        |_, sink| {
            sh(&[
                "ip",
                "-n",
                "e2b-host",
                "route",
                "replace",
                &format!("{SANDBOX_HOST_IP}/32"),
                "via",
                &sink.gateway,
                "dev",
                &sink.dev,
            ]);
        },
        |v, ctx| {
            assert_eq!(s(v, "unreachable.kind"), "routed_elsewhere", "{ctx}");
            assert_eq!(s(v, "unreachable.netns"), "e2b-host", "{ctx}");
        },
    );
}

#[test]
fn a_route_to_another_sandboxs_veth_sends_nothing_into_it() {
    variant(
        "a_route_to_another_sandboxs_veth_sends_nothing_into_it",
        |_, _| {
            // A counter in the other sandbox's namespace (the lab's; it goes with the lab).
            sh(&[
                "ip",
                "netns",
                "exec",
                "ns-2",
                "nft",
                "add table inet probecount; add counter inet probecount syns; add chain inet probecount pre { type filter hook prerouting priority -500; }; add rule inet probecount pre tcp dport 49983 counter name syns",
            ]);
            sh(&[
                "ip",
                "-n",
                "e2b-host",
                "route",
                "replace",
                &format!("{SANDBOX_HOST_IP}/32"),
                "via",
                "10.12.0.5",
                "dev",
                "veth-2",
            ]);
        },
        |v, ctx| {
            assert_eq!(s(v, "outcome"), "misdirected", "{ctx}");
            assert_eq!(s(v, "misdirected.by"), "route", "{ctx}");
            assert_eq!(s(v, "misdirected.netns"), "ns-2", "{ctx}");
            assert_eq!(s(v, "misdirected.out_device"), "veth-2", "{ctx}");
            let counted = sh(&[
                "ip",
                "netns",
                "exec",
                "ns-2",
                "nft",
                "list",
                "counter",
                "inet",
                "probecount",
                "syns",
            ]);
            assert!(counted.contains("packets 0 "), "nothing reached ns-2: {counted}");
        },
    );
}

/// The same refusal with the lab's own fault: the expectations of `wrong-slot-route`.
#[test]
fn wrong_slot_route_is_misdirected_from_the_route_read() {
    let Some(mut lab) = lab_up(
        "wrong_slot_route_is_misdirected_from_the_route_read",
        LabConfig {
            sandboxes: 2,
            ..Default::default()
        },
    ) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, Fault::WrongSlotRoute).expect("break");
    let (code, v, _) = common::probe(&id, &[]);
    assert_eq!(code, 1);
    assert_eq!(s(&v, "outcome"), "misdirected", "{v}");
    assert_eq!(s(&v, "misdirected.netns"), "ns-2", "{v}");
    assert_eq!(s(&v, "misdirected.sandbox_id"), lab.sandbox_ids()[1], "{v}");
}
