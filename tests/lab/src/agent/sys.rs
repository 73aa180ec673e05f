//! The few bpf(2) commands the agent needs, each with its own slice of `union bpf_attr` laid
//! out as linux/bpf.h has it (the kernel takes a shorter attr and zero-fills the rest).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};

use super::asm::Insn;

const PROG_LOAD: libc::c_long = 5;
const OBJ_PIN: libc::c_long = 6;
const OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const LINK_CREATE: libc::c_long = 28;

/// bpf(cmd, attr, sizeof attr): the fd or value it returns, or errno.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a repr(C) attr of the layout `cmd` reads, alive across the call; any
    // pointers in it point at buffers the caller keeps alive.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a new fd the kernel just gave us and nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// BPF_PROG_LOAD's part of bpf_attr, up to expected_attach_type.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// What to load.
pub struct Load<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    /// At most 15 characters: the kernel keeps 16 bytes with the NUL.
    pub name: &'a str,
    pub insns: &'a [Insn],
}

/// Loads a GPL program; a refusal carries the verifier's log.
pub fn prog_load(load: &Load) -> Result<OwnedFd> {
    // GPL: a foreign agent's program is as likely to be GPL as not, and it lets the
    // verifier accept any helper should a program here ever call one.
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoad {
        prog_type: load.prog_type,
        insn_cnt: load.insns.len() as u32,
        insns: load.insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        // Level 1: the verifier's reasoning, kept only to explain a refusal.
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: load.expected_attach_type,
        ..Default::default()
    };
    let name = load.name.as_bytes();
    anyhow::ensure!(
        name.len() < 16,
        "program name {} is over 15 characters",
        load.name
    );
    attr.prog_name[..name.len()].copy_from_slice(name);
    match bpf(PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(anyhow!(
                "loading {} ({} insns): {e}; verifier log:\n{}",
                load.name,
                load.insns.len(),
                text.trim_end()
            ))
        }
    }
}

/// BPF_LINK_CREATE's part of bpf_attr, with tcx's relative_fd and expected_revision (zero:
/// append after the others, whatever the revision).
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    /// A cgroup fd or an ifindex, by attach type.
    target: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// A link from `prog` to `target` (an ifindex or a cgroup fd): it holds the attachment for as
/// long as an fd to it is open, which is what makes the holder's pid findable in fdinfo.
pub fn link_create(prog: &OwnedFd, target: u32, attach_type: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target,
        attach_type,
        flags,
        ..Default::default()
    };
    bpf(LINK_CREATE, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins an object at `path` on a bpffs (how tc is handed a program it did not load).
pub fn obj_pin(fd: &OwnedFd, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(OBJ_PIN, &mut attr).with_context(|| format!("pin at {}", path.display()))?;
    Ok(())
}

#[repr(C)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// OBJ_GET_INFO_BY_FD into a zeroed buffer (the kernel fills what it knows).
fn info<const N: usize>(fd: &OwnedFd) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut attr = GetInfo {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: N as u32,
        info: buf.as_mut_ptr() as u64,
    };
    bpf(OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(buf)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// What the kernel says of a loaded program: its id and tag (the hash of its instructions).
#[derive(Debug, Clone)]
pub struct ProgInfo {
    pub id: u32,
    pub tag: String,
    pub name: String,
}

pub fn prog_info(fd: &OwnedFd) -> io::Result<ProgInfo> {
    // struct bpf_prog_info: id at 4, tag[8] at 8, name[16] at 64.
    let b = info::<128>(fd)?;
    let name = &b[64..80];
    let end = name.iter().position(|c| *c == 0).unwrap_or(16);
    Ok(ProgInfo {
        id: u32_at(&b, 4),
        tag: b[8..16].iter().map(|x| format!("{x:02x}")).collect(),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
    })
}

/// A link's id (struct bpf_link_info: type at 0, id at 4).
pub fn link_id(fd: &OwnedFd) -> io::Result<u32> {
    Ok(u32_at(&info::<64>(fd)?, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_linux_bpf_h() {
        // prog_name at 48, expected_attach_type at 68.
        assert_eq!(std::mem::size_of::<ProgLoad>(), 72);
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoad, expected_attach_type), 68);
        // tcx.relative_fd at 16, expected_revision at 24.
        assert_eq!(std::mem::offset_of!(LinkCreate, relative_fd), 16);
        assert_eq!(std::mem::offset_of!(LinkCreate, expected_revision), 24);
        assert_eq!(std::mem::size_of::<ObjPin>(), 16);
        assert_eq!(std::mem::size_of::<GetInfo>(), 16);
    }
}
