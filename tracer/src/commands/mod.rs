//! The commands, side by side over the layers (discovery → attach → events → engine →
//! report, on top of system access): each parses nothing itself (`cli` does), reads, runs
//! and prints. None imports another (a test holds it).
pub mod check;
pub mod doctor;
pub mod list;
pub mod report;
pub mod trace;
pub mod watch;
