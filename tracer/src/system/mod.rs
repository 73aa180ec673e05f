//! Access to the system, below everything else: the tools with a deadline (`tools`), network
//! namespaces (`netns`), netlink (`netstate`), every ruleset read, modelled, evaluated and
//! named (`firewall`), connection attempts like the orchestrator's (`connect`, the one place
//! that opens IP sockets), conntrack over ctnetlink (`conntrack`), and a bounded worker pool
//! (`pool`). Nothing here knows about sandboxes, journeys or verdicts.
pub mod connect;
pub mod conntrack;
pub mod firewall;
pub mod netns;
pub mod netstate;
pub mod pool;
pub mod proc;
pub mod tools;
