//! What is on this host: the sandboxes (`sandbox`: their VMM, namespace, tap, addresses and
//! host side, found read-only), the last discovery remembered across runs (`cache`), and what
//! a command's target names (`target`: a sandbox id, a namespace, a VMM pid, the path to
//! follow).
pub mod cache;
pub mod sandbox;
pub mod target;
