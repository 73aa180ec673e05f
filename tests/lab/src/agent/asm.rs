//! The agent's programs, assembled by hand: a few eBPF instructions each, so the lab needs no
//! compiler, no object file and no loader library to play a foreign agent.
//!
//! Registers on entry: r1 = the context (xdp_md, __sk_buff or bpf_sock_addr). r0 is the
//! verdict. The packet programs use r2 (cursor), r3 (packet end) and r4 (scratch).
use std::collections::HashMap;

/// One instruction as the kernel reads it (struct bpf_insn): opcode, dst in the low nibble
/// and src in the high nibble of the second byte, a 16-bit offset, a 32-bit immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Instruction classes, sizes, modes and operations (linux/bpf_common.h, linux/bpf.h).
const LDX: u8 = 0x01;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const MOV: u8 = 0xb0;
const EXIT: u8 = 0x90;

/// Load widths.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
}

/// Conditional jumps (64-bit compare).
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Set = 0x40,
    Ne = 0x50,
    Lt = 0xa0,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// A 16-bit value as it reads from the wire with a native-endian load: ports, EtherType and
/// the fragment field are big-endian in the packet, the loads are in the host's order.
pub fn wire16(v: u16) -> i32 {
    i32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// A straight-line program with named jump targets, resolved by [`Asm::finish`]: offsets
/// counted by hand are the usual way such programs go wrong.
#[derive(Default)]
pub struct Asm {
    insns: Vec<Insn>,
    jumps: Vec<(usize, &'static str)>,
    labels: HashMap<&'static str, usize>,
}

impl Asm {
    fn push(&mut self, i: Insn) -> &mut Self {
        self.insns.push(i);
        self
    }

    /// dst = imm
    pub fn mov_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(ALU64 | MOV | K, dst, 0, 0, imm))
    }

    /// dst = src
    pub fn mov_reg(&mut self, dst: u8, src: u8) -> &mut Self {
        self.push(insn(ALU64 | MOV | X, dst, src, 0, 0))
    }

    /// dst += imm
    pub fn add_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(ALU64 | ADD | K, dst, 0, 0, imm))
    }

    /// dst += src
    pub fn add_reg(&mut self, dst: u8, src: u8) -> &mut Self {
        self.push(insn(ALU64 | ADD | X, dst, src, 0, 0))
    }

    /// dst &= imm
    pub fn and_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(ALU64 | AND | K, dst, 0, 0, imm))
    }

    /// dst <<= imm
    pub fn lsh_imm(&mut self, dst: u8, imm: i32) -> &mut Self {
        self.push(insn(ALU64 | LSH | K, dst, 0, 0, imm))
    }

    /// dst = *(size *)(src + off)
    pub fn load(&mut self, size: Size, dst: u8, src: u8, off: i16) -> &mut Self {
        self.push(insn(LDX | MEM | size as u8, dst, src, off, 0))
    }

    /// if (dst cond imm) goto label
    pub fn jump_imm(&mut self, cond: Cond, dst: u8, imm: i32, label: &'static str) -> &mut Self {
        self.jumps.push((self.insns.len(), label));
        self.push(insn(JMP | cond as u8 | K, dst, 0, 0, imm))
    }

    /// if (dst cond src) goto label
    pub fn jump_reg(&mut self, cond: Cond, dst: u8, src: u8, label: &'static str) -> &mut Self {
        self.jumps.push((self.insns.len(), label));
        self.push(insn(JMP | cond as u8 | X, dst, src, 0, 0))
    }

    pub fn exit(&mut self) -> &mut Self {
        self.push(insn(JMP | EXIT, 0, 0, 0, 0))
    }

    /// r0 = verdict; exit
    pub fn ret(&mut self, verdict: i32) -> &mut Self {
        self.mov_imm(0, verdict).exit()
    }

    /// Marks where the next instruction is.
    pub fn label(&mut self, name: &'static str) -> &mut Self {
        let at = self.insns.len();
        assert!(
            self.labels.insert(name, at).is_none(),
            "label {name} defined twice"
        );
        self
    }

    /// The instructions, each jump's offset relative to the instruction after it.
    pub fn finish(&mut self) -> Vec<Insn> {
        for &(at, name) in &self.jumps {
            let target = *self.labels.get(name).unwrap_or_else(|| panic!("no label {name}"));
            let off = target as isize - at as isize - 1;
            self.insns[at].off = i16::try_from(off).expect("jump too far");
        }
        std::mem::take(&mut self.insns)
    }
}

/// Where a packet program finds the packet, and what it answers.
#[derive(Debug, Clone, Copy)]
pub struct PacketHook {
    /// Context offsets of the u32 fields `data` and `data_end` (xdp_md: 0, 4; __sk_buff: 76, 80).
    pub data: i16,
    pub data_end: i16,
    /// Verdict for a TCP segment from or to the port, and for everything else.
    pub on_match: i32,
    pub otherwise: i32,
}

pub const XDP_CTX: (i16, i16) = (0, 4);
pub const SKB_CTX: (i16, i16) = (76, 80);

// Offsets in an Ethernet frame carrying IPv4.
const ETH_LEN: i32 = 14;
const ETH_TYPE: i16 = 12;
const IP_FRAG: i16 = ETH_LEN as i16 + 6;
const IP_PROTO: i16 = ETH_LEN as i16 + 9;
const IP_MIN_LEN: i32 = 20;
const IPPROTO_TCP: i32 = 6;

/// Ethernet → IPv4 (any IHL) → TCP source and destination ports, every read checked against
/// the packet's end first (the verifier rejects the program otherwise).
pub fn tcp_port_filter(hook: PacketHook, port: u16) -> Vec<Insn> {
    let p = wire16(port);
    let mut a = Asm::default();
    a.load(Size::W, 2, 1, hook.data) // r2 = start of the frame
        .load(Size::W, 3, 1, hook.data_end) // r3 = its end
        // Ethernet and the smallest IPv4 header must be there before any read.
        .mov_reg(4, 2)
        .add_imm(4, ETH_LEN + IP_MIN_LEN)
        .jump_reg(Cond::Gt, 4, 3, "other")
        .load(Size::H, 4, 2, ETH_TYPE)
        .jump_imm(Cond::Ne, 4, wire16(0x0800), "other") // not IPv4 (VLAN, ARP, IPv6)
        .load(Size::B, 4, 2, IP_PROTO)
        .jump_imm(Cond::Ne, 4, IPPROTO_TCP, "other")
        // A later fragment carries no TCP header: its first bytes are payload.
        .load(Size::H, 4, 2, IP_FRAG)
        .jump_imm(Cond::Set, 4, wire16(0x1fff), "other")
        // IHL counts 32-bit words; masked and shifted, the verifier knows r4 is at most 60.
        .load(Size::B, 4, 2, ETH_LEN as i16)
        .and_imm(4, 0x0f)
        .lsh_imm(4, 2)
        .jump_imm(Cond::Lt, 4, IP_MIN_LEN, "other") // a broken header
        .add_reg(2, 4) // r2 = frame + IHL: the TCP header is at r2 + 14
        .mov_reg(4, 2)
        .add_imm(4, ETH_LEN + 4) // both ports
        .jump_reg(Cond::Gt, 4, 3, "other")
        .load(Size::H, 4, 2, ETH_LEN as i16)
        .jump_imm(Cond::Eq, 4, p, "match")
        .load(Size::H, 4, 2, ETH_LEN as i16 + 2)
        .jump_imm(Cond::Eq, 4, p, "match")
        .label("other")
        .ret(hook.otherwise)
        .label("match")
        .ret(hook.on_match);
    a.finish()
}

// struct bpf_sock_addr: user_port at 24 (network order in the low 16 bits), protocol at 36.
const SOCK_ADDR_USER_PORT: i16 = 24;
const SOCK_ADDR_PROTOCOL: i16 = 36;

/// A connect4 hook: `on_match` (0 = EPERM, 1 = allow) for a TCP connect to the port, else 1.
pub fn connect4_filter(port: u16, on_match: i32) -> Vec<Insn> {
    let mut a = Asm::default();
    a.load(Size::W, 2, 1, SOCK_ADDR_PROTOCOL)
        .jump_imm(Cond::Ne, 2, IPPROTO_TCP, "allow") // UDP connects are not ours
        .load(Size::W, 2, 1, SOCK_ADDR_USER_PORT)
        .jump_imm(Cond::Eq, 2, wire16(port), "match")
        .label("allow")
        .ret(1)
        .label("match")
        .ret(on_match);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_opcodes_are_encoded_as_the_kernel_reads_them() {
        let mut a = Asm::default();
        a.load(Size::H, 4, 2, 12).mov_reg(4, 2).ret(2);
        let i = a.finish();
        // ldxh r4, [r2+12]
        assert_eq!(
            i[0],
            Insn {
                code: 0x69,
                regs: 0x24,
                off: 12,
                imm: 0
            }
        );
        // mov64 r4, r2
        assert_eq!(
            i[1],
            Insn {
                code: 0xbf,
                regs: 0x24,
                off: 0,
                imm: 0
            }
        );
        // mov64 r0, 2; exit
        assert_eq!(
            i[2],
            Insn {
                code: 0xb7,
                regs: 0,
                off: 0,
                imm: 2
            }
        );
        assert_eq!(
            i[3],
            Insn {
                code: 0x95,
                regs: 0,
                off: 0,
                imm: 0
            }
        );
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn jumps_land_on_their_labels() {
        let mut a = Asm::default();
        a.jump_imm(Cond::Eq, 1, 0, "end")
            .mov_imm(0, 1)
            .label("end")
            .exit();
        let i = a.finish();
        // From insn 0, skipping one: the jump lands on exit.
        assert_eq!(i[0].off, 1);
        let mut b = Asm::default();
        b.label("top")
            .mov_imm(0, 0)
            .jump_imm(Cond::Ne, 0, 0, "top")
            .exit();
        assert_eq!(b.finish()[1].off, -2);
    }

    #[test]
    fn ports_compare_in_wire_order() {
        // 0x1f90 = 8080 is 1f 90 on the wire.
        let w = wire16(8080);
        assert_eq!(u16::try_from(w).unwrap().to_ne_bytes(), [0x1f, 0x90]);
    }

    #[test]
    fn every_path_of_the_filters_ends_in_exit() {
        let hook = PacketHook {
            data: XDP_CTX.0,
            data_end: XDP_CTX.1,
            on_match: 1,
            otherwise: 2,
        };
        for prog in [tcp_port_filter(hook, 80), connect4_filter(80, 0)] {
            assert_eq!(prog.last().map(|i| i.code), Some(0x95));
            for (n, i) in prog.iter().enumerate() {
                if i.code & 0x07 == JMP && i.code != 0x95 {
                    let to = n as isize + 1 + i.off as isize;
                    assert!(to > n as isize && (to as usize) < prog.len(), "jump {n} → {to}");
                }
            }
        }
    }
}
