//! Events the kernel could not queue, as the loop noticed them over time: a verdict says how
//! many were lost while its attempt ran.
use std::time::{Duration, Instant};

/// Events the kernel could not queue, as the loop noticed them over time.
#[derive(Default)]
pub(super) struct LossLog {
    total: u64,
    /// (when noticed, monotonic ns; how many), the last minute of them.
    recent: std::collections::VecDeque<(u64, u64)>,
    last_warned: Option<Instant>,
}

impl LossLog {
    /// Takes the kernel's running count; says on stderr (at most once a second) when it grew.
    pub(super) fn observe(&mut self, total: u64, now_ns: u64) {
        if total <= self.total {
            return;
        }
        let new = total - self.total;
        self.total = total;
        self.recent.push_back((now_ns, new));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| *t + 60_000_000_000 < now_ns)
        {
            self.recent.pop_front();
        }
        if self
            .last_warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_warned = Some(Instant::now());
            eprintln!(
                "tracer: {new} events lost (ring buffer full; {} in all); verdicts of this moment may rest on fewer events",
                self.total
            );
        }
    }

    /// Events lost since `from_ns` (monotonic).
    pub(super) fn since(&self, from_ns: u64) -> u64 {
        self.recent
            .iter()
            .filter(|(t, _)| *t >= from_ns)
            .map(|(_, n)| n)
            .sum()
    }
}
