//! Read-only snapshots of one network namespace: links, IPv4 addresses, routes (all tables)
//! and neighbours, read over rtnetlink (never by parsing `ip` output), plus namespace ids and
//! sysctls.
//!
//! A netlink socket belongs to the namespace it was created in, whatever thread uses it later:
//! [`Rtnl::open`] enters the namespace only for the `socket()` call, then every request on it
//! is answered by that namespace.
//!
//! The socket and its dumps are in `rtnl`, the parse of what netlink sends in `messages`,
//! route gets in `route_get`, policy rules and what blocks a route in `rules`.
mod messages;
mod route_get;
mod rtnl;
mod rules;

use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::system::netns::Netns;
pub use messages::{
    addr_from, link_from, mac_string, neighbour_from, neighbour_state, parse_reply, qdisc_from, route_from,
    route_kind,
};
pub use route_get::{RouteGot, RouteQuery};
pub use rtnl::Rtnl;
pub(crate) use rtnl::{RECV_TIMEOUT, set_recv_timeout};
pub use rules::{Blocker, Rule, route_blocker, rule_from, table_name};

/// The main routing table (what `ip route` shows).
pub const RT_TABLE_MAIN: u32 = 254;
/// The local table (addresses of this namespace, broadcast): never the route *to* a peer.
pub const RT_TABLE_LOCAL: u32 = 255;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    /// Policy routing rules (empty when they could not be read).
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// "veth", "tun", "bridge", ... (IFLA_INFO_KIND); None for devices without one (lo, most
    /// physical NICs).
    pub kind: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier (IFLA_CARRIER, else IFF_LOWER_UP). For a tap: some process has it open.
    pub carrier: bool,
    pub oper_state: String,
    pub mtu: u32,
    pub mac: Option<String>,
    /// ifindex of the bridge (or bond, VRF ...) this link is a port of.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, the peer's ifindex, in the namespace named by `link_netnsid`
    /// (or in this one when that is None).
    pub peer_ifindex: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace, as an nsid of *this* namespace.
    pub link_netnsid: Option<i32>,
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addr {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// unicast, local, broadcast, blackhole, unreachable, prohibit, ...
    pub kind: String,
    /// RTA_PRIORITY: among routes of the same prefix, the lowest wins.
    pub metric: u32,
}

/// A device's root queue discipline and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Qdisc {
    pub ifindex: u32,
    /// `noqueue`, `pfifo_fast`, `fq_codel`, `tbf`, `pfifo`, ...
    pub kind: String,
    /// Packets it dropped since it was created.
    pub drops: u32,
    /// Packets waiting in it now.
    pub qlen: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub mac: Option<String>,
    /// REACHABLE, STALE, DELAY, PROBE, FAILED, INCOMPLETE, NOARP, PERMANENT, NONE.
    pub state: String,
}

impl Snapshot {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, i: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == i)
    }

    pub fn addrs_of(&self, ifindex: u32) -> Vec<&Addr> {
        self.addrs.iter().filter(|a| a.ifindex == ifindex).collect()
    }

    /// The main-table route the kernel would pick for `ip` (longest prefix, then lowest
    /// metric). Policy routing rules are not consulted: E2B uses none.
    pub fn route_to(&self, ip: Ipv4Addr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.table == RT_TABLE_MAIN && prefix_contains(r.dst, r.prefix, ip))
            .min_by_key(|r| (std::cmp::Reverse(r.prefix), r.metric))
    }
}

pub use tracer_model::net::prefix_contains;

/// Everything [`Snapshot`] holds, read from namespace `ns`.
pub fn snapshot(ns: &Netns) -> Result<Snapshot> {
    Rtnl::open(ns)?
        .snapshot()
        .with_context(|| format!("read the network state of {}", ns.label()))
}

/// The nsid `in_ns` uses for `target` (as in IFLA_LINK_NETNSID of links in `in_ns`). None when
/// `in_ns` has assigned it none.
pub fn nsid_of(in_ns: &Netns, target: &Netns) -> Result<Option<i32>> {
    Rtnl::open(in_ns)?.nsid_of(target)
}

/// Reads a sysctl (`net.ipv4.ip_forward`, `net.ipv4.conf.eth0.rp_filter`) as namespace `ns`
/// sees it. The /proc/sys/net tree is resolved against the namespace of the *reading thread*,
/// so it is read while this thread is inside `ns` (the `sysctl_follows_the_thread` test checks
/// that on the running kernel).
pub fn sysctl(ns: &Netns, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    let _inside = ns.enter()?;
    let text = fs::read_to_string(&path).with_context(|| format!("read {key} in {}", ns.label()))?;
    Ok(text.trim().to_string())
}

/// `net.ipv4.conf.eth0.rp_filter` → `/proc/sys/net/ipv4/conf/eth0/rp_filter`. A key with
/// slashes is taken as a path already (sysctl's way to name devices with dots: `eth0.100`).
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        bail!("{key:?} is not a sysctl name");
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: [u8; 4], prefix: u8, table: u32, metric: u32, oif: u32) -> Route {
        Route {
            table,
            dst: dst.into(),
            prefix,
            gateway: None,
            oif: Some(oif),
            kind: "unicast".into(),
            metric,
        }
    }

    #[test]
    fn route_lookup_is_longest_prefix_then_metric_in_main() {
        let s = Snapshot {
            routes: vec![
                route([0, 0, 0, 0], 0, RT_TABLE_MAIN, 0, 1),
                route([10, 11, 0, 0], 16, RT_TABLE_MAIN, 0, 2),
                route([10, 11, 0, 5], 32, RT_TABLE_MAIN, 100, 3),
                route([10, 11, 0, 5], 32, RT_TABLE_MAIN, 10, 4),
                route([10, 11, 0, 6], 32, RT_TABLE_LOCAL, 0, 5),
            ],
            ..Default::default()
        };
        let oif = |ip: [u8; 4]| s.route_to(ip.into()).and_then(|r| r.oif);
        assert_eq!(oif([10, 11, 0, 5]), Some(4));
        assert_eq!(oif([10, 11, 0, 6]), Some(2));
        assert_eq!(oif([192, 168, 1, 1]), Some(1));
        assert_eq!(Snapshot::default().route_to(Ipv4Addr::LOCALHOST), None);
    }

    #[test]
    fn sysctl_names_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert!(sysctl_path("net.ipv4..x").is_err());
        assert!(sysctl_path("net/../../etc/passwd").is_err());
    }

    #[test]
    fn prefixes() {
        assert!(prefix_contains([10, 12, 0, 2].into(), 31, [10, 12, 0, 3].into()));
        assert!(!prefix_contains([10, 12, 0, 2].into(), 31, [10, 12, 0, 4].into()));
        assert!(prefix_contains([0, 0, 0, 0].into(), 0, [1, 2, 3, 4].into()));
        assert!(prefix_contains([1, 2, 3, 4].into(), 32, [1, 2, 3, 4].into()));
    }

    /// Root-only: checks against real namespaces that snapshots, nsids and sysctls are read in
    /// the namespace asked for, not the caller's.
    mod live {
        use super::super::*;
        use std::process::Command;

        struct TempNs(String);
        impl TempNs {
            fn new(tag: &str) -> Self {
                let name = format!("h2-{tag}-{}", std::process::id());
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                sh(&["ip", "netns", "add", &name]);
                Self(name)
            }
            fn ns(&self) -> Netns {
                Netns::named(&self.0).unwrap()
            }
        }
        impl Drop for TempNs {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            }
        }
        fn sh(argv: &[&str]) {
            let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{argv:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// Two namespaces joined by a veth pair, as E2B's ns-N and host.
        fn pair(tag: &str) -> (TempNs, TempNs) {
            let (a, b) = (TempNs::new(&format!("{tag}a")), TempNs::new(&format!("{tag}b")));
            sh(&[
                "ip", "-n", &a.0, "link", "add", "veth-9", "type", "veth", "peer", "name", "eth0", "netns",
                &b.0,
            ]);
            sh(&["ip", "-n", &a.0, "addr", "add", "10.12.0.18/31", "dev", "veth-9"]);
            sh(&["ip", "-n", &b.0, "addr", "add", "10.12.0.19/31", "dev", "eth0"]);
            sh(&["ip", "-n", &a.0, "link", "set", "veth-9", "up"]);
            sh(&["ip", "-n", &b.0, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &b.0, "route", "add", "default", "via", "10.12.0.18"]);
            (a, b)
        }

        #[test]
        fn snapshot_and_nsid_find_the_peer_namespace() {
            if !lab::testing::require_root("snapshot_and_nsid_find_the_peer_namespace") {
                return;
            }
            let (host, sbx) = pair("snap");
            let s = snapshot(&sbx.ns()).unwrap();
            let eth0 = s.link("eth0").expect("eth0");
            assert_eq!(eth0.kind.as_deref(), Some("veth"));
            assert!(eth0.up);
            assert_eq!(s.addrs_of(eth0.ifindex)[0].addr, Ipv4Addr::new(10, 12, 0, 19));
            let default = s.route_to(Ipv4Addr::new(10, 11, 0, 9)).expect("default route");
            assert_eq!(
                (default.gateway, default.oif),
                (Some(Ipv4Addr::new(10, 12, 0, 18)), Some(eth0.ifindex))
            );
            assert!(
                s.routes
                    .iter()
                    .any(|r| r.table == RT_TABLE_LOCAL && r.kind == "local"),
                "all tables"
            );
            let nsid = nsid_of(&sbx.ns(), &host.ns()).unwrap();
            assert_eq!(
                nsid, eth0.link_netnsid,
                "the veth's IFLA_LINK_NETNSID names the host namespace"
            );
            let own = Netns::current().unwrap();
            assert_ne!(nsid_of(&sbx.ns(), &own).unwrap(), eth0.link_netnsid);
            let peer = Rtnl::open(&host.ns())
                .unwrap()
                .link(eth0.peer_ifindex.unwrap())
                .unwrap();
            assert_eq!(peer.map(|l| l.name), Some("veth-9".to_string()));
            assert_eq!(Rtnl::open(&host.ns()).unwrap().link(999_999).unwrap(), None);
        }

        #[test]
        fn sysctl_follows_the_thread() {
            if !lab::testing::require_root("sysctl_follows_the_thread") {
                return;
            }
            let (a, b) = pair("sysctl");
            sh(&[
                "ip",
                "netns",
                "exec",
                &a.0,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &b.0,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=0",
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                &b.0,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.eth0.rp_filter=2",
            ]);
            // Alternate, so a cached /proc/sys entry of one namespace would show in the other.
            for _ in 0..3 {
                assert_eq!(sysctl(&a.ns(), "net.ipv4.ip_forward").unwrap(), "1");
                assert_eq!(sysctl(&b.ns(), "net.ipv4.ip_forward").unwrap(), "0");
                assert_eq!(sysctl(&b.ns(), "net.ipv4.conf.eth0.rp_filter").unwrap(), "2");
                assert!(
                    sysctl(&a.ns(), "net.ipv4.conf.eth0.rp_filter").is_err(),
                    "no eth0 in a"
                );
                assert_eq!(
                    sysctl(&a.ns(), "net.ipv4.conf.veth-9.rp_filter").unwrap().len(),
                    1
                );
            }
        }
    }
}
