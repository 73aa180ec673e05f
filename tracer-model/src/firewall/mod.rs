//! One rule model for every ruleset the tracer reads (iptables of both backends, native
//! nftables of every family) and the evaluator that walks a packet through it. Pure: the
//! tracer's `firewall` module reads and parses rulesets into this model.
pub mod eval;
pub mod model;
