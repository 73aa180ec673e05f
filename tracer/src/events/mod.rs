//! Kernel events: the ring buffer's records decoded into hops (`decode`), drained by one
//! drain for every command (`drain`).
pub mod decode;
pub mod drain;
