//! Attaching the kernel programs: the programs themselves, BTF, kernel symbols and the
//! netfilter loader (`bpf`).
pub mod bpf;
