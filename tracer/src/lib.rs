//! envd path tracer: follows the orchestrator's connections to envd in Firecracker microVMs
//! through the kernel and names where and why they die.
//!
//! Data flows one way: sandbox → network snapshot → expected path → attach → events →
//! journey → verdict → report.
pub mod btf;
pub mod cache;
pub mod cli;
pub mod doctor;
pub mod drops;
pub mod enrich;
pub mod error;
pub mod events;
pub mod hop;
pub mod journey;
pub mod kallsyms;
pub mod list;
pub mod netns;
pub mod netstate;
pub mod nftrace;
pub mod path;
pub mod probe;
pub mod probes;
pub mod report;
pub mod rules;
pub mod sandbox;
pub mod session;
pub mod target;
pub mod trace;
pub mod verdict;
