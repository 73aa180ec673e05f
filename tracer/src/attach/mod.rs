//! Attaching the kernel programs: the programs themselves, BTF, kernel symbols and the
//! netfilter loader (`bpf`), every attach point described once (`tracer_common::hooks`), and
//! the attach plan of one sandbox's path (`plan`), which `trace` and the watcher's zoom-ins
//! share.
pub mod bpf;
pub mod plan;
