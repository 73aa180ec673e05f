//! The scanner: finds VMMs as they start and notices when they end, on a thread of its own.
//! A scan reads /proc command lines and E2B's cgroups (milliseconds); only VMMs not seen
//! before are vetted and resolved (namespace, tap, addresses, DNAT, host side), once each.
//! The loop can ask for a scan at once (an event for a slot whose sandbox it does not know).
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use super::registry::Key;
use crate::discovery::sandbox::{self, Sandbox};

/// How often a VMM that failed to resolve is tried again, at most.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Candidates that are not VMMs (or keep failing) remembered at most.
const MAX_SKIPPED: usize = 16_384;

/// What a scan found.
pub struct Update {
    /// Every VMM incarnation running now.
    pub live: HashSet<Key>,
    /// Newly resolved ones, with their start time (monotonic ns).
    pub added: Vec<(Key, Arc<Sandbox>, u64)>,
    /// When the scan started (monotonic ns): VMMs started after it may be missing.
    pub at_ns: u64,
    pub took: Duration,
}

pub struct Scanner {
    every: Duration,
    known: HashSet<Key>,
    /// Candidates that are not VMMs, or failed to resolve: when to look again.
    skipped: HashMap<Key, Instant>,
}

impl Scanner {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            known: HashSet::new(),
            skipped: HashMap::new(),
        }
    }

    /// Scans every `every`, and at once when asked; ends when the loop hangs up.
    pub fn run(mut self, asks: mpsc::Receiver<()>, updates: mpsc::Sender<Update>) {
        loop {
            if updates.send(self.scan()).is_err() {
                return;
            }
            match asks.recv_timeout(self.every) {
                Ok(()) => while asks.try_recv().is_ok() {},
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn scan(&mut self) -> Update {
        let start = Instant::now();
        let at_ns = crate::events::decode::Clock::now_mono_ns();
        let running = sandbox::scan_running();
        let key = |r: &sandbox::Running| Key {
            pid: r.pid,
            start_ticks: r.start_ticks,
        };
        let live: HashSet<Key> = running.iter().map(key).collect();
        self.known.retain(|k| live.contains(k));
        self.skipped.retain(|k, _| live.contains(k));
        let now = Instant::now();
        let new: Vec<sandbox::Running> = running
            .into_iter()
            .filter(|r| {
                !self.known.contains(&key(r)) && self.skipped.get(&key(r)).is_none_or(|at| now >= *at)
            })
            .collect();
        let mut added = Vec::new();
        for (r, resolved) in sandbox::vet_and_resolve(&new) {
            match resolved {
                Ok(sb) => {
                    self.known.insert(key(&r));
                    added.push((key(&r), Arc::new(sb), ticks_to_mono_ns(r.start_ticks)));
                }
                Err(_) if self.skipped.len() < MAX_SKIPPED => {
                    self.skipped.insert(key(&r), now + RETRY_EVERY);
                }
                Err(_) => {}
            }
        }
        Update {
            live: live.into_iter().filter(|k| self.known.contains(k)).collect(),
            added,
            at_ns,
            took: start.elapsed(),
        }
    }
}

/// A process start time (clock ticks since boot) on the kernel events' clock (monotonic ns).
pub fn ticks_to_mono_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let since_boot = ticks.saturating_mul(1_000_000_000 / hz);
    since_boot.saturating_sub(boot_minus_mono_ns())
}

/// CLOCK_BOOTTIME − CLOCK_MONOTONIC: the time spent suspended.
fn boot_minus_mono_ns() -> u64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    read(libc::CLOCK_BOOTTIME).saturating_sub(read(libc::CLOCK_MONOTONIC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_is_in_the_past_of_the_event_clock() {
        let ticks = crate::system::proc::start_ticks(std::process::id()).expect("our start time");
        let start = ticks_to_mono_ns(ticks);
        let now = crate::events::decode::Clock::now_mono_ns();
        assert!(start <= now, "{start} > {now}");
        // Tick resolution (10 ms) plus the time tests have run.
        assert!(now - start < 3_600_000_000_000);
    }
}
