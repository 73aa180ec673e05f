//! Finding sandboxes from the host, read-only.
//!
//! The orchestrator keeps "sandbox id → slot" in memory only, so everything is found from the
//! outside, cheapest first: the VMM by `--api-sock /tmp/fc-<id>-<rand>.sock` in
//! `/proc/*/cmdline` (or E2B's cgroup `/sys/fs/cgroup/e2b/sbx-<id>-<rand>/`), its namespace by
//! the inode of `/proc/<pid>/ns/net`, its tap by its open `/dev/net/tun` fds, then (only for
//! the sandboxes asked for) the namespace's devices over netlink, its DNAT rule, and the host
//! side: the namespace holding the peer of the namespace's veth.
use std::{
    collections::{HashMap, HashSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, Result};

use crate::{
    error::EnvError,
    netns::{self, Netns},
    netstate::{Addr, Link, Rtnl},
    rules::{self, Backend, IptSave},
};

/// Where E2B puts one cgroup per sandbox: `sbx-<id>-<rand>`.
pub const E2B_CGROUP_DIR: &str = "/sys/fs/cgroup/e2b";
const API_SOCK_FLAG: &str = "--api-sock";
const TUN_DEVICE: &str = "/dev/net/tun";
const CMDLINE_CHUNK: usize = 8192;
/// E2B's default SANDBOXES_HOST_NETWORK_CIDR: slot N's host IP is this + N.
const E2B_HOST_NET: u32 = u32::from_be_bytes([10, 11, 0, 0]);
/// Workers for [`discover_all`]: most of the time goes to iptables-save children and netlink
/// round trips, so a few more than the cores keeps them busy.
const MAX_WORKERS: usize = 8;

/// One sandbox as seen from the host. Every `Option` is None when it could not be found;
/// nothing is guessed.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// E2B: `i` + 20 lowercase alphanumerics, from `--api-sock /tmp/fc-<id>-<rand>.sock` or
    /// the cgroup `sbx-<id>-<rand>`.
    pub id: Option<String>,
    /// The VMM process. None only from [`from_netns`] when no process holds a tap there.
    pub pid: Option<u32>,
    pub api_sock: Option<String>,
    /// The VMM's namespace (path `/var/run/netns/NAME`, or `/proc/PID/ns/net` when unnamed).
    pub netns: Netns,
    pub tap: Option<String>,
    /// Some process (the VMM) holds the tap open: without a reader, frames to the guest die.
    pub tap_held: bool,
    /// The bridge the tap is a port of (not in E2B; other Firecracker setups).
    pub bridge: Option<String>,
    /// The DNAT rule's destination (E2B: 169.254.0.21).
    pub guest_ip: Option<Ipv4Addr>,
    /// The DNAT rule's match address (E2B: 10.11.0.0 + slot).
    pub host_ip: Option<Ipv4Addr>,
    /// N of an E2B namespace name `ns-N`.
    pub slot: Option<u32>,
    /// The veth whose peer lives in another namespace (E2B: eth0).
    pub ns_veth: Option<String>,
    pub ns_veth_ip: Option<Ipv4Addr>,
    /// The namespace of that peer: the root namespace in production, `e2b-host` in the lab.
    pub host_ns: Option<Netns>,
    /// The peer (E2B: veth-N).
    pub host_veth: Option<String>,
    pub host_veth_ip: Option<Ipv4Addr>,
    /// Inconsistencies found on the way, one sentence each.
    pub warnings: Vec<String>,
}

impl Sandbox {
    fn new(vmm: Option<&Vmm>, netns: Netns) -> Self {
        Self {
            id: vmm.and_then(|v| v.id.clone()),
            pid: vmm.map(|v| v.pid),
            api_sock: vmm.and_then(|v| v.api_sock.clone()),
            slot: netns.name.as_deref().and_then(slot_from_netns),
            netns,
            tap: None,
            tap_held: false,
            bridge: None,
            guest_ip: None,
            host_ip: None,
            ns_veth: None,
            ns_veth_ip: None,
            host_ns: None,
            host_veth: None,
            host_veth_ip: None,
            warnings: Vec::new(),
        }
    }

    /// The id, or a stand-in for messages.
    pub fn label(&self) -> String {
        match (&self.id, self.pid) {
            (Some(id), _) => id.clone(),
            (None, Some(pid)) => format!("pid {pid}"),
            (None, None) => self.netns.label(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

/// Every VMM on this host: processes with `--api-sock` (Firecracker, the lab's lab-vmm), plus
/// E2B's sandbox cgroups. Sorted by slot, then id.
pub fn discover_all() -> Result<Vec<Sandbox>> {
    let mut vmms = scan_vmms();
    merge_cgroups(&mut vmms, &cgroup_sandboxes());
    let shared = Shared::new(Some(&vmms));
    let mut found = resolve_parallel(&vmms, &shared);
    found.sort_by(|a, b| (a.slot, &a.id, a.pid).cmp(&(b.slot, &b.id, b.pid)));
    Ok(found)
}

/// The sandbox with this id, or with the one id that starts with it (as git and docker take
/// a unique prefix). Only that sandbox's namespace is examined.
pub fn find(arg: &str) -> Result<Sandbox> {
    match lookup(arg, &[])? {
        Lookup::Running(sb) => Ok(*sb),
        Lookup::NotRunning(id) => Err(EnvError::UnknownSandbox {
            id,
            known: Vec::new(),
        }
        .into()),
    }
}

/// What [`lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    Running(Box<Sandbox>),
    /// The id named one of the `remembered` ids, whose VMM is not running.
    NotRunning(String),
}

/// Like [`find`], with ids remembered from earlier discoveries taking part in the prefix match
/// (a sandbox whose VMM died is still worth tracing by its namespace).
pub fn lookup(arg: &str, remembered: &[String]) -> Result<Lookup> {
    if !is_valid_id(arg) {
        return Err(EnvError::MalformedSandboxId(arg.to_string()).into());
    }
    // E2B's cgroup names the sandbox directly; the /proc scan covers every other VMM.
    if let Some(vmm) = vmm_from_cgroup(arg) {
        let shared = Shared::new(None);
        let sb = resolve_vmm(&vmm, &shared, &mut HostCache::default())
            .with_context(|| format!("sandbox {arg}"))?;
        return Ok(Lookup::Running(Box::new(sb)));
    }
    let vmms = scan_vmms();
    let running = known_ids(&vmms);
    let mut known = running.clone();
    known.extend(remembered.iter().cloned());
    known.sort();
    known.dedup();
    let id = match_id(arg, &known).map_err(|e| match e {
        // Only running sandboxes are worth listing as alternatives.
        EnvError::UnknownSandbox { id, .. } => EnvError::UnknownSandbox {
            id,
            known: running.clone(),
        },
        other => other,
    })?;
    let vmm = match vmms.iter().find(|v| v.id.as_deref() == Some(id.as_str())) {
        Some(v) => v.clone(),
        // Only a cgroup names it (no `--api-sock` with the id on any command line).
        None => match vmm_from_cgroup(&id) {
            Some(v) => v,
            None => return Ok(Lookup::NotRunning(id)),
        },
    };
    let shared = Shared::new(Some(&vmms));
    let sb =
        resolve_vmm(&vmm, &shared, &mut HostCache::default()).with_context(|| format!("sandbox {id}"))?;
    Ok(Lookup::Running(Box::new(sb)))
}

/// The id among `known` that `arg` names: itself, else the only one it is a prefix of.
/// Unknown and ambiguous ids are the operator's to fix (exit 2, listing the candidates).
pub fn match_id(arg: &str, known: &[String]) -> Result<String, EnvError> {
    if known.iter().any(|k| k == arg) {
        return Ok(arg.to_string());
    }
    let mut hits: Vec<String> = known.iter().filter(|k| k.starts_with(arg)).cloned().collect();
    hits.sort();
    hits.dedup();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(EnvError::UnknownSandbox {
            id: arg.to_string(),
            known: known.to_vec(),
        }),
        _ => Err(EnvError::AmbiguousSandboxId {
            prefix: arg.to_string(),
            candidates: hits,
        }),
    }
}

/// For VMMs without E2B naming (`--netns`): the VMM is whatever process in that namespace
/// holds a tap, if any; the id is unknown.
pub fn from_netns(name: &str) -> Result<Sandbox> {
    let netns = Netns::named(name).map_err(|e| EnvError::Usage(format!("{e:#}")))?;
    let vmm = tap_holder_in(netns.inode);
    let shared = Shared::new(None);
    let mut sb = resolve_in(vmm.as_ref(), netns, &shared, &mut HostCache::default())?;
    sb.id = None;
    Ok(sb)
}

/// For VMMs without E2B naming (`--pid`).
pub fn from_pid(pid: u32) -> Result<Sandbox> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| EnvError::Usage(format!("there is no process {pid}")))?;
    let mut vmm = Vmm::from_cmdline(pid, &cmdline).unwrap_or(Vmm {
        pid,
        api_sock: None,
        id: None,
    });
    if vmm.id.is_none() {
        vmm.id = cgroup_id_of(pid);
    }
    let shared = Shared::new(None);
    resolve_vmm(&vmm, &shared, &mut HostCache::default()).with_context(|| format!("VMM pid {pid}"))
}

/// Longest sandbox id (or prefix) accepted: E2B's are 21 characters (`i` + 20), older and
/// other deployments differ; anything longer is not an id.
pub const MAX_ID_LEN: usize = 64;
/// Length of the random part E2B appends to names (`fc-<id>-<rand>.sock`, `sbx-<id>-<rand>`).
const RAND_LEN: usize = 20;

/// Whether `id` can be a sandbox id or a prefix of one: 1 to [`MAX_ID_LEN`] lowercase letters
/// and digits. That is all paths and commands need to stay safe (no `/`, no leading `-`, no
/// control characters); E2B's own ids are `i` + 20 of them (`ix7hj8hustuvlxiqc0g0u`).
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(is_id_byte)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

// ---------------------------------------------------------------------------------------------
// Pure parsing.

/// The `--api-sock` value of a NUL-separated command line. Only a whole argument counts: the
/// `bash -c "... firecracker --api-sock ..."` wrapper E2B starts Firecracker with carries the
/// flag inside one long argument and must not be taken for the VMM.
pub fn api_sock_of(cmdline: &[u8]) -> Option<String> {
    // Runs on every process of the host: compare bytes, allocate only for the answer.
    let flag = API_SOCK_FLAG.as_bytes();
    let mut args = cmdline.split(|b| *b == 0);
    let value = loop {
        let arg = args.next()?;
        if arg == flag {
            break args.next()?;
        }
        if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix(b"=")) {
            break v;
        }
    };
    (!value.is_empty()).then(|| String::from_utf8_lossy(value).into_owned())
}

/// `/tmp/fc-<id>-<rand>.sock` (or the older `/tmp/fc-<id>.sock`) → id.
pub fn id_from_api_sock(path: &str) -> Option<String> {
    let file = Path::new(path).file_name()?.to_str()?;
    id_before_rand(file.strip_prefix("fc-")?.strip_suffix(".sock")?)
}

/// `sbx-<id>-<rand>` (an E2B cgroup directory; `sbx-<id>` before 2026-03) → id.
pub fn id_from_cgroup_name(name: &str) -> Option<String> {
    id_before_rand(name.strip_prefix("sbx-")?)
}

/// `<id>-<rand>` → id, where rand is the last [`RAND_LEN`] characters (E2B renews it on every
/// start); a name without that suffix is the id itself.
fn id_before_rand(name: &str) -> Option<String> {
    let cut = name.len().checked_sub(RAND_LEN + 1);
    let id = match cut.and_then(|c| Some((name.get(..c)?, name.get(c..)?))) {
        Some((id, rest)) if rest.len() == RAND_LEN + 1 && is_rand_suffix(rest) => id,
        _ => name,
    };
    is_valid_id(id).then(|| id.to_string())
}

/// `-` followed by [`RAND_LEN`] lowercase alphanumerics.
fn is_rand_suffix(s: &str) -> bool {
    s.strip_prefix('-')
        .is_some_and(|r| r.len() == RAND_LEN && r.bytes().all(is_id_byte))
}

/// `/proc/<pid>/cgroup` (`0::/e2b/sbx-<id>-<rand>`) → id.
pub fn id_from_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(id_from_cgroup_name)
}

/// The tap a `/dev/net/tun` fd is attached to, from its fdinfo (`iff:\ttap0`).
pub fn iff_from_fdinfo(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `ns-7` → 7.
pub fn slot_from_netns(name: &str) -> Option<u32> {
    name.strip_prefix("ns-")?.parse().ok().filter(|n| *n > 0)
}

/// Slot N's host IP with E2B's default CIDR.
pub fn e2b_host_ip(slot: u32) -> Ipv4Addr {
    Ipv4Addr::from(E2B_HOST_NET.wrapping_add(slot))
}

/// What a namespace's DNAT rule says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dnat {
    /// The matched destination, when the rule matches one address.
    pub host_ip: Option<Ipv4Addr>,
    pub guest_ip: Ipv4Addr,
}

/// The DNAT rule of an `iptables-save` dump: PREROUTING's first, else any chain's.
pub fn dnat_in_iptables(save: &IptSave) -> Option<Dnat> {
    let nat = save.table("nat")?;
    let dnats = || nat.rules.iter().filter(|r| r.target.as_deref() == Some("DNAT"));
    dnats()
        .filter(|r| r.chain == "PREROUTING")
        .chain(dnats())
        .find_map(|r| dnat_of_rule(&r.text))
}

/// `-A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21[:port]`.
fn dnat_of_rule(text: &str) -> Option<Dnat> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |flag: &str| words.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
    let guest_ip = after("--to-destination").and_then(first_ipv4)?;
    let host_ip = after("-d").and_then(single_address);
    Some(Dnat { host_ip, guest_ip })
}

/// The first address of `169.254.0.21`, `169.254.0.21:49983` or `169.254.0.21-169.254.0.22`.
fn first_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.split([':', '-']).next()?.parse().ok()
}

/// `10.11.0.1/32` or `10.11.0.1` → the address; a wider prefix matches no single host.
fn single_address(s: &str) -> Option<Ipv4Addr> {
    match s.split_once('/') {
        Some((ip, "32")) => ip.parse().ok(),
        Some(_) => None,
        None => s.parse().ok(),
    }
}

/// The DNAT of `nft -j list ruleset` (E2B network v2: `ip daddr <host> dnat ip to <guest>` in
/// chain `preroute_nat`): that chain's first, else any chain's.
pub fn dnat_in_nft(json: &str) -> Option<Dnat> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let rules: Vec<&serde_json::Value> = v["nftables"]
        .as_array()?
        .iter()
        .filter_map(|item| item.get("rule"))
        .collect();
    let in_chain = |r: &&&serde_json::Value| r["chain"] == "preroute_nat";
    rules
        .iter()
        .filter(in_chain)
        .chain(rules.iter())
        .find_map(|r| nft_rule_dnat(r))
}

fn nft_rule_dnat(rule: &serde_json::Value) -> Option<Dnat> {
    let exprs = rule["expr"].as_array()?;
    let guest_ip = exprs
        .iter()
        .find_map(|e| e.get("dnat")?["addr"].as_str()?.parse().ok())?;
    let host_ip = exprs.iter().find_map(|e| {
        let m = e.get("match")?;
        let payload = &m["left"]["payload"];
        let is_daddr = payload["protocol"] == "ip" && payload["field"] == "daddr" && m["op"] == "==";
        if is_daddr {
            m["right"].as_str()?.parse().ok()
        } else {
            None
        }
    });
    Some(Dnat { host_ip, guest_ip })
}

// ---------------------------------------------------------------------------------------------
// Cheap discovery: /proc and cgroup names only.

/// A VMM process, before its namespace is examined.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Vmm {
    pid: u32,
    api_sock: Option<String>,
    id: Option<String>,
}

impl Vmm {
    fn from_cmdline(pid: u32, cmdline: &[u8]) -> Option<Self> {
        let api_sock = api_sock_of(cmdline)?;
        let id = id_from_api_sock(&api_sock);
        Some(Self {
            pid,
            api_sock: Some(api_sock),
            id,
        })
    }
}

/// Pids of all processes (thread group leaders).
fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every process with `--api-sock`, reading nothing but `/proc/*/cmdline`.
fn scan_vmms() -> Vec<Vmm> {
    let own = std::process::id();
    let mut buf = Vec::new();
    let vmms: Vec<Vmm> = pids()
        .into_iter()
        .filter(|pid| *pid != own)
        .filter_map(|pid| {
            let len = read_cmdline(pid, &mut buf).ok()?;
            Vmm::from_cmdline(pid, &buf[..len])
        })
        .collect();
    drop_wrappers(vmms)
}

/// Reads a command line into a reused buffer (grown, never shrunk or re-zeroed) and returns
/// its length, with as few syscalls as possible: this runs for every process of the host.
/// (fs::read would stat first, and read_to_end reads once more to see the end; a /proc
/// command line comes whole in one read when the buffer is larger.)
fn read_cmdline(pid: u32, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::Read as _;
    let mut file = fs::File::open(format!("/proc/{pid}/cmdline"))?;
    if buf.is_empty() {
        buf.resize(CMDLINE_CHUNK, 0);
    }
    let mut len = 0;
    loop {
        let n = file.read(&mut buf[len..])?;
        len += n;
        if n == 0 || len < buf.len() {
            return Ok(len);
        }
        buf.resize(buf.len() + CMDLINE_CHUNK, 0);
    }
}

/// When a wrapper (strace, a supervisor) carries the same `--api-sock` as the VMM it started,
/// keeps the child: the process that really holds the tap.
fn drop_wrappers(vmms: Vec<Vmm>) -> Vec<Vmm> {
    let mut by_sock: HashMap<&Option<String>, usize> = HashMap::new();
    for v in &vmms {
        *by_sock.entry(&v.api_sock).or_default() += 1;
    }
    if by_sock.values().all(|n| *n == 1) {
        return vmms;
    }
    let parents: HashSet<(u32, Option<String>)> = vmms
        .iter()
        .filter_map(|v| Some((ppid(v.pid)?, v.api_sock.clone())))
        .collect();
    vmms.iter()
        .filter(|v| !parents.contains(&(v.pid, v.api_sock.clone())))
        .cloned()
        .collect()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the last ')' (the command name may contain anything): state, ppid, ...
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// E2B's cgroups: (id, pids in it).
fn cgroup_sandboxes() -> Vec<(String, Vec<u32>)> {
    let Ok(dir) = fs::read_dir(E2B_CGROUP_DIR) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let id = id_from_cgroup_name(e.file_name().to_str()?)?;
            Some((id, cgroup_pids(&e.path())))
        })
        .collect()
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Ids from cgroups: given to VMMs found without one, and VMMs only a cgroup names (their
/// command line has no `--api-sock`) are added.
fn merge_cgroups(vmms: &mut Vec<Vmm>, cgroups: &[(String, Vec<u32>)]) {
    for (id, pids) in cgroups {
        if vmms.iter().any(|v| v.id.as_deref() == Some(id)) {
            continue;
        }
        if let Some(v) = vmms.iter_mut().find(|v| pids.contains(&v.pid)) {
            v.id = Some(id.clone());
        } else if let Some(pid) = tap_holder(pids) {
            vmms.push(Vmm {
                pid,
                api_sock: None,
                id: Some(id.clone()),
            });
        }
    }
}

/// The VMM of sandbox `id` from its cgroup, when no command line names it.
fn vmm_from_cgroup(id: &str) -> Option<Vmm> {
    let dir = fs::read_dir(E2B_CGROUP_DIR).ok()?;
    let cg = dir.flatten().find(|e| {
        e.file_name()
            .to_str()
            .and_then(id_from_cgroup_name)
            .is_some_and(|found| found == id)
    })?;
    let pids = cgroup_pids(&cg.path());
    let pid = pids
        .iter()
        .copied()
        .find(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| api_sock_of(&c).is_some()))
        .or_else(|| tap_holder(&pids))?;
    let api_sock = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| api_sock_of(&c));
    Some(Vmm {
        pid,
        api_sock,
        id: Some(id.to_string()),
    })
}

fn cgroup_id_of(pid: u32) -> Option<String> {
    id_from_proc_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

fn known_ids(vmms: &[Vmm]) -> Vec<String> {
    let mut ids: Vec<String> = vmms
        .iter()
        .filter_map(|v| v.id.clone())
        .chain(cgroup_sandboxes().into_iter().map(|(id, _)| id))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Taps a process holds open: its `/dev/net/tun` fds and the device each is attached to.
fn held_taps(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut taps: Vec<String> = dir
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t == Path::new(TUN_DEVICE)))
        .filter_map(|e| {
            let fd = e.file_name();
            iff_from_fdinfo(&fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_str()?)).ok()?)
        })
        .collect();
    // A multi-queue tap is one fd per queue.
    taps.sort();
    taps.dedup();
    taps
}

/// The first of `pids` that holds a tap.
fn tap_holder(pids: &[u32]) -> Option<u32> {
    pids.iter().copied().find(|p| !held_taps(*p).is_empty())
}

/// The process in namespace `inode` that holds a tap; one with `--api-sock` first.
fn tap_holder_in(inode: u32) -> Option<Vmm> {
    let own = std::process::id();
    let mut holders: Vec<Vmm> = pids()
        .into_iter()
        .filter(|p| *p != own && netns_inode_of_pid(*p) == Some(inode) && !held_taps(*p).is_empty())
        .map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            Vmm::from_cmdline(pid, &cmdline).unwrap_or(Vmm {
                pid,
                api_sock: None,
                id: None,
            })
        })
        .collect();
    holders.sort_by_key(|v| (v.api_sock.is_none(), v.pid));
    holders.into_iter().next()
}

fn netns_inode_of_pid(pid: u32) -> Option<u32> {
    netns::inode_of(&ns_path_of(pid)).ok()
}

fn ns_path_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

// ---------------------------------------------------------------------------------------------
// Expensive part: one sandbox's namespace.

/// What every resolution needs, computed once.
struct Shared {
    /// inode → name under /var/run/netns.
    names: HashMap<u32, String>,
    /// Host-side candidates worth asking first: the tracer's own namespace (production: the
    /// root namespace), then named namespaces that do not look like E2B slots.
    likely: Vec<Netns>,
    /// Named `ns-N` namespaces that hold no VMM (a slot whose VMM died), asked last; built
    /// only when no likely candidate matched.
    unlikely: OnceLock<Vec<Netns>>,
    /// VMM pids, when already known (else scanned for when `unlikely` is built).
    vmm_pids: Option<Vec<u32>>,
}

impl Shared {
    fn new(vmms: Option<&[Vmm]>) -> Self {
        let names = netns::names();
        let own = own_netns(&names);
        let own_inode = own.as_ref().map(|o| o.inode);
        let named = named_netns(&names).filter(|n| Some(n.inode) != own_inode && !looks_like_slot(n));
        let mut named: Vec<Netns> = named.collect();
        named.sort_by(|a, b| a.name.cmp(&b.name));
        let likely = own.into_iter().chain(named).collect();
        let vmm_pids = vmms.map(|v| v.iter().map(|v| v.pid).collect());
        Self {
            names,
            likely,
            unlikely: OnceLock::new(),
            vmm_pids,
        }
    }

    fn unlikely(&self) -> &[Netns] {
        self.unlikely.get_or_init(|| {
            let pids = self
                .vmm_pids
                .clone()
                .unwrap_or_else(|| scan_vmms().iter().map(|v| v.pid).collect());
            let sandboxes: HashSet<u32> = pids.into_iter().filter_map(netns_inode_of_pid).collect();
            let mut v: Vec<Netns> = named_netns(&self.names)
                .filter(|n| looks_like_slot(n) && !sandboxes.contains(&n.inode))
                .collect();
            v.sort_by_key(|n| n.name.clone());
            v
        })
    }

    /// Every host-side candidate, most likely first.
    fn candidates(&self) -> impl Iterator<Item = &Netns> {
        let mut unlikely = None;
        self.likely.iter().chain(std::iter::from_fn(move || {
            let it = unlikely.get_or_insert_with(|| self.unlikely().iter());
            it.next()
        }))
    }

    fn netns_of_pid(&self, pid: u32) -> Result<Netns> {
        let inode = netns::inode_of(&ns_path_of(pid)).with_context(|| format!("namespace of pid {pid}"))?;
        Ok(match self.names.get(&inode) {
            Some(name) => Netns {
                inode,
                name: Some(name.clone()),
                path: Path::new(netns::NETNS_DIR).join(name),
            },
            None => Netns {
                inode,
                name: None,
                path: ns_path_of(pid),
            },
        })
    }
}

/// This process's namespace, named from `names` (Netns::current would list them again).
fn own_netns(names: &HashMap<u32, String>) -> Option<Netns> {
    let mut own = Netns::from_path(Path::new("/proc/self/ns/net"), None).ok()?;
    own.name = names.get(&own.inode).cloned();
    Some(own)
}

fn named_netns(names: &HashMap<u32, String>) -> impl Iterator<Item = Netns> + '_ {
    names.iter().map(|(inode, name)| Netns {
        inode: *inode,
        name: Some(name.clone()),
        path: Path::new(netns::NETNS_DIR).join(name),
    })
}

fn looks_like_slot(ns: &Netns) -> bool {
    ns.name.as_deref().and_then(slot_from_netns).is_some()
}

/// Host namespaces found so far, with an open socket and their addresses: in [`discover_all`]
/// all sandboxes share one host namespace, so it is asked about first and read once.
#[derive(Default)]
struct HostCache {
    hosts: Vec<HostNs>,
}

struct HostNs {
    ns: Netns,
    rtnl: Rtnl,
    addrs: Option<Vec<Addr>>,
}

impl HostNs {
    fn open(ns: Netns) -> Result<Self> {
        Ok(Self {
            rtnl: Rtnl::open(&ns)?,
            ns,
            addrs: None,
        })
    }

    /// The peer link and its first IPv4 address.
    fn peer(&mut self, ifindex: u32) -> Result<Option<(Link, Option<Ipv4Addr>)>> {
        let Some(link) = self.rtnl.link(ifindex)? else {
            return Ok(None);
        };
        if self.addrs.is_none() {
            self.addrs = Some(self.rtnl.addrs()?);
        }
        let ip = self
            .addrs
            .iter()
            .flatten()
            .find(|a| a.ifindex == ifindex)
            .map(|a| a.addr);
        Ok(Some((link, ip)))
    }
}

fn resolve_vmm(vmm: &Vmm, shared: &Shared, cache: &mut HostCache) -> Result<Sandbox> {
    let netns = shared.netns_of_pid(vmm.pid)?;
    resolve_in(Some(vmm), netns, shared, cache)
}

fn resolve_in(vmm: Option<&Vmm>, netns: Netns, shared: &Shared, cache: &mut HostCache) -> Result<Sandbox> {
    let mut sb = Sandbox::new(vmm, netns);
    let held = vmm.map(|v| held_taps(v.pid)).unwrap_or_default();
    let mut rtnl = Rtnl::open(&sb.netns)?;
    let links = rtnl
        .links()
        .with_context(|| format!("links of {}", sb.netns.label()))?;
    let addrs = rtnl
        .addrs()
        .with_context(|| format!("addresses of {}", sb.netns.label()))?;
    set_tap(&mut sb, &held, &links);
    set_ns_veth(&mut sb, &links, &addrs);
    set_nat(&mut sb);
    if let Some(veth) = sb
        .ns_veth
        .as_deref()
        .and_then(|n| links.iter().find(|l| l.name == n))
    {
        set_host_side(&mut sb, veth, &mut rtnl, shared, cache)?;
    }
    check_slot(&mut sb);
    Ok(sb)
}

/// The tap the VMM holds; without one, the namespace's only tun device (E2B: tap0), held if
/// it has carrier (a tap has carrier exactly while some process has it open).
fn set_tap(sb: &mut Sandbox, held: &[String], links: &[Link]) {
    if let Some(first) = held.first() {
        if held.len() > 1 {
            sb.warnings.push(format!(
                "the VMM holds several taps ({}); following {first}",
                held.join(", ")
            ));
        }
        if !links.iter().any(|l| &l.name == first) {
            sb.warnings.push(format!(
                "the VMM holds tap {first}, but {} has no such device",
                sb.netns.label()
            ));
        }
        sb.tap = Some(first.clone());
        sb.tap_held = true;
    } else {
        let tuns: Vec<&Link> = links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("tun"))
            .collect();
        let tap = match tuns.as_slice() {
            [one] => Some(*one),
            many => many.iter().find(|l| l.name == "tap0").copied(),
        };
        if tap.is_none() && tuns.len() > 1 {
            let names: Vec<&str> = tuns.iter().map(|l| l.name.as_str()).collect();
            sb.warnings.push(format!(
                "several taps in {} and no VMM holds one: {}",
                sb.netns.label(),
                names.join(", ")
            ));
        }
        sb.tap = tap.map(|l| l.name.clone());
        sb.tap_held = tap.is_some_and(|l| l.carrier);
    }
    let tap_link = sb.tap.as_deref().and_then(|t| links.iter().find(|l| l.name == t));
    sb.bridge = tap_link
        .and_then(|l| l.master)
        .and_then(|m| links.iter().find(|l| l.ifindex == m))
        .map(|l| l.name.clone());
}

/// The veth whose peer is in another namespace (eth0 preferred when there are several).
fn set_ns_veth(sb: &mut Sandbox, links: &[Link], addrs: &[Addr]) {
    let outward: Vec<&Link> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth") && l.link_netnsid.is_some())
        .collect();
    let veth = outward
        .iter()
        .find(|l| l.name == "eth0")
        .or(outward.first())
        .copied();
    if outward.len() > 1 {
        let names: Vec<&str> = outward.iter().map(|l| l.name.as_str()).collect();
        sb.warnings.push(format!(
            "several veths lead out of {}: {}",
            sb.netns.label(),
            names.join(", ")
        ));
    }
    if veth.is_none() {
        sb.warnings.push(format!(
            "no veth in {} leads to another namespace",
            sb.netns.label()
        ));
    }
    sb.ns_veth = veth.map(|l| l.name.clone());
    sb.ns_veth_ip = veth
        .and_then(|l| addrs.iter().find(|a| a.ifindex == l.ifindex))
        .map(|a| a.addr);
}

fn set_nat(sb: &mut Sandbox) {
    match read_dnat(&sb.netns) {
        Ok(Some(d)) => {
            sb.guest_ip = Some(d.guest_ip);
            sb.host_ip = d.host_ip;
        }
        Ok(None) => sb.warnings.push(format!(
            "no DNAT rule in {} (iptables or nftables)",
            sb.netns.label()
        )),
        Err(e) => sb.warnings.push(format!(
            "cannot read the NAT rules of {}: {e:#}",
            sb.netns.label()
        )),
    }
}

/// The DNAT of namespace `ns`: iptables-nft, iptables-legacy (only when its nat table is
/// loaded there), then native nftables (E2B network v2).
fn read_dnat(ns: &Netns) -> Result<Option<Dnat>> {
    if let Some(d) = rules::read_iptables(ns, Backend::Nft)?
        .as_ref()
        .and_then(dnat_in_iptables)
    {
        return Ok(Some(d));
    }
    if legacy_nat_loaded(ns)
        && let Some(d) = rules::read_iptables(ns, Backend::Legacy)?
            .as_ref()
            .and_then(dnat_in_iptables)
    {
        return Ok(Some(d));
    }
    let out = match ns.command("nft").args(["-j", "list", "ruleset"]).output() {
        Ok(o) if o.status.success() => o,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("nft"),
    };
    Ok(dnat_in_nft(&String::from_utf8_lossy(&out.stdout)))
}

/// Whether the legacy iptables nat table exists in `ns` (saves an iptables-legacy-save run
/// per sandbox on hosts that use nftables). /proc/thread-self/net follows the thread's
/// namespace. When unsure, says yes.
fn legacy_nat_loaded(ns: &Netns) -> bool {
    let Ok(_inside) = ns.enter() else { return true };
    match fs::read_to_string("/proc/thread-self/net/ip_tables_names") {
        Ok(names) => names.lines().any(|l| l.trim() == "nat"),
        // No ip_tables module at all: no legacy rules anywhere.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Finds the namespace whose nsid (as the sandbox namespace numbers it) is the veth's
/// IFLA_LINK_NETNSID, and the peer link in it by IFLA_LINK.
fn set_host_side(
    sb: &mut Sandbox,
    veth: &Link,
    rtnl: &mut Rtnl,
    shared: &Shared,
    cache: &mut HostCache,
) -> Result<()> {
    let (Some(nsid), Some(peer)) = (veth.link_netnsid, veth.peer_ifindex) else {
        return Ok(());
    };
    let Some(host) = host_ns_for(nsid, &sb.netns, rtnl, shared, cache)? else {
        sb.warnings.push(format!(
            "the peer of {} is in a namespace that is neither this process's nor a named one",
            veth.name
        ));
        return Ok(());
    };
    sb.host_ns = Some(host.ns.clone());
    match host.peer(peer)? {
        Some((link, ip)) => {
            sb.host_veth = Some(link.name);
            sb.host_veth_ip = ip;
        }
        None => sb.warnings.push(format!(
            "{} has no link {peer} (the peer of {})",
            host.ns.label(),
            veth.name
        )),
    }
    Ok(())
}

/// The host namespace with this nsid: namespaces already found first, then the candidates.
fn host_ns_for<'c>(
    nsid: i32,
    own: &Netns,
    rtnl: &mut Rtnl,
    shared: &Shared,
    cache: &'c mut HostCache,
) -> Result<Option<&'c mut HostNs>> {
    let mut found = None;
    for (i, h) in cache.hosts.iter().enumerate() {
        if rtnl.nsid_of(&h.ns).ok().flatten() == Some(nsid) {
            found = Some(i);
            break;
        }
    }
    if found.is_none() {
        for cand in shared.candidates().filter(|c| c.inode != own.inode) {
            if cache.hosts.iter().any(|h| h.ns.inode == cand.inode) {
                continue;
            }
            // A candidate that vanished meanwhile is simply not the one.
            if rtnl.nsid_of(cand).ok().flatten() == Some(nsid) {
                cache.hosts.push(HostNs::open(cand.clone())?);
                found = Some(cache.hosts.len() - 1);
                break;
            }
        }
    }
    Ok(found.map(|i| &mut cache.hosts[i]))
}

/// Cross-checks the slot of an `ns-N` name against E2B's formulas.
fn check_slot(sb: &mut Sandbox) {
    let Some(slot) = sb.slot else { return };
    if let Some(host_ip) = sb.host_ip
        && host_ip != e2b_host_ip(slot)
    {
        sb.warnings.push(format!(
            "host IP {host_ip} is not slot {slot}'s default {} (a custom SANDBOXES_HOST_NETWORK_CIDR, or a slot mix-up)",
            e2b_host_ip(slot)
        ));
    }
    if let Some(veth) = &sb.host_veth
        && *veth != format!("veth-{slot}")
    {
        sb.warnings.push(format!(
            "{} is paired with {veth}, not veth-{slot}",
            sb.netns.label()
        ));
    }
}

/// Resolves every VMM on a few threads. A VMM that vanished meanwhile is left out; other
/// failures are logged and left out (one broken namespace must not hide the others).
fn resolve_parallel(vmms: &[Vmm], shared: &Shared) -> Vec<Sandbox> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(vmms.len()));
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get() * 2)
        .min(MAX_WORKERS)
        .min(vmms.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut cache = HostCache::default();
                while let Some(vmm) = vmms.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match resolve_vmm(vmm, shared, &mut cache) {
                        Ok(sb) => out.lock().unwrap_or_else(|e| e.into_inner()).push(sb),
                        Err(_) if !Path::new(&format!("/proc/{}", vmm.pid)).exists() => {}
                        Err(e) => tracing::warn!("VMM pid {}: {e:#}", vmm.pid),
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a real node's report (../shared/field/operator-report-2025-12-24.md), verbatim.
    const ID: &str = "ix7hj8hustuvlxiqc0g0u";
    const RAND: &str = "5v46qx8woej5mafpjhog";
    const REPORT_SOCKETS: [(&str, &str); 2] = [
        (
            "/tmp/fc-ix7hj8hustuvlxiqc0g0u-5v46qx8woej5mafpjhog.sock",
            "ix7hj8hustuvlxiqc0g0u",
        ),
        (
            "/tmp/fc-i2fewa6azuz8dedm8btll-uur67n8z1artmx5wym8s.sock",
            "i2fewa6azuz8dedm8btll",
        ),
    ];

    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn ids() {
        assert!(is_valid_id(ID), "E2B: i + 20");
        assert!(is_valid_id("i2x0abcdef0123456789"), "20, as older deployments");
        assert!(is_valid_id("ix7hj8"), "a prefix");
        assert!(!is_valid_id("IX7HJ8HUSTUVLXIQC0G0U"));
        assert!(!is_valid_id("ix7hj8-ustuvlxiqc0g0u"));
        assert!(!is_valid_id("ns-1"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("../../etc"));
        assert!(!is_valid_id("-rf"));
        assert!(!is_valid_id("ix7hj8\u{1b}[2J"));
        assert!(is_valid_id(&"a".repeat(MAX_ID_LEN)));
        assert!(!is_valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn prefixes_name_one_sandbox_or_list_the_candidates() {
        let known: Vec<String> = REPORT_SOCKETS.iter().map(|(_, id)| id.to_string()).collect();
        assert_eq!(match_id("ix7hj8", &known).unwrap(), ID);
        assert_eq!(match_id(ID, &known).unwrap(), ID);
        match match_id("i", &known) {
            Err(EnvError::AmbiguousSandboxId { prefix, candidates }) => {
                assert_eq!(prefix, "i");
                assert_eq!(candidates, vec!["i2fewa6azuz8dedm8btll", ID]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            match_id("iz", &known),
            Err(EnvError::UnknownSandbox { .. })
        ));
        // An exact id wins over longer ids it is a prefix of.
        let nested = vec!["abc".to_string(), "abcd".to_string()];
        assert_eq!(match_id("abc", &nested).unwrap(), "abc");
    }

    #[test]
    fn api_sock_only_as_a_whole_argument() {
        let sock = format!("/tmp/fc-{ID}-{RAND}.sock");
        let fc = cmdline(&["/fc-versions/v1.10/firecracker", "--api-sock", &sock]);
        assert_eq!(api_sock_of(&fc), Some(sock.clone()));
        let eq = cmdline(&["firecracker", &format!("--api-sock={sock}")]);
        assert_eq!(api_sock_of(&eq), Some(sock.clone()));
        let wrapper = cmdline(&[
            "bash",
            "-c",
            &format!("ip netns exec ns-1 firecracker --api-sock {sock}"),
        ]);
        assert_eq!(api_sock_of(&wrapper), None);
        assert_eq!(api_sock_of(&cmdline(&["firecracker", "--api-sock"])), None);
        assert_eq!(api_sock_of(b""), None);
    }

    #[test]
    fn ids_from_the_field_reports_sockets_and_cgroups() {
        for (sock, id) in REPORT_SOCKETS {
            assert_eq!(id_from_api_sock(sock).as_deref(), Some(id), "{sock}");
            let cmd = cmdline(&["/fc-versions/v1.12.1_a41d3fb/firecracker", "--api-sock", sock]);
            let vmm = Vmm::from_cmdline(3916206, &cmd).unwrap();
            assert_eq!(vmm.id.as_deref(), Some(id));
            let rand = sock.rsplit('-').next().unwrap().trim_end_matches(".sock");
            assert_eq!(
                id_from_cgroup_name(&format!("sbx-{id}-{rand}")).as_deref(),
                Some(id)
            );
            let proc_cgroup = format!("0::/e2b/sbx-{id}-{rand}\n");
            assert_eq!(id_from_proc_cgroup(&proc_cgroup).as_deref(), Some(id));
        }
        // Older names: no random part.
        assert_eq!(
            id_from_api_sock(&format!("/tmp/fc-{ID}.sock")).as_deref(),
            Some(ID)
        );
        assert_eq!(id_from_cgroup_name(&format!("sbx-{ID}")).as_deref(), Some(ID));
        // 20-character ids of older deployments.
        assert_eq!(
            id_from_api_sock(&format!("/tmp/fc-i2x0abcdef0123456789-{RAND}.sock")).as_deref(),
            Some("i2x0abcdef0123456789")
        );
        assert_eq!(id_from_api_sock("/run/firecracker.socket"), None);
        assert_eq!(id_from_api_sock("/tmp/fc-Not_An-Id.sock"), None);
        assert_eq!(id_from_cgroup_name("system.slice"), None);
        assert_eq!(id_from_proc_cgroup("0::/user.slice/session-1.scope\n"), None);
    }

    #[test]
    fn tap_name_from_fdinfo() {
        let attached = "pos:\t0\nflags:\t02004002\nmnt_id:\t26\nino:\t1045\niff:\ttap0\n";
        assert_eq!(iff_from_fdinfo(attached).as_deref(), Some("tap0"));
        assert_eq!(iff_from_fdinfo("pos:\t0\nflags:\t02004002\n"), None);
    }

    #[test]
    fn slots_and_e2b_formulas() {
        assert_eq!(slot_from_netns("ns-300"), Some(300));
        assert_eq!(slot_from_netns("ns-0"), None);
        assert_eq!(slot_from_netns("e2b-host"), None);
        assert_eq!(e2b_host_ip(300), Ipv4Addr::new(10, 11, 1, 44));
    }

    #[test]
    fn dnat_from_iptables_save() {
        let save = IptSave::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             [0:0] -A OUTPUT -d 10.0.0.0/8 -j DNAT --to-destination 1.2.3.4\n\
             [1:60] -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21\n\
             [0:0] -A POSTROUTING -s 169.254.0.21/32 -o eth0 -j SNAT --to-source 10.11.0.1\nCOMMIT\n",
        )
        .unwrap();
        let d = dnat_in_iptables(&save).unwrap();
        assert_eq!(
            d,
            Dnat {
                host_ip: Some(Ipv4Addr::new(10, 11, 0, 1)),
                guest_ip: Ipv4Addr::new(169, 254, 0, 21)
            }
        );
        let wide = IptSave::parse(
            "*nat\n-A PREROUTING -d 10.11.0.0/16 -j DNAT --to-destination 169.254.0.21:49983\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(dnat_in_iptables(&wide).unwrap().host_ip, None);
        assert_eq!(
            dnat_in_iptables(&IptSave::parse("*filter\nCOMMIT\n").unwrap()),
            None
        );
    }

    #[test]
    fn dnat_from_nft_json() {
        // As `nft -j list ruleset` prints E2B network v2's chain.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "slot-firewall", "handle": 1}},
          {"chain": {"family": "inet", "table": "slot-firewall", "name": "preroute_nat", "handle": 1,
                     "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "slot-firewall", "chain": "preroute_nat", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.11.0.5"}},
            {"dnat": {"family": "ip", "addr": "169.254.0.21"}}]}},
          {"rule": {"family": "inet", "table": "slot-firewall", "chain": "postroute_nat", "handle": 4, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "169.254.0.21"}},
            {"snat": {"family": "ip", "addr": "10.11.0.5"}}]}}]}"#;
        let d = dnat_in_nft(json).unwrap();
        assert_eq!(
            d,
            Dnat {
                host_ip: Some(Ipv4Addr::new(10, 11, 0, 5)),
                guest_ip: Ipv4Addr::new(169, 254, 0, 21)
            }
        );
        assert_eq!(dnat_in_nft(r#"{"nftables": []}"#), None);
        assert_eq!(dnat_in_nft("not json"), None);
    }

    fn tun(ifindex: u32, name: &str, carrier: bool, master: Option<u32>) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: Some("tun".into()),
            carrier,
            master,
            ..Default::default()
        }
    }

    fn bare(netns: &str) -> Sandbox {
        Sandbox::new(
            None,
            Netns {
                inode: 1,
                name: Some(netns.into()),
                path: PathBuf::from("/x"),
            },
        )
    }

    #[test]
    fn tap_held_by_the_vmm_or_judged_by_carrier() {
        let links = vec![
            tun(3, "tap0", false, Some(9)),
            Link {
                ifindex: 9,
                name: "br0".into(),
                ..Default::default()
            },
        ];
        let mut sb = bare("ns-1");
        set_tap(&mut sb, &["tap0".into()], &links);
        assert_eq!(
            (sb.tap.as_deref(), sb.tap_held, sb.bridge.as_deref()),
            (Some("tap0"), true, Some("br0"))
        );
        let mut sb = bare("ns-1");
        set_tap(&mut sb, &[], &links);
        assert_eq!((sb.tap.as_deref(), sb.tap_held), (Some("tap0"), false));
        let mut sb = bare("ns-1");
        set_tap(
            &mut sb,
            &[],
            &[tun(3, "tapA", true, None), tun(4, "tapB", true, None)],
        );
        assert_eq!(sb.tap, None);
        assert_eq!(sb.warnings.len(), 1, "{:?}", sb.warnings);
    }

    #[test]
    fn the_ns_veth_is_the_one_leading_out() {
        let inner = Link {
            ifindex: 2,
            name: "v-in".into(),
            kind: Some("veth".into()),
            ..Default::default()
        };
        let out = Link {
            ifindex: 3,
            name: "eth0".into(),
            kind: Some("veth".into()),
            link_netnsid: Some(0),
            ..Default::default()
        };
        let addrs = vec![Addr {
            ifindex: 3,
            addr: Ipv4Addr::new(10, 12, 0, 3),
            prefix: 31,
        }];
        let mut sb = bare("ns-1");
        set_ns_veth(&mut sb, &[inner, out], &addrs);
        assert_eq!(
            (sb.ns_veth.as_deref(), sb.ns_veth_ip),
            (Some("eth0"), Some(Ipv4Addr::new(10, 12, 0, 3)))
        );
        assert!(sb.warnings.is_empty());
    }

    #[test]
    fn slot_mismatches_are_warned_about() {
        let mut sb = bare("ns-3");
        sb.host_ip = Some(Ipv4Addr::new(10, 11, 0, 3));
        sb.host_veth = Some("veth-3".into());
        check_slot(&mut sb);
        assert!(sb.warnings.is_empty());
        sb.host_ip = Some(Ipv4Addr::new(10, 11, 0, 4));
        sb.host_veth = Some("veth-4".into());
        check_slot(&mut sb);
        assert_eq!(sb.warnings.len(), 2, "{:?}", sb.warnings);
    }

    #[test]
    fn cgroups_name_vmms_without_e2b_sockets() {
        let mut vmms = vec![Vmm {
            pid: 10,
            api_sock: Some("/run/fc.sock".into()),
            id: None,
        }];
        merge_cgroups(&mut vmms, &[(ID.to_string(), vec![9, 10])]);
        assert_eq!(vmms[0].id.as_deref(), Some(ID));
    }

    #[test]
    fn malformed_and_unknown_ids_are_env_errors() {
        let err = find("Not-An-Id").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<EnvError>(),
                Some(EnvError::MalformedSandboxId(_))
            ),
            "{err:#}"
        );
        let err = find("zzzzzzzzzzzzzzzzzzzz").unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<EnvError>(),
                Some(EnvError::UnknownSandbox { .. })
            ),
            "{err:#}"
        );
    }
}
