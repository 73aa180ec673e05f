//! Cheap discovery: VMM processes from /proc command lines and E2B's cgroup names, the taps
//! they hold from their fds. No namespace is entered here.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use super::ids::{api_sock_of, id_from_api_sock, id_from_cgroup_name, id_from_proc_cgroup, iff_from_fdinfo};
use crate::system::netns;

/// Where E2B puts one cgroup per sandbox: `sbx-<id>-<rand>`.
pub const E2B_CGROUP_DIR: &str = "/sys/fs/cgroup/e2b";
const CMDLINE_CHUNK: usize = 8192;

/// A VMM process, before its namespace is examined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Vmm {
    pub(super) pid: u32,
    pub(super) api_sock: Option<String>,
    pub(super) id: Option<String>,
}

impl Vmm {
    pub(super) fn from_cmdline(pid: u32, cmdline: &[u8]) -> Option<Self> {
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

/// The VMMs of this host: processes with `--api-sock` that pass [`vet`].
pub(super) fn scan_vmms() -> Vec<Vmm> {
    scan_vetted().0
}

/// A process with `--api-sock` that was not taken for a VMM, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub pid: u32,
    pub api_sock: Option<String>,
    pub reason: String,
}

/// Processes with `--api-sock` (wrappers such as `ip netns exec` left out), not vetted yet.
pub(super) fn candidates() -> Vec<Vmm> {
    scan_candidates()
}

/// The VMMs, and the candidates that did not pass [`vet`].
pub(super) fn scan_vetted() -> (Vec<Vmm>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let vmms = scan_candidates()
        .into_iter()
        .filter(|v| match vet(v.pid) {
            Ok(()) => true,
            Err(reason) => {
                skipped.push(Skipped {
                    pid: v.pid,
                    api_sock: v.api_sock.clone(),
                    reason,
                });
                false
            }
        })
        .collect();
    (vmms, skipped)
}

/// Whether a process can be a sandbox's VMM, not someone posing as one (anyone can start a
/// process with `--api-sock /tmp/fc-<id>-x.sock`): it runs as root, in this user namespace,
/// from a root-owned executable nobody else may write, and holds a tap (or sits in E2B's
/// sandbox cgroup, which only root can create).
pub(super) fn vet(pid: u32) -> Result<(), String> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| "it has exited".to_string())?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| v.split_whitespace().filter_map(|u| u.parse().ok()).collect())
        .unwrap_or_default();
    if uids.first() != Some(&0) || uids.get(1) != Some(&0) {
        return Err(format!(
            "it runs as uid {}, not root",
            uids.get(1).or(uids.first()).copied().unwrap_or(u32::MAX)
        ));
    }
    let userns = |p: &str| {
        fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    if userns(&format!("/proc/{pid}/ns/user")) != userns("/proc/self/ns/user") {
        return Err("it runs in another user namespace".into());
    }
    let exe = fs::metadata(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("its executable cannot be read ({e})"))?;
    use std::os::unix::fs::MetadataExt as _;
    if exe.uid() != 0 || exe.mode() & 0o022 != 0 {
        return Err(format!(
            "its executable is owned by uid {} with mode {:o} (a VMM's is root's and not writable by others)",
            exe.uid(),
            exe.mode() & 0o7777
        ));
    }
    let in_e2b_cgroup =
        fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| id_from_proc_cgroup(&t).is_some());
    if held_taps(pid).is_empty() && !in_e2b_cgroup {
        return Err("it holds no tap device (/dev/net/tun)".into());
    }
    Ok(())
}

/// Every process with `--api-sock`, reading nothing but `/proc/*/cmdline`.
fn scan_candidates() -> Vec<Vmm> {
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
    crate::system::proc::stat(pid).map(|s| s.ppid)
}

/// E2B's cgroups: (id, pids in it).
pub(super) fn cgroup_sandboxes() -> Vec<(String, Vec<u32>)> {
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
pub(super) fn merge_cgroups(vmms: &mut Vec<Vmm>, cgroups: &[(String, Vec<u32>)]) {
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
pub(super) fn vmm_from_cgroup(id: &str) -> Option<Vmm> {
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

pub(super) fn cgroup_id_of(pid: u32) -> Option<String> {
    id_from_proc_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

pub(super) fn known_ids(vmms: &[Vmm]) -> Vec<String> {
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
pub(super) fn held_taps(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut taps: Vec<String> = dir
        .flatten()
        .filter(|e| is_tun(&e.path()))
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

/// Whether an open file (`/proc/PID/fd/N`) is the tun device, by its device number (misc
/// 10:200), not its path: a VMM in a chroot (jailer) or another mount namespace opened it
/// under a path that reads differently from here.
pub fn is_tun(fd: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    fs::metadata(fd).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == libc::makedev(10, 200))
}

/// The first of `pids` that holds a tap.
fn tap_holder(pids: &[u32]) -> Option<u32> {
    pids.iter().copied().find(|p| !held_taps(*p).is_empty())
}

/// The process in namespace `inode` that holds a tap; one with `--api-sock` first.
pub(super) fn tap_holder_in(inode: u32) -> Option<Vmm> {
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

pub(super) fn netns_inode_of_pid(pid: u32) -> Option<u32> {
    netns::inode_of(&ns_path_of(pid)).ok()
}

pub(super) fn ns_path_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The guest's MAC as the VMM was configured: `--guest-mac` on its command line (the lab's
/// VMM), else Firecracker's own API (`GET /vm/config` on its `--api-sock`, read-only, 200 ms
/// at most). None when neither says.
pub fn guest_mac(pid: u32, api_sock: Option<&str>, tap: Option<&str>) -> Option<String> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if let Some(w) = args.windows(2).find(|w| w[0] == b"--guest-mac") {
        return Some(String::from_utf8_lossy(w[1]).to_ascii_lowercase());
    }
    firecracker_guest_mac(api_sock?, tap)
}

/// `GET /vm/config` of Firecracker's API: the network interface on `tap`, its `guest_mac`.
fn firecracker_guest_mac(sock: &str, tap: Option<&str>) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_millis(200);
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /vm/config HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.take(256 * 1024).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n")?.1;
    guest_mac_in_config(body, tap)
}

/// The `guest_mac` of the network interface on `tap` (or the only one) in Firecracker's
/// VM configuration JSON.
pub fn guest_mac_in_config(json: &str, tap: Option<&str>) -> Option<String> {
    // The JSON object alone: an HTTP body may come chunked, with sizes around it.
    let json = &json[json.find('{')?..=json.rfind('}')?];
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let ifaces = v["network-interfaces"].as_array()?;
    let chosen = ifaces
        .iter()
        .find(|i| tap.is_some_and(|t| i["host_dev_name"].as_str() == Some(t)))
        .or((ifaces.len() == 1).then(|| &ifaces[0]))?;
    chosen["guest_mac"].as_str().map(|m| m.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "ix7hj8hustuvlxiqc0g0u";
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
    fn guest_mac_comes_from_the_interface_on_the_tap() {
        let two = r#"{"network-interfaces":[
            {"iface_id":"eth0","host_dev_name":"tap1","guest_mac":"02:FC:00:00:00:01"},
            {"iface_id":"eth1","host_dev_name":"tap0","guest_mac":"02:fc:00:00:00:05"}]}"#;
        assert_eq!(
            guest_mac_in_config(two, Some("tap0")).as_deref(),
            Some("02:fc:00:00:00:05")
        );
        assert_eq!(
            guest_mac_in_config(two, Some("tap1")).as_deref(),
            Some("02:fc:00:00:00:01")
        );
        // Two interfaces and no tap named: no guess.
        assert_eq!(guest_mac_in_config(two, None), None);
        let one = r#"{"network-interfaces":[{"host_dev_name":"x","guest_mac":"AA:BB:CC:DD:EE:FF"}]}"#;
        assert_eq!(
            guest_mac_in_config(one, Some("tap0")).as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(guest_mac_in_config("{}", Some("tap0")), None);
        assert_eq!(guest_mac_in_config("not json", None), None);
        // A chunked or padded HTTP body still carries one JSON object.
        let chunked = format!("4a\r\n{one}\r\n0\r\n\r\n");
        assert_eq!(
            guest_mac_in_config(&chunked, None).as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
    }
}
