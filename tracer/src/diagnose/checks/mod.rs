//! The checks: pure functions from [`Facts`] to [`Check`]s, in the order of the path (VMM and
//! tap, addresses and routes, forwarding, NAT and firewalls, conntrack and neighbours, MTU,
//! then envd itself). A check whose subject does not exist (the tap's address when there is no
//! tap) is left out: the missing subject is the problem, reported once.
use std::net::Ipv4Addr;

mod devices;
mod filter;
mod routing;
mod vmm;

use super::{
    Check,
    facts::{Facts, NsFacts},
};
use crate::{
    system::connect::AttemptResult,
    system::netns::Netns,
    system::netstate::{Link, Route, Snapshot},
};
use devices::{guest_neighbour, host_veth, mtu, ns_veth, qdisc};
use filter::{conntrack, dnat, firewall_checks, snat};
use routing::{
    guest_route, host_route, ip_forward, ns_default_route, ns_return_route, rp_filter, v2_host_sets,
};
use vmm::{netns_exists, stray_tap, tap_addr, tap_exists, tap_reader, tap_up, tun_device, vmm_alive};

/// Every check of one sandbox.
pub fn all(f: &Facts) -> Vec<Check> {
    let mut v = vec![vmm_alive(f), netns_exists(f)];
    let Some(ns) = f.ns() else {
        v.extend(envd(f));
        return v;
    };
    let c = Ctx::new(f, ns);
    v.push(tap_exists(&c));
    if c.tap.is_some() {
        v.push(tap_up(&c));
        v.push(tap_reader(&c));
    }
    v.push(tun_device(f));
    v.push(stray_tap(&c));
    v.extend(tap_addr(&c));
    v.push(guest_route(&c));
    v.push(ns_veth(&c));
    v.push(host_veth(&c));
    v.extend(host_route(&c));
    v.push(ns_default_route(&c));
    v.extend(ns_return_route(&c));
    v.push(ip_forward(&c));
    v.push(rp_filter(&c));
    v.push(dnat(&c));
    v.push(snat(&c));
    v.extend(v2_host_sets(&c));
    v.extend(firewall_checks(&c));
    v.push(conntrack(&c));
    v.extend(guest_neighbour(&c));
    v.push(mtu(&c));
    v.push(qdisc(&c));
    v.extend(envd(f));
    v
}

/// What most checks need, looked up once.
pub struct Ctx<'a> {
    f: &'a Facts,
    ns: &'a NsFacts,
    /// `ns-1`.
    nsl: String,
    tap_name: String,
    tap: Option<&'a Link>,
    /// The device that carries the guest's gateway address: the bridge, else the tap.
    guest_dev: Option<&'a Link>,
    veth_name: String,
    ns_veth: Option<&'a Link>,
    host: Option<&'a NsFacts>,
    /// `e2b-host`, or "the root namespace".
    hostl: String,
    host_veth: Option<&'a Link>,
    host_veth_ip: Option<Ipv4Addr>,
    ns_veth_ip: Option<Ipv4Addr>,
}

impl<'a> Ctx<'a> {
    pub fn new(f: &'a Facts, ns: &'a NsFacts) -> Self {
        let tap_name = f.sb.tap.clone().unwrap_or_else(|| "tap0".into());
        let tap = ns.snap.link(&tap_name);
        let guest_dev = f.sb.bridge.as_deref().and_then(|b| ns.snap.link(b)).or(tap);
        let veth_name = f.sb.ns_veth.clone().unwrap_or_else(|| "eth0".into());
        Self {
            f,
            ns,
            nsl: f.sb.netns.label(),
            tap,
            guest_dev,
            ns_veth: ns.snap.link(&veth_name),
            veth_name,
            tap_name,
            host: f.host_ns(),
            hostl: f
                .host
                .as_ref()
                .map_or_else(|| "the host side".into(), |h| ns_words(&h.ns, f.own_inode)),
            host_veth: f.host_link(f.sb.host_veth.as_deref()),
            host_veth_ip: f.sb.host_veth_ip,
            ns_veth_ip: f.sb.ns_veth_ip,
        }
    }

    fn guest_dev_name(&self) -> &str {
        self.guest_dev.map_or(self.tap_name.as_str(), |l| l.name.as_str())
    }

    /// `ip -n ns-1` (or plain `ip` in our own namespace).
    fn ip_ns(&self) -> String {
        ip_in(&self.f.sb.netns, self.f.own_inode)
    }

    fn ip_host(&self) -> String {
        self.f
            .sb
            .host_ns
            .as_ref()
            .map_or_else(|| "ip".into(), |h| ip_in(h, self.f.own_inode))
    }

    /// `ip netns exec ns-1 ` (or nothing in our own namespace).
    fn exec_ns(&self) -> String {
        exec_in(&self.f.sb.netns, self.f.own_inode)
    }

    fn exec_host(&self) -> String {
        self.f
            .sb
            .host_ns
            .as_ref()
            .map_or_else(String::new, |h| exec_in(h, self.f.own_inode))
    }

    fn guest(&self) -> Ipv4Addr {
        self.f.guest_ip
    }

    fn host_ip(&self) -> Option<Ipv4Addr> {
        self.f.host_ip
    }
}

/// How to name a namespace in a sentence.
fn ns_words(ns: &Netns, own: Option<u32>) -> String {
    match (&ns.name, Some(ns.inode) == own) {
        (_, true) => format!(
            "the root namespace{}",
            ns.name.as_ref().map_or(String::new(), |n| format!(" ({n})"))
        ),
        (Some(n), false) => n.clone(),
        (None, false) => ns.label(),
    }
}

fn ip_in(ns: &Netns, own: Option<u32>) -> String {
    match &ns.name {
        _ if Some(ns.inode) == own => "ip".into(),
        Some(n) => format!("ip -n {n}"),
        None => format!("nsenter --net={} ip", ns.path.display()),
    }
}

fn exec_in(ns: &Netns, own: Option<u32>) -> String {
    match &ns.name {
        _ if Some(ns.inode) == own => String::new(),
        Some(n) => format!("ip netns exec {n} "),
        None => format!("nsenter --net={} ", ns.path.display()),
    }
}

/// `10.11.0.1/32 via 10.12.0.3 dev veth-1`, as `ip route` prints it.
fn route_text(r: &Route, snap: &Snapshot) -> String {
    let mut s = String::new();
    if r.kind != "unicast" {
        s += &format!("{} ", r.kind);
    }
    s += &if r.prefix == 0 {
        "default".to_string()
    } else {
        format!("{}/{}", r.dst, r.prefix)
    };
    if let Some(g) = r.gateway {
        s += &format!(" via {g}");
    }
    if let Some(l) = r.oif.and_then(|i| snap.link_by_index(i)) {
        s += &format!(" dev {}", l.name);
    }
    if r.metric != 0 {
        s += &format!(" metric {}", r.metric);
    }
    s
}

fn addrs_text(snap: &Snapshot, link: &Link) -> String {
    let a: Vec<String> = snap
        .addrs_of(link.ifindex)
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.prefix))
        .collect();
    if a.is_empty() {
        "no IPv4 address".into()
    } else {
        a.join(", ")
    }
}

fn envd(f: &Facts) -> Option<Check> {
    let result = f.envd.as_ref()?;
    let target = format!(
        "{}:{}",
        f.host_ip.map_or("?".into(), |i| i.to_string()),
        super::ENVD_PORT
    );
    let from = f
        .host
        .as_ref()
        .map_or_else(|| "this namespace".into(), |h| ns_words(&h.ns, f.own_inode));
    let check = Check::new(
        "envd",
        format!("envd answers on {target} (connection attempts from {from})"),
    )
    .netns(f.sb.netns.label());
    let attempts = match result {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return Some(check.problem("no attempt was made", "see the other checks")),
        Err(e) => {
            return Some(check.problem(
                format!("the attempt could not be made: {e}"),
                "see the other checks",
            ));
        }
    };
    let trace = format!(
        "tracer trace --vm {} --probe names where the packets die",
        f.sb.id.as_deref().unwrap_or("<id>")
    );
    let port = super::ENVD_PORT;
    let text = attempts_text(attempts);
    let last = attempts.last().map(|a| &a.result);
    let patient = attempts.last().filter(|a| {
        a.timeout > crate::system::connect::ATTEMPT_TIMEOUT
            && a.latency > crate::system::connect::ATTEMPT_TIMEOUT
    });
    let short_ms = crate::system::connect::ATTEMPT_TIMEOUT.as_millis();
    Some(match last {
        // Only a patient attempt got through: the path works, the guest is slow.
        Some(AttemptResult::Status(_) | AttemptResult::Refused) if let Some(p) = patient => {
            let ms = p.latency.as_secs_f64() * 1000.0;
            check.problem(
                format!("{text}: envd answers, but only after {ms:.0} ms, later than the {short_ms} ms each orchestrator attempt waits: the path works, the guest is slow"),
                format!("find out why the guest answers so late (busy, booting, CPU-starved), or give each attempt more than {ms:.0} ms; tracer trace --vm {} --probe shows each reply's delay", f.sb.id.as_deref().unwrap_or("<id>")),
            )
        }
        Some(AttemptResult::Status(_)) => check.ok(text),
        Some(AttemptResult::Refused) => check.problem(
            format!("{text}: the SYN reached a TCP stack where nothing listens on {port} (usually the guest, with envd not running)"),
            format!("start envd in the guest (or check it listens on {port}); {trace}"),
        ),
        Some(AttemptResult::NotSent(_)) => check.problem(
            format!("{text}: the host side refuses to send to {target} at all"),
            format!("the other problems say why (routes, rules); {trace}"),
        ),
        _ => check.problem(
            format!("{text}: the SYN or its reply is lost on the way"),
            format!("the other problems say why; {trace}"),
        ),
    })
}

/// `GET /health → HTTP 204 in 0.4 ms`, or every attempt when it took more than one.
fn attempts_text(attempts: &[crate::system::connect::Attempt]) -> String {
    let one = |a: &crate::system::connect::Attempt| {
        let ms = a.latency.as_secs_f64() * 1000.0;
        match &a.result {
            AttemptResult::Status(code) => format!("GET /health → HTTP {code} in {ms:.1} ms"),
            AttemptResult::Refused => format!("connection refused (RST) in {ms:.1} ms"),
            AttemptResult::Timeout => format!("no answer within {} ms", a.timeout.as_millis()),
            AttemptResult::NotSent(errno) => format!(
                "connect() failed at once with {} ({}): no packet was sent",
                tracer_model::verdict::errno_name(*errno),
                std::io::Error::from_raw_os_error(*errno)
            ),
            AttemptResult::Error(e) => format!("connect failed after {ms:.1} ms: {e}"),
        }
    };
    match attempts {
        [a] => one(a),
        many => many
            .iter()
            .enumerate()
            .map(|(i, a)| format!("attempt {}: {}", i + 1, one(a)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, sync::Arc};

    use super::*;
    use crate::{
        diagnose::{
            Status,
            facts::{HostFacts, ProcInfo, Tun, TunStat, Vmm},
        },
        discovery::sandbox::Sandbox,
        system::firewall::{Backend, IptSave},
        system::netstate::{Addr, RT_TABLE_MAIN},
    };

    fn link(ifindex: u32, name: &str, kind: &str) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: Some(kind.into()),
            up: true,
            carrier: true,
            oper_state: "UP".into(),
            mtu: 1500,
            ..Default::default()
        }
    }

    fn addr(ifindex: u32, a: [u8; 4], prefix: u8) -> Addr {
        Addr {
            ifindex,
            addr: a.into(),
            prefix,
        }
    }

    fn route(dst: [u8; 4], prefix: u8, gateway: Option<[u8; 4]>, oif: u32) -> Route {
        Route {
            table: RT_TABLE_MAIN,
            dst: dst.into(),
            prefix,
            gateway: gateway.map(Into::into),
            oif: Some(oif),
            kind: "unicast".into(),
            metric: 0,
        }
    }

    fn netns(inode: u32, name: &str) -> Netns {
        Netns::new(
            inode,
            Some(name.into()),
            PathBuf::from(format!("/var/run/netns/{name}")),
        )
    }

    fn sysctls(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Slot 1 of E2B network v1, healthy, with slot 2's veth next to it on the host.
    fn healthy() -> Facts {
        let ns = NsFacts {
            snap: Snapshot {
                links: vec![link(2, "eth0", "veth"), link(3, "tap0", "tun")],
                addrs: vec![addr(2, [10, 12, 0, 3], 31), addr(3, [169, 254, 0, 22], 30)],
                routes: vec![
                    route([0, 0, 0, 0], 0, Some([10, 12, 0, 2]), 2),
                    route([10, 12, 0, 2], 31, None, 2),
                    route([169, 254, 0, 20], 30, None, 3),
                ],
                neighbours: Vec::new(),
                rules: Vec::new(),
            },
            tables: (IptSave::parse(
                "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
                     -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21\n\
                     -A POSTROUTING -s 169.254.0.21/32 -o eth0 -j SNAT --to-source 10.11.0.1\nCOMMIT\n",
            )
            .expect("parse"))
            .tables(Backend::Nft),
            rule_sources: vec!["iptables-nft-save -c".into()],
            rule_errors: Vec::new(),
            sysctl: sysctls(&[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.eth0.forwarding", "1"),
                ("net.ipv4.conf.tap0.forwarding", "1"),
            ]),
            nft_sets: Vec::new(),
        };
        let host = NsFacts {
            snap: Snapshot {
                links: vec![link(5, "veth-1", "veth"), link(6, "veth-2", "veth")],
                addrs: vec![addr(5, [10, 12, 0, 2], 31), addr(6, [10, 12, 0, 4], 31)],
                routes: vec![
                    route([10, 12, 0, 2], 31, None, 5),
                    route([10, 12, 0, 4], 31, None, 6),
                    route([10, 11, 0, 1], 32, Some([10, 12, 0, 3]), 5),
                    route([10, 11, 0, 2], 32, Some([10, 12, 0, 5]), 6),
                ],
                neighbours: Vec::new(),
                rules: Vec::new(),
            },
            ..Default::default()
        };
        let sb = Sandbox {
            id: Some("ix7hj8hustuvlxiqc0g0u".into()),
            pid: Some(42),
            api_sock: None,
            netns: netns(100, "ns-1"),
            tap: Some("tap0".into()),
            tap_held: true,
            bridge: None,
            guest_ip: Some([169, 254, 0, 21].into()),
            host_ip: Some([10, 11, 0, 1].into()),
            slot: Some(1),
            ns_veth: Some("eth0".into()),
            ns_veth_ip: Some([10, 12, 0, 3].into()),
            host_ns: Some(netns(200, "e2b-host")),
            host_veth: Some("veth-1".into()),
            host_veth_ip: Some([10, 12, 0, 2].into()),
            host_veth_ifindex: Some(5),
            ns_veth_ifindex: Some(2),
            host_side_problem: None,
            devices: Default::default(),
            datapath: Some(crate::system::firewall::nat::Datapath::V1),
            warnings: Vec::new(),
            rules: None,
        };
        Facts {
            vmm: Vmm {
                pid: Some(42),
                last_seen: None,
                proc: Some(ProcInfo {
                    comm: "firecracker".into(),
                    state: 'S',
                    netns_inode: Some(100),
                    uid: Some(0),
                    tun_fds: vec![("27".into(), "tap0".into())],
                }),
            },
            tun: Tun {
                path: "/dev/net/tun".into(),
                stat: Ok(TunStat {
                    is_char: true,
                    major: 10,
                    minor: 200,
                    mode: 0o666,
                    uid: 0,
                    gid: 0,
                }),
            },
            ns: Ok(ns),
            host: Some(Arc::new(HostFacts {
                ns: sb.host_ns.clone().expect("host ns"),
                facts: Ok(host),
            })),
            own: None,
            host_veth_sysctl: Default::default(),
            host_ip: sb.host_ip,
            guest_ip: [169, 254, 0, 21].into(),
            envd: None,
            qdiscs: Vec::new(),
            own_inode: Some(1),
            netns_file: Some(Ok(100)),
            sb,
        }
    }

    fn host_mut(f: &mut Facts) -> &mut NsFacts {
        let h = Arc::get_mut(f.host.as_mut().expect("host")).expect("unshared");
        h.facts.as_mut().expect("host facts")
    }

    fn ns_mut(f: &mut Facts) -> &mut NsFacts {
        f.ns.as_mut().expect("ns facts")
    }

    fn not_ok(f: &Facts) -> Vec<(&'static str, Status, String)> {
        all(f)
            .into_iter()
            .filter(|c| c.status != Status::Ok)
            .map(|c| (c.id, c.status, c.evidence))
            .collect()
    }

    fn problem_ids(f: &Facts) -> Vec<&'static str> {
        not_ok(f).into_iter().map(|(id, _, _)| id).collect()
    }

    #[test]
    fn a_healthy_sandbox_passes_and_says_where_the_tap_lives() {
        let f = healthy();
        assert_eq!(not_ok(&f), vec![]);
        let checks = all(&f);
        let tap = checks.iter().find(|c| c.id == "tap_exists").expect("tap_exists");
        assert!(
            tap.evidence
                .contains("tap0 (ifindex 3, tun) lives in ns-1, not in the root namespace"),
            "{}",
            tap.evidence
        );
        assert!(
            tap.evidence.contains("ip -n ns-1 link show tap0"),
            "{}",
            tap.evidence
        );
    }

    #[test]
    fn a_route_to_another_slots_veth_is_a_slot_mix_up() {
        let mut f = healthy();
        host_mut(&mut f).snap.routes[2] = route([10, 11, 0, 1], 32, Some([10, 12, 0, 5]), 6);
        let bad = not_ok(&f);
        assert_eq!(problem_ids(&f), ["host_route"], "{bad:?}");
        assert!(
            bad[0]
                .2
                .contains("out veth-2 (slot 2, namespace ns-2), not this sandbox's veth-1"),
            "{bad:?}"
        );
    }

    #[test]
    fn a_tap_without_its_vmm_has_no_reader() {
        let mut f = healthy();
        f.vmm = Vmm {
            pid: None,
            last_seen: Some(42),
            proc: None,
        };
        ns_mut(&mut f).snap.links[1].carrier = false;
        let bad = not_ok(&f);
        assert_eq!(problem_ids(&f), ["vmm_alive", "tap_reader"], "{bad:?}");
        assert!(bad[0].2.contains("last seen as pid 42"), "{bad:?}");
        assert!(
            bad[1]
                .2
                .starts_with("tap0 in ns-1 has no carrier: no process reads it"),
            "{bad:?}"
        );
    }

    #[test]
    fn strict_rp_filter_with_an_asymmetric_route() {
        let mut f = healthy();
        let ns = ns_mut(&mut f);
        ns.sysctl.insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
        ns.snap.routes.push(route([10, 12, 0, 2], 32, None, 3));
        assert_eq!(problem_ids(&f), ["ns_return_route", "rp_filter"]);
        // Strict but symmetric: fine.
        let mut f = healthy();
        ns_mut(&mut f)
            .sysctl
            .insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
        assert_eq!(problem_ids(&f), Vec::<&str>::new());
    }

    #[test]
    fn firewall_drops_land_in_their_checks() {
        let mut f = healthy();
        let filter = IptSave::parse(
            "*filter\n:FORWARD DROP [0:0]\n:INPUT ACCEPT [0:0]\n\
             -A FORWARD -i tap0 -o eth0 -p tcp -m tcp --sport 49983 -j DROP\nCOMMIT\n",
        )
        .expect("parse");
        ns_mut(&mut f).tables.extend(filter.tables(Backend::Legacy));
        let host_filter = IptSave::parse(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m addrtype --dst-type LOCAL -j DROP\nCOMMIT\n",
        )
        .expect("parse");
        host_mut(&mut f).tables.extend(host_filter.tables(Backend::Nft));
        let bad = not_ok(&f);
        let kinds: Vec<(&str, Status)> = bad.iter().map(|(id, s, _)| (*id, *s)).collect();
        assert_eq!(
            kinds,
            [
                ("forward_policy", Status::Problem),
                ("ns_iptables", Status::Problem),
                ("host_firewall", Status::Warning)
            ],
            "{bad:#?}"
        );
        assert!(
            bad[1]
                .2
                .contains("the SYN-ACK from the guest is dropped at FORWARD in ns-1"),
            "{bad:?}"
        );
    }

    #[test]
    fn a_missing_tap_leaves_its_dependent_checks_out() {
        let mut f = healthy();
        let ns = ns_mut(&mut f);
        ns.snap.links.retain(|l| l.name != "tap0");
        ns.snap.routes.retain(|r| r.oif != Some(3));
        let ids: Vec<&str> = all(&f).iter().map(|c| c.id).collect();
        for gone in ["tap_up", "tap_reader", "tap_addr", "guest_neighbour"] {
            assert!(!ids.contains(&gone), "{gone} in {ids:?}");
        }
        assert_eq!(problem_ids(&f), ["tap_exists", "guest_route"]);
    }

    #[test]
    fn a_qdisc_that_dropped_is_a_problem_with_its_counters() {
        let mut f = healthy();
        f.qdiscs.push((
            200,
            crate::system::netstate::Qdisc {
                ifindex: 5,
                kind: "pfifo".into(),
                drops: 3,
                qlen: 0,
            },
        ));
        let bad = not_ok(&f);
        assert_eq!(problem_ids(&f), ["qdisc"], "{bad:?}");
        assert!(
            bad[0]
                .2
                .starts_with("veth-1 in e2b-host: pfifo (dropped 3, queued 0)"),
            "{bad:?}"
        );
        // One that never dropped is fine.
        f.qdiscs[0].1.drops = 0;
        assert_eq!(problem_ids(&f), Vec::<&str>::new());
    }

    #[test]
    fn a_guest_that_answers_only_a_patient_attempt_is_slow_not_unreachable() {
        use std::time::Duration;
        let mut f = healthy();
        let a = |result, ms, timeout_ms| crate::system::connect::Attempt {
            local_port: 1,
            result,
            latency: Duration::from_millis(ms),
            timeout: Duration::from_millis(timeout_ms),
        };
        f.envd = Some(Ok(vec![
            a(AttemptResult::Timeout, 50, 50),
            a(AttemptResult::Timeout, 50, 50),
            a(AttemptResult::Timeout, 50, 50),
            a(AttemptResult::Status(204), 81, 1000),
        ]));
        let bad = not_ok(&f);
        assert_eq!(problem_ids(&f), ["envd"], "{bad:?}");
        assert!(
            bad[0].2.contains("only after 81 ms, later than the 50 ms"),
            "{bad:?}"
        );
        // An answer within 50 ms after a lost first attempt is what retries are for.
        f.envd = Some(Ok(vec![
            a(AttemptResult::Timeout, 50, 50),
            a(AttemptResult::Status(204), 2, 50),
        ]));
        assert_eq!(problem_ids(&f), Vec::<&str>::new());
    }
}
