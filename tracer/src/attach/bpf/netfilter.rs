//! A small loader for `BPF_PROG_TYPE_NETFILTER` programs, which aya does not support.
//!
//! The programs live in their own object (`tracer-nf`, section "netfilter") so aya's parser
//! never sees them. This module reads that ELF with the `object` crate, links each program
//! with the functions it calls (e.g. `memset` from compiler-builtins), points its map
//! references at the maps aya already created for the main object (so both share the ring
//! buffer, the filter and the tracking map), loads it, and creates one netfilter link per
//! (hook, priority) in the calling thread's namespace.
use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, anyhow, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex};

const PROG_SECTION: &str = "netfilter";
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;
const NFPROTO_IPV4: u32 = 2;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_CALL: u8 = 1;
const OP_LD_IMM64: u8 = 0x18;
const OP_CALL: u8 = 0x85;
const INSN: usize = 8;

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    fn from_bytes(b: &[u8]) -> Self {
        Self {
            code: b[0],
            regs: b[1],
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
    fn src_reg(&self) -> u8 {
        self.regs >> 4
    }
    fn set_src_reg(&mut self, r: u8) {
        self.regs = (self.regs & 0x0f) | (r << 4);
    }
    fn is_pseudo_call(&self) -> bool {
        self.code == OP_CALL && self.src_reg() == BPF_PSEUDO_CALL
    }
}

/// A program ready to load: instructions with calls linked and map references resolved.
#[derive(Debug)]
pub struct LinkedProgram {
    pub name: String,
    pub insns: Vec<Insn>,
}

/// What a relocation points at.
#[derive(Debug, Clone)]
enum Target {
    /// A map, by symbol name.
    Map(String),
    /// Code: (section, byte offset of the symbol) plus whether it was a section symbol.
    Code {
        section: SectionIndex,
        addr: u64,
        section_symbol: bool,
    },
}

/// Functions of the object: (section, start offset) → (name, instructions).
struct Code {
    funcs: HashMap<(SectionIndex, u64), (String, Vec<Insn>)>,
    /// Relocations: (section, byte offset of instruction) → target.
    relocs: HashMap<(SectionIndex, u64), Target>,
}

/// Parses the netfilter object and links every program of the "netfilter" section.
/// `map_fds` maps symbol names (EVENTS, CONFIG, ...) to the fds of aya's maps.
pub fn link_programs(elf: &[u8], map_fds: &HashMap<String, RawFd>) -> Result<Vec<LinkedProgram>> {
    let file = object::File::parse(elf).context("parse netfilter object")?;
    let code = read_code(&file)?;
    let prog_section = file
        .section_by_name(PROG_SECTION)
        .ok_or_else(|| anyhow!("netfilter object has no {PROG_SECTION} section"))?
        .index();
    let mut programs: Vec<LinkedProgram> = code
        .funcs
        .iter()
        .filter(|((sec, _), _)| *sec == prog_section)
        .map(|(&(sec, addr), (name, _))| {
            Ok(LinkedProgram {
                name: name.clone(),
                insns: link_one(&code, sec, addr, map_fds)?,
            })
        })
        .collect::<Result<_>>()?;
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(programs)
}

fn read_code(file: &object::File) -> Result<Code> {
    let mut funcs = HashMap::new();
    for sym in file.symbols() {
        let (Some(sec), object::SymbolKind::Text) = (sym.section_index(), sym.kind()) else {
            continue;
        };
        let section = file.section_by_index(sec)?;
        let data = section.data()?;
        let start = sym.address() as usize;
        let end = start + sym.size() as usize;
        let bytes = data
            .get(start..end)
            .ok_or_else(|| anyhow!("symbol {:?} out of bounds", sym.name()))?;
        let insns = bytes
            .as_chunks::<INSN>()
            .0
            .iter()
            .map(|c| Insn::from_bytes(c))
            .collect();
        funcs.insert((sec, sym.address()), (sym.name()?.to_string(), insns));
    }
    let mut relocs = HashMap::new();
    for section in file.sections() {
        for (offset, rel) in section.relocations() {
            let RelocationTarget::Symbol(si) = rel.target() else {
                continue;
            };
            let sym = file.symbol_by_index(si)?;
            let Some(target_sec) = sym.section_index() else {
                continue;
            };
            let target_name = file.section_by_index(target_sec)?.name()?.to_string();
            let target = if target_name == "maps" || target_name == ".maps" {
                Target::Map(sym.name()?.to_string())
            } else if file.section_by_index(target_sec)?.kind() == object::SectionKind::Text {
                Target::Code {
                    section: target_sec,
                    addr: sym.address(),
                    section_symbol: sym.kind() == object::SymbolKind::Section,
                }
            } else {
                continue;
            };
            relocs.insert((section.index(), offset), target);
        }
    }
    Ok(Code { funcs, relocs })
}

/// Links the function at (sec, addr) with everything it calls, appended after it.
fn link_one(
    code: &Code,
    sec: SectionIndex,
    addr: u64,
    map_fds: &HashMap<String, RawFd>,
) -> Result<Vec<Insn>> {
    let mut out: Vec<Insn> = Vec::new();
    // (section, function start) → index of its first instruction in `out`.
    let mut placed: HashMap<(SectionIndex, u64), usize> = HashMap::new();
    let mut queue = vec![(sec, addr)];
    while let Some(key) = queue.pop() {
        if placed.contains_key(&key) {
            continue;
        }
        let (name, body) = code
            .funcs
            .get(&key)
            .ok_or_else(|| anyhow!("no function at {key:?}"))?;
        placed.insert(key, out.len());
        let base = out.len();
        out.extend_from_slice(body);
        for i in 0..body.len() {
            let at = (key.0, key.1 + (i * INSN) as u64);
            match code.relocs.get(&at) {
                Some(Target::Map(map)) => {
                    let fd = *map_fds
                        .get(map)
                        .ok_or_else(|| anyhow!("{name}: unknown map {map}"))?;
                    let ins = &mut out[base + i];
                    if ins.code != OP_LD_IMM64 {
                        bail!("{name}: map reference {map} is not a ld_imm64");
                    }
                    ins.set_src_reg(BPF_PSEUDO_MAP_FD);
                    ins.imm = fd;
                }
                Some(Target::Code {
                    section,
                    addr,
                    section_symbol,
                }) if body[i].is_pseudo_call() => {
                    // A call to a section symbol encodes the callee offset in imm (pc-relative
                    // from the section start); a call to a function symbol names it directly.
                    let callee = if *section_symbol {
                        (
                            *section,
                            (*addr as i64 + (body[i].imm as i64 + 1) * INSN as i64) as u64,
                        )
                    } else {
                        (*section, *addr)
                    };
                    queue.push(callee);
                }
                Some(Target::Code { .. }) => bail!("{name}: unsupported code reference at {i}"),
                None if body[i].is_pseudo_call() => {
                    // Call within the same section, pc-relative.
                    let target = key.1 as i64 + ((i as i64) + 1 + body[i].imm as i64) * INSN as i64;
                    queue.push((key.0, target as u64));
                }
                None => {}
            }
        }
    }
    // Second pass: every pseudo call now gets its final relative offset.
    fix_calls(code, &placed, &mut out)?;
    Ok(out)
}

/// Rewrites the imm of every pseudo call to the distance to its (now placed) callee.
fn fix_calls(code: &Code, placed: &HashMap<(SectionIndex, u64), usize>, out: &mut [Insn]) -> Result<()> {
    for (&(sec, start), &base) in placed {
        let (_, body) = &code.funcs[&(sec, start)];
        for i in 0..body.len() {
            if !body[i].is_pseudo_call() {
                continue;
            }
            let callee = match code.relocs.get(&(sec, start + (i * INSN) as u64)) {
                Some(Target::Code {
                    section,
                    addr,
                    section_symbol: true,
                }) => (
                    *section,
                    (*addr as i64 + (body[i].imm as i64 + 1) * INSN as i64) as u64,
                ),
                Some(Target::Code { section, addr, .. }) => (*section, *addr),
                _ => (
                    sec,
                    (start as i64 + ((i as i64) + 1 + body[i].imm as i64) * INSN as i64) as u64,
                ),
            };
            let to = *placed
                .get(&callee)
                .ok_or_else(|| anyhow!("callee {callee:?} not linked"))?;
            out[base + i].imm = to as i32 - (base + i) as i32 - 1;
        }
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
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

/// Loads a linked program as BPF_PROG_TYPE_NETFILTER. On a verifier refusal the error
/// carries the verifier log.
pub fn load(prog: &LinkedProgram) -> Result<OwnedFd> {
    let license = CString::new("GPL")?;
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_NETFILTER,
        insn_cnt: prog.insns.len() as u32,
        insns: prog.insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_NETFILTER,
        ..Default::default()
    };
    for (d, s) in attr.prog_name.iter_mut().zip(prog.name.bytes().take(15)) {
        *d = s;
    }
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Load again with a log to say why.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            if tail.is_empty() {
                // An older kernel refuses the program type before the verifier runs.
                return Err(anyhow!(first)).with_context(|| format!("load netfilter program {}", prog.name));
            }
            Err(anyhow!(first)).with_context(|| {
                format!(
                    "load netfilter program {}; verifier says:\n{}",
                    prog.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
}

/// Attaches `prog` at an IPv4 netfilter hook of the calling thread's namespace. The hook stays
/// as long as the returned fd is open (and never outlives the process).
pub fn attach(prog: BorrowedFd<'_>, hooknum: u8, priority: i32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_NETFILTER,
        pf: NFPROTO_IPV4,
        hooknum: hooknum as u32,
        priority,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// The kernel's id of a loaded program (the stable head of `bpf_prog_info`: type, id).
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut head = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: size_of_val(&head) as u32,
        info: head.as_mut_ptr() as u64,
    };
    // SAFETY: attr points at a buffer of info_len bytes that lives across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            size_of::<InfoAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(head[1])
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a valid, fully initialised repr(C) bpf_attr prefix of the given size.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_round_trip_of_registers() {
        let mut i = Insn::from_bytes(&[OP_LD_IMM64, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(i.src_reg(), 0);
        i.set_src_reg(BPF_PSEUDO_MAP_FD);
        assert_eq!(i.regs, 0x11, "dst reg kept, src reg set");
    }

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        // Offsets from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, pf), 16);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, priority), 24);
    }
}
