//! Everything the checks look at, read once and read-only: /proc, netlink snapshots, sysctls,
//! rulesets, and the short envd connection attempt. The checks themselves are pure functions of
//! these facts (see `checks/`), so they are tested without root.
//!
//! With many sandboxes the host side is the same namespace for all of them: its snapshot and
//! rulesets are read once ([`Shared`]) and shared by every sandbox.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::Path,
    sync::{Arc, Mutex, OnceLock},
};

use anyhow::{Context as _, Result};

use crate::{
    discovery::sandbox::{self, Sandbox},
    system::connect::{self, Attempt, AttemptResult},
    system::firewall::{Rulesets, Table},
    system::netns::Netns,
    system::netstate::{self, Link, Qdisc, Rtnl, Snapshot},
};

pub const ENVD_PORT: u16 = 49983;
/// Connection attempts at most (see [`envd_attempt`]).
const ENVD_ATTEMPTS: usize = 3;
/// The last, patient attempt when every short one timed out: a guest that answers within it
/// is slow, not unreachable (the trace's `--late-window` default).
const PATIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// E2B's guest address, when the namespace's rules do not say (the DNAT may be the fault).
pub const DEFAULT_GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
const TUN_PATH: &str = "/dev/net/tun";

/// What was read about one sandbox.
#[derive(Debug, Clone)]
pub struct Facts {
    pub sb: Sandbox,
    pub vmm: Vmm,
    pub tun: Tun,
    /// The sandbox namespace; Err when it could not be read (gone, or not enterable).
    pub ns: Result<NsFacts, String>,
    /// The namespace holding the host end of the veth, when discovery found it.
    pub host: Option<Arc<HostFacts>>,
    /// The tracer's own namespace (the root namespace in production), when it is neither the
    /// sandbox's nor the host side's: where an operator's `ip link` looks.
    pub own: Option<Arc<OwnNs>>,
    /// Sysctls of the host-side veth, read in the host namespace.
    pub host_veth_sysctl: BTreeMap<String, String>,
    /// The host IP the orchestrator connects to (the DNAT's, else E2B's default for the slot).
    pub host_ip: Option<Ipv4Addr>,
    pub guest_ip: Ipv4Addr,
    /// None with --no-connect (or when there is no host IP to connect to).
    /// The attempts made, the last one deciding.
    pub envd: Option<Result<Vec<Attempt>, String>>,
    /// Root queue disciplines of both namespaces, (namespace inode, qdisc), read after the
    /// envd attempt so their drop counters include it.
    pub qdiscs: Vec<(u32, Qdisc)>,
    pub own_inode: Option<u32>,
    /// Inode of `/var/run/netns/<name>` now, for a named namespace.
    pub netns_file: Option<Result<u32, String>>,
}

/// The VMM process.
#[derive(Debug, Clone, Default)]
pub struct Vmm {
    pub pid: Option<u32>,
    /// When no VMM runs: the pid it had when the tracer last saw it.
    pub last_seen: Option<u32>,
    /// None when the process is not running.
    pub proc: Option<ProcInfo>,
}

#[derive(Debug, Clone, Default)]
pub struct ProcInfo {
    pub comm: String,
    /// `/proc/PID/stat` state letter (R, S, D, Z, T ...).
    pub state: char,
    pub netns_inode: Option<u32>,
    pub uid: Option<u32>,
    /// (fd, tap name) of every /dev/net/tun fd, from fdinfo's `iff:`.
    pub tun_fds: Vec<(String, String)>,
}

/// `/dev/net/tun` as the VMM sees it (through its root, which a jailer may change).
#[derive(Debug, Clone)]
pub struct Tun {
    pub path: String,
    pub stat: Result<TunStat, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunStat {
    pub is_char: bool,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One namespace: devices, addresses, routes and neighbours, its firewall, its sysctls.
#[derive(Debug, Clone, Default)]
pub struct NsFacts {
    pub snap: Snapshot,
    pub tables: Vec<Table>,
    /// What the rules were read with ("iptables-nft-save", "nft -j list ruleset" ...).
    pub rule_sources: Vec<String>,
    pub rule_errors: Vec<String>,
    pub sysctl: BTreeMap<String, String>,
    /// nft's named sets with their elements (E2B v2's host firewall keeps its slots there).
    pub nft_sets: Vec<crate::system::firewall::nft::NftSet>,
}

impl NsFacts {
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctl.get(key).map(String::as_str)
    }

    pub fn conntrack(&self) -> Option<(u64, u64)> {
        let n = |k| self.sysctl(k)?.parse().ok();
        Some((n(CT_COUNT)?, n(CT_MAX)?))
    }
}

pub const CT_COUNT: &str = "net.netfilter.nf_conntrack_count";
pub const CT_MAX: &str = "net.netfilter.nf_conntrack_max";

#[derive(Debug, Clone)]
pub struct HostFacts {
    pub ns: Netns,
    pub facts: Result<NsFacts, String>,
}

/// The tracer's own namespace: only its links matter (for taps created there by mistake).
#[derive(Debug, Clone)]
pub struct OwnNs {
    pub ns: Netns,
    pub links: Vec<Link>,
}

/// Facts shared by every sandbox of one run: host namespaces, read once each, and rulesets
/// the caller read already (a trace hands over what rule naming just read).
#[derive(Default)]
pub struct Shared {
    hosts: Mutex<HashMap<u32, Arc<OnceLock<Arc<HostFacts>>>>>,
    own: OnceLock<Option<Netns>>,
    own_links: OnceLock<Option<Arc<OwnNs>>>,
    rules: HashMap<u32, Arc<Rulesets>>,
}

impl Shared {
    /// With rulesets already read, by namespace inode.
    pub fn with_rules(rules: HashMap<u32, Arc<Rulesets>>) -> Self {
        Self {
            rules,
            ..Default::default()
        }
    }

    /// The rulesets of `ns`: handed over, else read now.
    fn rules(&self, ns: &Netns) -> Arc<Rulesets> {
        self.rules
            .get(&ns.inode)
            .cloned()
            .unwrap_or_else(|| Arc::new(Rulesets::read(ns)))
    }

    /// The facts of host namespace `ns`, read by the first sandbox that needs them; the
    /// others wait for that read instead of repeating it.
    pub fn host(&self, ns: &Netns) -> Arc<HostFacts> {
        let cell = {
            let mut map = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(ns.inode).or_default().clone()
        };
        cell.get_or_init(|| {
            Arc::new(HostFacts {
                ns: ns.clone(),
                facts: read_ns(ns, &host_sysctls(), self).map_err(|e| format!("{e:#}")),
            })
        })
        .clone()
    }

    fn own(&self) -> Option<&Netns> {
        self.own.get_or_init(|| Netns::current().ok()).as_ref()
    }

    fn own_links(&self) -> Option<Arc<OwnNs>> {
        self.own_links
            .get_or_init(|| {
                let ns = self.own()?.clone();
                let links = Rtnl::open(&ns).and_then(|mut r| r.links()).ok()?;
                Some(Arc::new(OwnNs { ns, links }))
            })
            .clone()
    }
}

fn host_sysctls() -> Vec<String> {
    ["net.ipv4.conf.all.rp_filter", CT_COUNT, CT_MAX]
        .map(String::from)
        .to_vec()
}

/// Reads everything about one sandbox. With `connect`, the envd attempt comes first, so the
/// neighbour entry read afterwards shows what that attempt found.
pub fn gather(sb: &Sandbox, connect: bool, shared: &Shared) -> Facts {
    let host = sb.host_ns.as_ref().map(|h| shared.host(h));
    let host_ip = choose_host_ip(sb, host.as_deref());
    let own = shared.own().cloned();
    let envd = match (connect, host_ip) {
        (true, Some(ip)) => Some(envd_attempt(sb, ip)),
        _ => None,
    };
    let qdiscs = [Some(&sb.netns), sb.host_ns.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|ns| {
            let read = Rtnl::open(ns).and_then(|mut r| r.qdiscs()).unwrap_or_default();
            read.into_iter().map(|q| (ns.inode, q))
        })
        .collect();
    let vmm = read_vmm(sb);
    let tun = read_tun(vmm.proc.as_ref().and(vmm.pid));
    let ns = read_ns(&sb.netns, &ns_sysctls(sb), shared).map_err(|e| format!("{e:#}"));
    let guest_ip = choose_guest_ip(sb, ns.as_ref().ok());
    let own_facts = own
        .as_ref()
        .filter(|o| o.inode != sb.netns.inode && sb.host_ns.as_ref().is_none_or(|h| h.inode != o.inode))
        .and_then(|_| shared.own_links());
    let host_veth_sysctl = match (&sb.host_ns, &sb.host_veth) {
        (Some(h), Some(v)) => read_sysctls(h, &[format!("net.ipv4.conf.{v}.rp_filter")]),
        _ => BTreeMap::new(),
    };
    Facts {
        sb: sb.clone(),
        vmm,
        tun,
        ns,
        host,
        own: own_facts,
        host_veth_sysctl,
        host_ip,
        guest_ip,
        envd,
        qdiscs,
        own_inode: own.map(|o| o.inode),
        netns_file: sb.netns.name.as_ref().map(|n| {
            crate::system::netns::inode_of(&Path::new(crate::system::netns::NETNS_DIR).join(n))
                .map_err(|e| format!("{e:#}"))
        }),
    }
}

/// The address the orchestrator connects to. The slot's host IP is set up twice, as the host
/// route through the slot's veth and as the namespace's DNAT match; when they disagree, the
/// route is what the orchestrator's SYN follows, so it wins: E2B's default for the slot when
/// routed through this veth, else any /32 routed through it (custom CIDRs), else the DNAT's.
fn choose_host_ip(sb: &Sandbox, host: Option<&HostFacts>) -> Option<Ipv4Addr> {
    let snap = host.and_then(|h| h.facts.as_ref().ok()).map(|f| &f.snap);
    let veth = sb
        .host_veth
        .as_deref()
        .and_then(|v| snap?.link(v))
        .map(|l| l.ifindex);
    let routed_here = |ip: Ipv4Addr| {
        snap.and_then(|s| s.route_to(ip))
            .is_some_and(|r| r.prefix == 32 && r.oif.is_some() && r.oif == veth)
    };
    let slot_default = sb.slot.map(sandbox::e2b_host_ip);
    if let Some(ip) = slot_default.filter(|ip| routed_here(*ip)) {
        return Some(ip);
    }
    if let Some(ip) = sb.host_ip.filter(|ip| routed_here(*ip)) {
        return Some(ip);
    }
    let any_here = snap.and_then(|s| {
        s.routes
            .iter()
            .find(|r| {
                r.table == netstate::RT_TABLE_MAIN && r.prefix == 32 && r.oif.is_some() && r.oif == veth
            })
            .map(|r| r.dst)
    });
    any_here.or(sb.host_ip).or(slot_default)
}

/// The guest's address: the DNAT's target when it is on the tap's subnet (the DNAT may be
/// what is wrong), else E2B's when that is, else the DNAT's anyway.
fn choose_guest_ip(sb: &Sandbox, ns: Option<&NsFacts>) -> Ipv4Addr {
    let dev = sb.bridge.as_deref().or(sb.tap.as_deref());
    let on_subnet = |ip: Ipv4Addr| {
        ns.zip(dev)
            .and_then(|(n, d)| Some((n, n.snap.link(d)?)))
            .is_some_and(|(n, l)| {
                n.snap
                    .addrs_of(l.ifindex)
                    .iter()
                    .any(|a| a.addr != ip && netstate::prefix_contains(a.addr, a.prefix, ip))
            })
    };
    match sb.guest_ip {
        Some(ip) if on_subnet(ip) => ip,
        _ if on_subnet(DEFAULT_GUEST_IP) => DEFAULT_GUEST_IP,
        other => other.unwrap_or(DEFAULT_GUEST_IP),
    }
}

/// Attempts like the orchestrator's first ones (a new connection each, 50 ms timeout, 5 ms
/// apart), from the verified host side of the path only (each cleared by the probe guard),
/// on a thread of its own moved into that namespace. Stops at the first answer: one on a fast
/// guest, three at most. A timeout followed by an answer is what the orchestrator itself
/// shrugs off by retrying. Err(why) when no attempt could be made.
fn envd_attempt(sb: &Sandbox, ip: Ipv4Addr) -> Result<Vec<Attempt>, String> {
    let site = crate::discovery::target::probe_site(sb, SocketAddrV4::new(ip, ENVD_PORT))
        .map_err(|why| format!("no attempt was made: the host side is not known ({why})"))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<Vec<Attempt>, String> {
            let withheld = |w: connect::Withheld| format!("no attempt was made: {w}");
            let mut attempts = Vec::new();
            for i in 0..ENVD_ATTEMPTS {
                if i > 0 {
                    std::thread::sleep(connect::RETRY_DELAY);
                }
                let a = site.attempt(connect::ATTEMPT_TIMEOUT).map_err(withheld)?;
                let done = matches!(a.result, AttemptResult::Status(_) | AttemptResult::Refused);
                attempts.push(a);
                if done {
                    break;
                }
            }
            if attempts.iter().all(|a| a.result == AttemptResult::Timeout) {
                attempts.push(site.attempt(PATIENT_TIMEOUT).map_err(withheld)?);
            }
            Ok(attempts)
        })
        .join()
    })
    .map_err(|_| "the connection attempt panicked".to_string())?
}

fn ns_sysctls(sb: &Sandbox) -> Vec<String> {
    let mut keys = vec![
        "net.ipv4.ip_forward".to_string(),
        "net.ipv4.conf.all.rp_filter".into(),
        CT_COUNT.into(),
        CT_MAX.into(),
    ];
    let devs = [sb.ns_veth.as_deref(), sb.bridge.as_deref().or(sb.tap.as_deref())];
    for dev in devs.into_iter().flatten() {
        keys.push(format!("net.ipv4.conf.{dev}.rp_filter"));
        keys.push(format!("net.ipv4.conf.{dev}.forwarding"));
    }
    keys
}

/// Sysctls that exist (a device that does not has none), as `sysctl` names them.
fn read_sysctls(ns: &Netns, keys: &[String]) -> BTreeMap<String, String> {
    keys.iter()
        .filter_map(|k| Some((k.clone(), netstate::sysctl(ns, &sysctl_key(k)).ok()?)))
        .collect()
}

/// Device names may contain dots (`eth0.100`): those keys are given with slashes, as
/// `sysctl` itself wants them.
fn sysctl_key(key: &str) -> String {
    match key.strip_prefix("net.ipv4.conf.") {
        Some(rest) => match rest.rsplit_once('.') {
            Some((dev, leaf)) if dev.contains('.') => format!("net/ipv4/conf/{dev}/{leaf}"),
            _ => key.to_string(),
        },
        None => key.to_string(),
    }
}

/// Snapshot, rulesets and sysctls of one namespace.
fn read_ns(ns: &Netns, sysctls: &[String], shared: &Shared) -> Result<NsFacts> {
    let snap = Rtnl::open(ns)
        .and_then(|mut r| r.snapshot())
        .with_context(|| format!("read the network state of {}", ns.label()))?;
    let rules = shared.rules(ns);
    Ok(NsFacts {
        nft_sets: rules.nft.as_ref().map(|n| n.sets.clone()).unwrap_or_default(),
        snap,
        tables: rules.tables(),
        rule_sources: rules.sources.clone(),
        rule_errors: rules.errors.clone(),
        sysctl: read_sysctls(ns, sysctls),
    })
}

fn read_vmm(sb: &Sandbox) -> Vmm {
    let last_seen = match (sb.pid, &sb.id) {
        (None, Some(id)) => crate::discovery::cache::recall(id).and_then(|s| s.pid),
        _ => None,
    };
    Vmm {
        pid: sb.pid,
        last_seen,
        proc: sb.pid.and_then(read_proc),
    }
}

/// The process, or None when it is not running (gone, or a zombie).
fn read_proc(pid: u32) -> Option<ProcInfo> {
    let stat = crate::system::proc::stat(pid).filter(|s| !s.is_dead())?;
    let uid = crate::system::proc::uid(pid);
    Some(ProcInfo {
        comm: stat.comm,
        state: stat.state,
        netns_inode: crate::system::netns::inode_of(Path::new(&format!("/proc/{pid}/ns/net"))).ok(),
        uid,
        tun_fds: tun_fds(pid),
    })
}

/// The process's /dev/net/tun fds and the device each is attached to.
fn tun_fds(pid: u32) -> Vec<(String, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(String, String)> = dir
        .flatten()
        .filter(|e| sandbox::is_tun(&e.path()))
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.to_string();
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
            Some((fd, sandbox::iff_from_fdinfo(&info)?))
        })
        .collect();
    fds.sort_by_key(|(fd, _)| fd.parse::<u32>().unwrap_or(u32::MAX));
    fds
}

/// `/dev/net/tun` through the VMM's root when it runs (a jailer gives it its own), else the
/// host's.
fn read_tun(pid: Option<u32>) -> Tun {
    let path = match pid {
        Some(p) => format!("/proc/{p}/root{TUN_PATH}"),
        None => TUN_PATH.to_string(),
    };
    let stat = fs::metadata(&path)
        .map(|m| {
            let dev = m.rdev();
            TunStat {
                is_char: m.file_type().is_char_device(),
                major: (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32,
                minor: ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            }
        })
        .map_err(|e| e.to_string());
    Tun { path, stat }
}

impl Facts {
    pub fn ns(&self) -> Option<&NsFacts> {
        self.ns.as_ref().ok()
    }

    pub fn host_ns(&self) -> Option<&NsFacts> {
        self.host.as_ref().and_then(|h| h.facts.as_ref().ok())
    }

    pub fn host_link(&self, name: Option<&str>) -> Option<&Link> {
        self.host_ns()?.snap.link(name?)
    }
}
