//! Shared code of the kernel programs: maps, the in-kernel filter, reading packets from
//! `sk_buff`s, and emitting events.
//!
//! Both objects (`tracer`, `tracer-nf`) link this library and so define the same maps; at load
//! time the netfilter object's map references are pointed at the maps aya created for `tracer`.
#![no_std]
// The atomic add of the lost-event counter (see `emit::atomic_add`).
#![cfg_attr(target_arch = "bpf", allow(internal_features), feature(core_intrinsics))]

pub mod emit;
pub mod filter;
pub mod kernel;
pub mod maps;
