//! Issue 2: `tracer trace --port 49983` reports an iptables drop made in a namespace, with the
//! right reason, namespace and device; and reports nothing once the rule is gone.
mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::{Tracer, require_root, veth_pair};

const PORT: u16 = 49983;

/// Connects from namespace `a` to 10.99.0.2:PORT. Returns (local port, connected); the local
/// port is only known when the connection worked (a dropped one is identified by its report).
fn attempt(a: &common::TestNetns, timeout: Duration) -> (u16, bool) {
    a.within(
        move || match TcpStream::connect_timeout(&SocketAddr::from(([10, 99, 0, 2], PORT)), timeout) {
            Ok(s) => (s.local_addr().map(|a| a.port()).unwrap_or(0), true),
            Err(_) => (0, false),
        },
    )
}

/// The fault under test: an iptables DROP of envd's port in b's INPUT.
fn drop_envd(b: &common::TestNetns) {
    b.run(&[
        "iptables-nft",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "49983",
        "-j",
        "DROP",
    ]);
}

#[test]
fn iptables_drop_is_reported_with_reason_netns_and_device() {
    if !require_root("iptables_drop_is_reported") {
        return;
    }
    // Tracer runs take the lab lock: the detach test checks that no program of ours is loaded.
    let _lock = lab::state::LabLock::acquire().unwrap();
    let (a, b) = veth_pair("tr2");
    drop_envd(&b);
    let tracer = Tracer::start(&["trace", "--port", "49983", "--json"]);

    let (_, connected) = attempt(&a, Duration::from_millis(300));
    assert!(!connected, "the DROP rule should stop the connection");
    let (drop, _) = tracer.next_json(Duration::from_secs(5), |v| v["dport"] == PORT);
    assert_eq!(drop["reason"], "NETFILTER_DROP", "{drop}");
    assert_eq!(drop["netns"]["name"], b.name.as_str(), "{drop}");
    assert_eq!(drop["device"], "vb", "{drop}");
    assert_eq!(drop["saddr"], "10.99.0.1");
    assert_eq!(drop["daddr"], "10.99.0.2");
    assert_eq!(drop["flags"], "S");
    assert!(
        drop["location"].as_str().is_some_and(|l| l.contains('+')),
        "symbol+offset: {drop}"
    );
    let code = tracer.stop();
    assert_eq!(code, 1, "drops were found: exit 1");
}

#[test]
fn no_drop_is_reported_without_the_rule() {
    if !require_root("no_drop_is_reported_without_the_rule") {
        return;
    }
    let _lock = lab::state::LabLock::acquire().unwrap();
    let (a, b) = veth_pair("tr2n");
    // A listener in b: a connection that works leaves no drop behind.
    let listener = b.within(|| TcpListener::bind(("10.99.0.2", PORT)).expect("bind"));
    let tracer = Tracer::start(&["trace", "--port", "49983", "--json"]);

    let (good_port, connected) = attempt(&a, Duration::from_millis(500));
    assert!(connected, "no rule, a listener: the connection must work");
    let _accepted = listener.accept().expect("accept");

    // Then a drop as a marker: everything about the good connection was reported before it.
    drop_envd(&b);
    let (_, connected) = attempt(&a, Duration::from_millis(300));
    assert!(!connected);
    let (marker, before) = tracer.next_json(Duration::from_secs(5), |v| v["reason"] == "NETFILTER_DROP");
    assert_ne!(marker["sport"], good_port);
    let about_good: Vec<_> = before
        .iter()
        .filter(|v| v["sport"] == good_port || v["dport"] == good_port)
        .collect();
    assert!(
        about_good.is_empty(),
        "drops reported for a working connection: {about_good:?}"
    );
    tracer.stop();
}
