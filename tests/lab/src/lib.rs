//! The lab: E2B's sandbox network (network v1) rebuilt slot by slot on one machine, with a
//! guest per sandbox and faults to inject. The demo, the end-to-end tests and the benchmarks
//! all run on it.
//!
//! One deliberate difference from production: the orchestrator side is not the root
//! namespace but a namespace `e2b-host` with no uplink and no default route, so no fault can
//! ever send a packet off the machine. Nothing is ever added to the machine's root namespace.
//! The exception proves it: [`HostNs::Root`] builds the production layout (the orchestrator
//! side in the root namespace) and refuses to run anywhere but inside the kernel-matrix VM,
//! whose root namespace has no network device.
//!
//! [`Lab`] owns what it creates and tears it down on drop, unless [`Lab::keep`] hands it over
//! to the state file (the `cargo xtask lab` commands).
pub mod agent;
pub mod bpf;
pub mod campaign;
pub mod connect;
pub mod faults;
pub mod guest;
pub mod lab;
pub mod sh;
pub mod state;
pub mod testing;
pub mod topology;
pub mod v2;

pub use connect::{Attempt, AttemptResult, ConnectReport};
pub use faults::Fault;
pub use guest::GuestKind;
pub use lab::{Lab, LabConfig, SandboxStatus};
pub use topology::{Datapath, HostNs, IptablesBackend, Network, Slot, Topology};
