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
