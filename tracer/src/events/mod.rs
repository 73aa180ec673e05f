//! Kernel events: the ring buffer's records decoded into hops (`decode`).
pub mod decode;
