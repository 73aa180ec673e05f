//! BPF programs that can act on the path's packets, read with the bpf syscall: tcx programs on
//! a device (BPF_PROG_QUERY, in the device's namespace), a device's XDP program (rtnetlink's
//! IFLA_XDP), `bpf` tc filters (their program id), and the programs effective on the client's
//! cgroup (connect, sendmsg, socket creation). Each with its name and tag, and the process
//! that holds its link (from /proc/PID/fdinfo), where one does. Read-only.
use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracer_model::engine::inventory::{Attach, ClientInventory, Program};

use crate::system::netns::Netns;

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_INET_SOCK_CREATE: u32 = 2;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
/// Most programs one query returns (far more than any device or cgroup carries).
const MAX_PROGS: usize = 64;
/// The /proc scan for link holders stops after this long (a node with many processes).
const HOLDER_SCAN_BUDGET: Duration = Duration::from_millis(300);

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> i64 {
    // SAFETY: `attr` is a live buffer of the size passed, laid out as the command expects.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

/// Programs (and their links) attached at `attach_type` to a device (by ifindex, in the
/// calling thread's namespace) or a cgroup (by fd).
fn query(target: u32, attach_type: u32, flags: u32) -> Vec<(u32, Option<u32>)> {
    let mut prog_ids = [0u32; MAX_PROGS];
    let mut link_ids = [0u32; MAX_PROGS];
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&target.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[8..12].copy_from_slice(&flags.to_ne_bytes());
    attr[16..24].copy_from_slice(&(prog_ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(MAX_PROGS as u32).to_ne_bytes());
    // Link ids exist for tcx only (the kernel ignores the field elsewhere).
    if attach_type == BPF_TCX_INGRESS || attach_type == BPF_TCX_EGRESS {
        attr[40..48].copy_from_slice(&(link_ids.as_mut_ptr() as u64).to_ne_bytes());
    }
    if bpf(BPF_PROG_QUERY, &mut attr) != 0 {
        return Vec::new();
    }
    let n = (u32::from_ne_bytes([attr[24], attr[25], attr[26], attr[27]]) as usize).min(MAX_PROGS);
    (0..n)
        .map(|i| (prog_ids[i], (link_ids[i] != 0).then_some(link_ids[i])))
        .collect()
}

/// A program's name and tag (BPF_OBJ_GET_INFO_BY_FD on an fd from its id).
fn describe(id: u32) -> Option<(String, String)> {
    let mut by_id = [0u8; 16];
    by_id[0..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id);
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_prog_info: tag at 8 (8 bytes), name at 64 (16 bytes).
    let mut info = [0u8; 256];
    let mut req = [0u8; 16];
    req[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    req[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    req[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut req) != 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(16);
    let tag = info[8..16].iter().map(|b| format!("{b:02x}")).collect();
    Some((String::from_utf8_lossy(&name[..end]).into_owned(), tag))
}

fn program(id: u32, attach: Attach, link: Option<u32>) -> Program {
    let (name, tag) = describe(id).unwrap_or_else(|| ("?".into(), String::new()));
    Program {
        id,
        name,
        tag,
        attach,
        ifindex: None,
        device: None,
        cgroup: None,
        link,
        holder: None,
        ours: false,
    }
}

/// tcx programs on the named devices of `ns` (queried from inside it), and the XDP and tc
/// `bpf` programs rtnetlink reported there.
pub fn on_devices(
    ns: &Netns,
    devices: &[(u32, String)],
    xdp: &[(u32, u32)],
    tc_bpf: &[(u32, String, u32, bool)],
) -> Vec<Program> {
    let mut out = Vec::new();
    if let Ok(_inside) = ns.enter() {
        for (ifindex, name) in devices {
            for (attach_type, attach) in [
                (BPF_TCX_INGRESS, Attach::TcxIngress),
                (BPF_TCX_EGRESS, Attach::TcxEgress),
            ] {
                for (id, link) in query(*ifindex, attach_type, 0) {
                    let mut p = program(id, attach, link);
                    p.ifindex = Some(*ifindex);
                    p.device = Some(name.clone());
                    out.push(p);
                }
            }
        }
    }
    for (ifindex, id) in xdp {
        let mut p = program(*id, Attach::Xdp, None);
        p.ifindex = Some(*ifindex);
        p.device = devices.iter().find(|(i, _)| i == ifindex).map(|(_, n)| n.clone());
        out.push(p);
    }
    for (ifindex, dev, id, ingress) in tc_bpf {
        let mut p = program(
            *id,
            if *ingress {
                Attach::TcIngress
            } else {
                Attach::TcEgress
            },
            None,
        );
        p.ifindex = Some(*ifindex);
        p.device = Some(dev.clone());
        out.push(p);
    }
    set_holders(&mut out);
    out
}

/// Programs effective on this process's cgroup: what runs on the probe's connect().
pub fn on_client_cgroup() -> Option<ClientInventory> {
    let rel = fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))?;
    let dir = cgroup2_mount()?.join(rel.trim_start_matches('/'));
    let file = fs::File::open(&dir).ok()?;
    let fd: OwnedFd = file.into();
    let mut programs = Vec::new();
    for (attach_type, attach) in [
        (BPF_CGROUP_INET4_CONNECT, Attach::CgroupConnect4),
        (BPF_CGROUP_UDP4_SENDMSG, Attach::CgroupSendmsg4),
        (BPF_CGROUP_INET_SOCK_CREATE, Attach::CgroupSock),
    ] {
        for (id, _) in query(fd.as_raw_fd() as u32, attach_type, BPF_F_QUERY_EFFECTIVE) {
            let mut p = program(id, attach, None);
            p.cgroup = Some(rel.clone());
            programs.push(p);
        }
    }
    set_holders(&mut programs);
    Some(ClientInventory {
        cgroup: rel,
        programs,
    })
}

/// Where the cgroup2 hierarchy is mounted (hybrid hierarchies put it elsewhere than
/// /sys/fs/cgroup), from this process's mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// Finds the processes holding each program's link (or the program itself) through
/// /proc/PID/fdinfo, within a time budget; marks this tracer's own programs.
fn set_holders(progs: &mut [Program]) {
    if progs.is_empty() {
        return;
    }
    let me = std::process::id();
    let started = Instant::now();
    let Ok(procs) = fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        if started.elapsed() > HOLDER_SCAN_BUDGET || progs.iter().all(|p| p.holder.is_some()) {
            break;
        }
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let fdinfo = entry.path().join("fdinfo");
        let Ok(fds) = fs::read_dir(&fdinfo) else { continue };
        for fd in fds.flatten() {
            let Ok(text) = fs::read_to_string(fd.path()) else {
                continue;
            };
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u32>().ok())
            };
            let (link, prog) = (field("link_id:"), field("prog_id:"));
            for p in progs.iter_mut().filter(|p| p.holder.is_none()) {
                let held = (p.link.is_some() && link == p.link) || (link.is_none() && prog == Some(p.id));
                if held {
                    p.holder = Some((pid, comm(&entry.path())));
                    p.ours = pid == me;
                }
            }
        }
    }
}

fn comm(proc_dir: &Path) -> String {
    fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}
