//! The queue of records waiting for the collector, bounded in records and bytes, with the
//! batch in flight at its front; and the backoff between failed posts. Pure: the sender thread
//! drives them, the tests too.
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{BACKOFF_FIRST, BACKOFF_MAX, BATCH_BYTES, BATCH_RECORDS, BATCH_WAIT, MAX_BYTES, MAX_RECORDS};

/// Why records never reached the collector (the `reason` of `tracer_log_records_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The queue was full: the oldest went.
    Full,
    /// One record over the queue's byte cap.
    TooLarge,
    /// The collector answered 4xx (other than 408 and 429): retrying would not help.
    Rejected,
    /// Still waiting when the watcher exited.
    Exit,
}

impl Dropped {
    pub const ALL: [Dropped; 4] = [Self::Full, Self::TooLarge, Self::Rejected, Self::Exit];

    pub fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::TooLarge => "too_large",
            Self::Rejected => "rejected",
            Self::Exit => "exit",
        }
    }
}

/// What became of records: each one pushed is counted once, sent or dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    dropped: [u64; 4],
}

impl Counts {
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why as usize]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    fn drop_n(&mut self, why: Dropped, n: u64) {
        self.dropped[why as usize] += n;
    }
}

/// The queue's bounds, the batches' shape and the retries' pace.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub records: usize,
    pub bytes: usize,
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub batch_wait: Duration,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            records: MAX_RECORDS,
            bytes: MAX_BYTES,
            batch_records: BATCH_RECORDS,
            batch_bytes: BATCH_BYTES,
            batch_wait: BATCH_WAIT,
            backoff_first: BACKOFF_FIRST,
            backoff_max: BACKOFF_MAX,
        }
    }
}

/// Records waiting to be posted, oldest first, and the batch in flight (a prefix of them,
/// known by sequence number: the queue may drop some of it meanwhile).
#[derive(Debug, Default)]
pub struct Queue {
    caps: Caps,
    /// (when it arrived, the line with its newline)
    records: VecDeque<(Instant, Arc<[u8]>)>,
    bytes: usize,
    /// The sequence number of the first record.
    head: u64,
    /// The batch being posted: the end of its sequence numbers and its length.
    in_flight: Option<(u64, u64)>,
    /// Records of the batch in flight that the queue dropped meanwhile: delivered if the post
    /// succeeds, dropped (full) if it fails.
    dropped_in_flight: u64,
    total: Counts,
    /// Counted since [`Queue::take_counts`] was last called.
    new: Counts,
}

/// A batch taken from the queue's front.
#[derive(Debug)]
pub struct Batch {
    lines: Vec<Arc<[u8]>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// The NDJSON body: the lines, each with its newline.
    pub fn body(&self) -> Vec<u8> {
        self.lines.concat()
    }
}

impl Queue {
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            ..Self::default()
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a line (with its newline), dropping the oldest until both caps hold.
    pub fn push(&mut self, line: Arc<[u8]>, now: Instant) {
        if line.len() > self.caps.bytes {
            self.count_drop(Dropped::TooLarge, 1);
            return;
        }
        while !self.records.is_empty()
            && (self.records.len() >= self.caps.records || self.bytes + line.len() > self.caps.bytes)
        {
            self.drop_front();
        }
        self.bytes += line.len();
        self.records.push_back((now, line));
    }

    fn drop_front(&mut self) {
        let Some((_, line)) = self.records.pop_front() else {
            return;
        };
        self.bytes -= line.len();
        if self.in_flight.is_some_and(|(end, _)| self.head < end) {
            self.dropped_in_flight += 1;
        } else {
            self.count_drop(Dropped::Full, 1);
        }
        self.head += 1;
    }

    /// When the front batch is due: once its first record has waited the batch wait, or now
    /// when a full batch waits. None when nothing waits.
    pub fn due_at(&self) -> Option<Instant> {
        let (arrived, _) = self.records.front()?;
        let full = self.records.len() >= self.caps.batch_records || self.bytes >= self.caps.batch_bytes;
        Some(if full {
            *arrived
        } else {
            *arrived + self.caps.batch_wait
        })
    }

    /// The front batch, to post (the records stay until [`Queue::sent`]); None when nothing
    /// waits or a batch is in flight.
    pub fn take_batch(&mut self) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut lines: Vec<Arc<[u8]>> = Vec::new();
        let mut bytes = 0;
        for (_, line) in &self.records {
            let over = lines.len() >= self.caps.batch_records || bytes + line.len() > self.caps.batch_bytes;
            if !lines.is_empty() && over {
                break;
            }
            bytes += line.len();
            lines.push(line.clone());
        }
        if lines.is_empty() {
            return None;
        }
        let n = lines.len() as u64;
        self.in_flight = Some((self.head + n, n));
        Some(Batch { lines })
    }

    /// The batch in flight was accepted: its records leave the queue (those dropped meanwhile
    /// were delivered after all).
    pub fn sent(&mut self) {
        if let Some(n) = self.finish_batch() {
            self.total.sent += n;
            self.new.sent += n;
        }
    }

    /// The batch in flight failed and will be retried: it stays (what the queue dropped of
    /// it meanwhile is lost now).
    pub fn failed(&mut self) {
        self.in_flight = None;
        let lost = std::mem::take(&mut self.dropped_in_flight);
        self.count_drop(Dropped::Full, lost);
    }

    /// The batch in flight was refused for good: its records are dropped.
    pub fn rejected(&mut self) {
        let lost = self.dropped_in_flight;
        if let Some(n) = self.finish_batch() {
            self.count_drop(Dropped::Full, lost);
            self.count_drop(Dropped::Rejected, n - lost);
        }
    }

    /// The batch in flight leaves the queue; its length.
    fn finish_batch(&mut self) -> Option<u64> {
        let (end, n) = self.in_flight.take()?;
        while self.head < end && !self.records.is_empty() {
            let (_, line) = self.records.pop_front().expect("not empty");
            self.bytes -= line.len();
            self.head += 1;
        }
        self.dropped_in_flight = 0;
        Some(n)
    }

    /// Everything still waiting is dropped (the watcher is exiting).
    pub fn abandon(&mut self) {
        let left = self.records.len() as u64 + self.dropped_in_flight;
        self.head += self.records.len() as u64;
        self.records.clear();
        self.bytes = 0;
        self.in_flight = None;
        self.dropped_in_flight = 0;
        self.count_drop(Dropped::Exit, left);
    }

    fn count_drop(&mut self, why: Dropped, n: u64) {
        self.total.drop_n(why, n);
        self.new.drop_n(why, n);
    }

    /// What was counted since the last call (for the metrics).
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.new)
    }

    pub fn total(&self) -> Counts {
        self.total
    }
}

/// Exponential backoff: the first wait, doubling up to a cap; reset by a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// A failure: how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

    pub fn line(n: usize, len: usize) -> Arc<[u8]> {
        let mut v = format!("{{\"n\":{n}}}").into_bytes();
        v.resize(len.max(v.len() + 1) - 1, b' ');
        v.push(b'\n');
        v.into()
    }

    pub fn caps(records: usize, bytes: usize, batch_records: usize) -> Caps {
        Caps {
            records,
            bytes,
            batch_records,
            batch_bytes: 1 << 20,
            batch_wait: Duration::from_millis(10),
            backoff_first: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
        }
    }

    pub fn numbers(b: &Batch) -> Vec<u64> {
        numbers_in(&b.body())
    }

    /// The `n` of each line of an NDJSON body.
    pub fn numbers_in(body: &[u8]) -> Vec<u64> {
        std::str::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let now = Instant::now();
        let mut q = Queue::new(caps(3, 1 << 20, 10));
        for n in 0..5 {
            q.push(line(n, 20), now);
        }
        assert_eq!((q.len(), q.total().dropped(Dropped::Full)), (3, 2));
        assert_eq!(numbers(&q.take_batch().unwrap()), [2, 3, 4], "the newest stay");
        // By bytes: 3 lines of 40 bytes in 100.
        let mut q = Queue::new(caps(100, 100, 10));
        for n in 0..4 {
            q.push(line(n, 40), now);
        }
        assert_eq!((q.len(), q.bytes(), q.total().dropped(Dropped::Full)), (2, 80, 2));
        // One line over the byte cap is dropped alone.
        q.push(line(9, 101), now);
        assert_eq!((q.len(), q.total().dropped(Dropped::TooLarge)), (2, 1));
        let c = q.take_counts();
        assert_eq!((c.dropped(Dropped::Full), c.dropped(Dropped::TooLarge)), (2, 1));
        assert_eq!(q.take_counts(), Counts::default(), "counted once");
    }

    #[test]
    fn batches_are_bounded_and_due_after_the_wait_or_when_full() {
        let t0 = Instant::now();
        let mut q = Queue::new(Caps {
            batch_bytes: 100,
            ..caps(100, 1 << 20, 3)
        });
        assert!(q.due_at().is_none() && q.take_batch().is_none());
        q.push(line(0, 30), t0);
        assert_eq!(q.due_at(), Some(t0 + Duration::from_millis(10)));
        q.push(line(1, 30), t0);
        q.push(line(2, 30), t0);
        assert_eq!(q.due_at(), Some(t0), "a full batch is due at once");
        q.push(line(3, 30), t0);
        let b = q.take_batch().unwrap();
        assert_eq!(numbers(&b), [0, 1, 2], "batch_records");
        assert!(q.take_batch().is_none(), "one batch in flight");
        q.sent();
        // By bytes (100): 30 and 80 do not fit together; a line over it goes alone.
        q.push(line(4, 80), t0);
        assert_eq!(numbers(&q.take_batch().unwrap()), [3]);
        q.sent();
        assert_eq!(numbers(&q.take_batch().unwrap()), [4]);
        q.sent();
        q.push(line(5, 150), t0);
        assert_eq!(numbers(&q.take_batch().unwrap()), [5]);
        q.sent();
        assert_eq!((q.len(), q.bytes(), q.total().sent), (0, 0, 6));
    }

    #[test]
    fn a_failed_batch_is_retried_from_the_front_as_it_is_then() {
        let now = Instant::now();
        let mut q = Queue::new(caps(4, 1 << 20, 2));
        for n in 0..4 {
            q.push(line(n, 20), now);
        }
        assert_eq!(numbers(&q.take_batch().unwrap()), [0, 1]);
        // While it is posted, two more arrive: 0 and 1 are pushed out of the queue.
        q.push(line(4, 20), now);
        q.push(line(5, 20), now);
        assert_eq!(
            q.total().dropped(Dropped::Full),
            0,
            "not yet: they may be delivered"
        );
        q.failed();
        assert_eq!(
            q.total().dropped(Dropped::Full),
            2,
            "the post failed: they are lost"
        );
        assert_eq!(
            numbers(&q.take_batch().unwrap()),
            [2, 3],
            "the front as it is now"
        );
        // 2 is pushed out while in flight, then delivered: sent, not dropped.
        q.push(line(6, 20), now);
        q.sent();
        assert_eq!((q.total().sent, q.total().dropped(Dropped::Full)), (2, 2));
        assert_eq!(numbers(&q.take_batch().unwrap()), [4, 5]);
        // 4 is pushed out while in flight, and the post fails: lost.
        q.push(line(7, 20), now);
        q.push(line(8, 20), now);
        q.failed();
        assert_eq!((q.total().sent, q.total().dropped(Dropped::Full)), (2, 3));
        assert_eq!(numbers(&q.take_batch().unwrap()), [5, 6]);
        q.rejected();
        assert_eq!((q.len(), q.total().dropped(Dropped::Rejected)), (2, 2));
        assert_eq!(numbers(&q.take_batch().unwrap()), [7, 8]);
    }

    /// Whatever happens, every record pushed is counted once: sent, dropped, or still there.
    #[test]
    fn every_record_ends_once() {
        let now = Instant::now();
        let mut q = Queue::new(caps(7, 300, 3));
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut pushed = 0u64;
        for n in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 6 {
                0..=2 => {
                    q.push(line(n, 10 + (seed >> 8) as usize % 80), now);
                    pushed += 1;
                }
                3 => {
                    q.take_batch();
                }
                4 => q.sent(),
                _ if seed % 12 == 5 => q.rejected(),
                _ => q.failed(),
            }
            let t = q.total();
            assert_eq!(
                t.sent + t.dropped_total() + q.len() as u64 + q.dropped_in_flight,
                pushed,
                "step {n}"
            );
            assert!(q.len() <= 7 && q.bytes() <= 300);
            assert_eq!(q.bytes(), q.records.iter().map(|(_, l)| l.len()).sum::<usize>());
        }
        q.abandon();
        let t = q.total();
        assert_eq!(t.sent + t.dropped_total(), pushed);
        assert!(t.sent > 0 && t.dropped(Dropped::Full) > 0 && t.dropped(Dropped::Rejected) > 0);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let waits: Vec<u64> = (0..9).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.failed(), BACKOFF_FIRST);
    }
}
