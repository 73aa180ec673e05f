//! The one rule model for every ruleset the tracer reads lives in the pure model
//! (`tracer_model::firewall::model`); the parsers here fill it.
pub use tracer_model::firewall::model::*;
