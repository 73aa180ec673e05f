//! Helpers for tests that need root and the lab.
use std::time::{Duration, Instant};

/// True when the test may run: we are root. Without root the end-to-end tests cannot run;
/// under CI that is a failure, elsewhere the test says it was skipped.
pub fn require_root(test: &str) -> bool {
    // SAFETY: trivial syscall.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: end-to-end tests need root, and CI runs as root");
    }
    eprintln!("{test}: skipped (needs root)");
    false
}

/// The start of most lab tests: None (skipped) without root, else the lab built from
/// `config`, torn down when dropped.
pub fn lab_up(test: &str, config: crate::LabConfig) -> Option<crate::Lab> {
    if !require_root(test) {
        return None;
    }
    Some(crate::Lab::up(config).unwrap_or_else(|e| panic!("{test}: lab up: {e:#}")))
}

/// A count from the environment (the scale tests' sandbox numbers), or `default`.
pub fn env_count(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `cond` every `step` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, step: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}
