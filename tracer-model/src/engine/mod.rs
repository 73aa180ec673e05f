//! The verdict engine's cause finding: every followed packet is compared with the path it
//! should take ([`expect`], [`observe`], [`diverge`]); the first hop where the two differ is
//! the cause, and the actors read at that place ([`inventory`]) whose kind matches the
//! difference are named ([`attribute`], [`fib`] for routes). Where nothing differed, the
//! place of the drop, reset or silence is the cause, and its actors are named the same way.
//! Pure: what was read comes in with the facts.
pub mod actor;
pub mod attribute;
pub mod cause;
pub mod diverge;
pub mod expect;
pub mod fib;
pub mod inventory;
pub mod observe;
pub mod share;

pub use actor::{Actor, ActorId, How, Role};
pub use diverge::{Divergence, Field};
