//! What can act on a packet, as read from the namespaces of the path at decision time: every
//! firewall table of every family, routes of every table and the policy rules that select
//! them, addresses, neighbours, link states, the sysctls that decide, queue disciplines and
//! classic filters, BPF programs on devices and on the client's cgroup. The tracer reads these
//! (netlink, iptables-save, nft, the bpf syscall, /proc); the engine only looks at them.
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::firewall::model::Table;

/// Everything read in one namespace.
#[derive(Debug, Clone, Default)]
pub struct NsInventory {
    pub netns: u32,
    pub label: String,
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
    pub rules: Vec<PolicyRule>,
    pub neighbours: Vec<Neighbour>,
    /// `net.ipv4.*` keys that decide forwarding and ARP (`net.ipv4.ip_forward`,
    /// `net.ipv4.conf.eth0.rp_filter`, ...), with their values.
    pub sysctls: Vec<(String, String)>,
    /// Firewall tables of every family and tool (iptables of both backends, nft).
    pub tables: Vec<Table>,
    /// Rules whose counters rose while the attempt ran (rule naming by counters).
    pub counted: Vec<CountedRule>,
    pub qdiscs: Vec<Qdisc>,
    pub filters: Vec<TcFilter>,
    /// BPF programs attached to this namespace's devices (XDP, tcx, tc).
    pub programs: Vec<Program>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
    pub carrier: bool,
    pub mtu: u32,
    pub mac: Option<String>,
    pub master: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addr {
    pub ifindex: u32,
    pub device: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub prefix: u8,
    /// unicast, local, broadcast, blackhole, unreachable, prohibit, throw, ...
    pub kind: String,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub device: Option<String>,
    pub metric: u32,
    /// The route's preferred source (`src`).
    pub prefsrc: Option<Ipv4Addr>,
}

/// A policy routing rule, every selector the kernel's FIB rules have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyRule {
    pub priority: u32,
    pub src: Option<(Ipv4Addr, u8)>,
    pub dst: Option<(Ipv4Addr, u8)>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// (mark, mask).
    pub fwmark: Option<(u32, u32)>,
    pub uid_range: Option<(u32, u32)>,
    pub ipproto: Option<u8>,
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
    pub tos: Option<u8>,
    pub invert: bool,
    /// `lookup TABLE`, or an action: blackhole, unreachable, prohibit, goto, nop.
    pub table: Option<u32>,
    pub action: String,
    /// As `ip rule` shows it.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    pub ifindex: u32,
    pub device: String,
    pub addr: Ipv4Addr,
    pub mac: Option<String>,
    /// NUD bits.
    pub state: u32,
}

/// A rule a counter difference showed acting during the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountedRule {
    /// iptables-nft, iptables-legacy, nft.
    pub source: String,
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    pub text: String,
    pub packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Qdisc {
    pub ifindex: u32,
    pub device: String,
    pub kind: String,
    /// `root`, `ingress`, `clsact`, or the parent handle.
    pub parent: String,
    pub handle: String,
    pub drops: u32,
    pub qlen: u32,
    /// A pfifo/bfifo's limit (packets or bytes), when it has one.
    pub limit: Option<u32>,
}

/// A classic tc filter and its actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcFilter {
    pub ifindex: u32,
    pub device: String,
    /// `ingress` or `egress` (clsact/ingress qdisc), else the parent handle.
    pub direction: String,
    /// u32, bpf, flower, matchall, ...
    pub kind: String,
    pub priority: u16,
    pub handle: u32,
    /// What its actions do: `drop`, `mirred egress redirect dev X`, `pedit`, `bpf <name>`, ...
    pub actions: Vec<String>,
    /// The BPF program of a `bpf` filter (direct action or classifier).
    pub program: Option<u32>,
}

/// Where a BPF program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    Xdp,
    TcxIngress,
    TcxEgress,
    TcIngress,
    TcEgress,
    CgroupConnect4,
    CgroupSendmsg4,
    CgroupSock,
    Other,
}

/// A BPF program attached somewhere, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Program {
    pub id: u32,
    pub name: String,
    pub tag: String,
    pub attach: Attach,
    pub ifindex: Option<u32>,
    pub device: Option<String>,
    /// The cgroup of a cgroup program.
    pub cgroup: Option<String>,
    /// The BPF link holding it, and the process holding that link (from /proc/PID/fdinfo).
    pub link: Option<u32>,
    pub holder: Option<(u32, String)>,
    /// This tracer's own program: never a suspect.
    pub ours: bool,
}

/// What can act on the client's connect() before a packet exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInventory {
    /// The cgroup the probe ran in (as /proc/self/cgroup names it).
    pub cgroup: String,
    /// Programs effective on it (inherited from parents included).
    pub programs: Vec<Program>,
}

impl NsInventory {
    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }

    pub fn link_named(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// A sysctl's value (`net.ipv4.conf.eth0.rp_filter`).
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A per-device sysctl that the kernel combines with `all` by taking the larger one
    /// (rp_filter, arp_ignore ...): (value, the key that decides).
    pub fn conf_max(&self, dev: &str, name: &str) -> Option<(u32, String)> {
        let num = |k: &str| self.sysctl(k).and_then(|v| v.trim().parse::<u32>().ok());
        let all = format!("net.ipv4.conf.all.{name}");
        let per = format!("net.ipv4.conf.{dev}.{name}");
        match (num(&all), num(&per)) {
            (Some(a), Some(d)) if a >= d => Some((a, all)),
            (_, Some(d)) => Some((d, per)),
            (Some(a), None) => Some((a, all)),
            (None, None) => None,
        }
    }
}
