//! envd path tracer: follows the orchestrator's connections to envd in Firecracker microVMs
//! through the kernel and names where and why they die.
//!
//! Data flows one way: discovery → attach → events → journeys → the engine → report. The
//! pure part of that chain (hops, the expected path, journeys, the verdict engine's
//! comparison) is the `tracer-model` crate; this crate does the I/O around it, in layers that
//! only import downwards (`walls` holds it):
//!
//! - `system`: access to the system (tools with a deadline, namespaces, netlink, rulesets,
//!   connection attempts, conntrack);
//! - `discovery`: the sandboxes on this host, the cache of the last discovery, a command's
//!   target;
//! - `diagnose`: the doctor's configuration checks;
//! - `attach`: the kernel programs, the hook table and the attach plan;
//! - `events`: the ring buffer's records decoded into hops, and the drain;
//! - `report`: records, sentences, text, Markdown, HTML, pcapng;
//! - `engine`: the judge and what it reads at the verdict;
//! - `commands`: `trace`, `watch`, `doctor`, `check`, `list`, `report`, side by side;
//!
//! with `cli`, `error` and `output` shared by all.
pub mod attach;
pub mod cli;
pub mod commands;
pub mod diagnose;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod events;
pub mod output;
pub mod report;
pub mod system;

#[cfg(test)]
mod walls;
