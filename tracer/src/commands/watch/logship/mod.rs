//! `tracer watch --log-http URL`: every record also posted to an HTTP endpoint (E2B: the
//! node's Vector, an `http_server` source taking NDJSON), in batches, by a thread of its own.
//!
//! The event loop only appends a line to a bounded queue (a short lock, never I/O). The sender
//! takes a batch from the queue's front, posts it, and removes it once the collector accepted
//! it; a failed post is retried with exponential backoff, a rejected one (4xx) is dropped. A
//! collector that is slow or gone costs memory up to the queue's caps, then the oldest records
//! (counted), never the loop's time. Every record pushed ends exactly once as sent or dropped
//! with a reason ([`Counts`]), which the metrics mirror.
//!
//! `queue`: the queue and the backoff, pure (tested without a network); `http`: the post,
//! HTTP/1.1 written by hand, one connection per batch (a batch a second at most: nothing worth
//! keeping alive), from `system::connect`, the one place that opens IP sockets; here: the
//! thread, and what the watcher calls.
mod http;
mod queue;

use std::{
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;
use http::{Answer, post};
use queue::{Backoff, Caps, Queue};
pub use queue::{Counts, Dropped};

use super::metrics::{LogDropLabels, Metrics};
use crate::cli::HttpUrl;

/// Records waiting at most, and their bytes: beyond either, the oldest are dropped.
pub const MAX_RECORDS: usize = 10_000;
pub const MAX_BYTES: usize = 8 << 20;
/// A batch: at most this many records and bytes (a bigger record goes alone), posted once its
/// first record has waited [`BATCH_WAIT`] (at once when it is full).
pub const BATCH_RECORDS: usize = 500;
pub const BATCH_BYTES: usize = 1 << 20;
pub const BATCH_WAIT: Duration = Duration::from_secs(1);
/// Connecting (each address of the host), and a whole post (writing it, reading the status).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before the first retry, doubling up to the cap.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// At exit, how long what still waits is posted for.
pub const EXIT_FLUSH: Duration = Duration::from_secs(3);

struct State {
    queue: Queue,
    /// Exiting: post what waits until then.
    closing: Option<Instant>,
    /// Exited: the sender stops, counts nothing more.
    abandoned: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Posts a body to the collector: [`post`], or a stand-in in tests.
type Poster = Box<dyn FnMut(&HttpUrl, &[u8]) -> io::Result<Answer> + Send>;

/// The shipper: the queue, and the thread that posts it.
pub struct LogShip {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    metrics: Option<Arc<Metrics>>,
    url: HttpUrl,
}

impl LogShip {
    pub fn start(url: HttpUrl, metrics: Option<Arc<Metrics>>) -> Result<Self> {
        Self::with(url, metrics, Caps::default(), Box::new(post))
    }

    fn with(url: HttpUrl, metrics: Option<Arc<Metrics>>, caps: Caps, poster: Poster) -> Result<Self> {
        if let Some(m) = &metrics {
            // Every reason exported from the start, at 0.
            for why in Dropped::ALL {
                let _ = m.log_records_dropped.get_or_create(&LogDropLabels {
                    reason: why.label().into(),
                });
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: Queue::new(caps),
                closing: None,
                abandoned: false,
            }),
            wake: Condvar::new(),
        });
        let thread = {
            let (shared, url, metrics) = (shared.clone(), url.clone(), metrics.clone());
            std::thread::Builder::new()
                .name("log-http".into())
                .spawn(move || sender(&shared, &url, metrics.as_deref(), caps, poster))?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
            metrics,
            url,
        })
    }

    /// Queues one line (its newline included). Never blocks on the collector.
    pub fn push(&self, line: Vec<u8>) {
        let counts = {
            let mut st = self.shared.lock();
            if st.abandoned {
                return;
            }
            st.queue.push(line.into(), Instant::now());
            st.queue.take_counts()
        };
        self.shared.wake.notify_all();
        count(self.metrics.as_deref(), counts);
    }

    /// Posts what waits for at most `within`, then stops; what is left is dropped (`exit`).
    /// Returns what became of every record.
    pub fn finish(mut self, within: Duration) -> Counts {
        let deadline = Instant::now() + within;
        self.shared.lock().closing = Some(deadline);
        self.shared.wake.notify_all();
        while let Some(t) = &self.thread {
            if t.is_finished() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop()
    }

    fn stop(&mut self) -> Counts {
        let (counts, total) = {
            let mut st = self.shared.lock();
            st.abandoned = true;
            st.queue.abandon();
            (st.queue.take_counts(), st.queue.total())
        };
        self.shared.wake.notify_all();
        count(self.metrics.as_deref(), counts);
        if let Some(t) = self.thread.take_if(|t| t.is_finished()) {
            let _ = t.join();
        }
        total
    }

    pub fn url(&self) -> &HttpUrl {
        &self.url
    }
}

impl Drop for LogShip {
    fn drop(&mut self) {
        if !self.shared.lock().abandoned {
            self.stop();
        }
    }
}

/// Mirrors counts in the metrics.
fn count(metrics: Option<&Metrics>, c: Counts) {
    let Some(m) = metrics else { return };
    if c.sent > 0 {
        m.log_records_sent.inc_by(c.sent);
    }
    for why in Dropped::ALL {
        let n = c.dropped(why);
        if n > 0 {
            m.log_records_dropped
                .get_or_create(&LogDropLabels {
                    reason: why.label().into(),
                })
                .inc_by(n);
        }
    }
}

/// The sender thread: waits for a due batch, posts it, retries with backoff.
fn sender(shared: &Shared, url: &HttpUrl, metrics: Option<&Metrics>, caps: Caps, mut poster: Poster) {
    let mut backoff = Backoff::new(caps.backoff_first, caps.backoff_max);
    // Failed posts in a row: a line on stderr when it starts failing and when it recovers.
    let mut failures = 0u64;
    loop {
        let batch = {
            let mut st = shared.lock();
            loop {
                let now = Instant::now();
                if st.abandoned || st.closing.is_some_and(|d| now >= d || st.queue.is_empty()) {
                    return;
                }
                let due = st.queue.due_at();
                if (due.is_some_and(|at| at <= now) || st.closing.is_some())
                    && let Some(b) = st.queue.take_batch()
                {
                    break b;
                }
                let until = [due, st.closing].into_iter().flatten().min();
                let wait = until.map_or(Duration::from_secs(3600), |u| u.saturating_duration_since(now));
                st = shared
                    .wake
                    .wait_timeout(st, wait.max(Duration::from_millis(1)))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        let result = poster(url, &batch.body());
        {
            let mut st = shared.lock();
            if st.abandoned {
                return;
            }
            match &result {
                Ok(Answer::Accepted) => st.queue.sent(),
                Ok(Answer::Rejected(_)) => st.queue.rejected(),
                Err(_) => st.queue.failed(),
            }
            let counts = st.queue.take_counts();
            drop(st);
            count(metrics, counts);
        }
        match result {
            Ok(answer) => {
                if failures > 0 {
                    eprintln!(
                        "tracer: watch: --log-http: {url} takes records again (after {failures} failed posts)"
                    );
                }
                failures = 0;
                backoff.reset();
                if let Answer::Rejected(status) = answer {
                    eprintln!(
                        "tracer: watch: --log-http: {url} answered {status}: {} records dropped",
                        batch.len()
                    );
                }
            }
            Err(e) => {
                failures += 1;
                let wait = backoff.failed();
                if failures == 1 {
                    eprintln!(
                        "tracer: watch: --log-http: post to {url} failed ({e}); retrying with backoff, records wait in memory (at most {} records, {} bytes)",
                        caps.records, caps.bytes
                    );
                }
                pause(shared, wait);
            }
        }
    }
}

/// Waits `wait`, or less when the watcher starts exiting (one more try at once) or is gone.
fn pause(shared: &Shared, wait: Duration) {
    let until = Instant::now() + wait;
    let mut st = shared.lock();
    let closing_before = st.closing.is_some();
    loop {
        let now = Instant::now();
        let past_deadline = st.closing.is_some_and(|d| now >= d);
        if now >= until || st.abandoned || past_deadline || st.closing.is_some() != closing_before {
            return;
        }
        st = shared
            .wake
            .wait_timeout(st, until - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::{
        queue::testing::{caps, line, numbers_in},
        *,
    };

    /// A stand-in collector: each post's body on a channel; the first `fail` posts fail.
    fn collector(fail: usize) -> (Poster, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel();
        let mut calls = 0;
        let poster: Poster = Box::new(move |_, body| {
            calls += 1;
            if calls <= fail {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "down"));
            }
            let _ = tx.send(body.to_vec());
            Ok(Answer::Accepted)
        });
        (poster, rx)
    }

    /// Polls `cond` every millisecond until it holds or `limit` passed.
    fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        cond()
    }

    fn url() -> HttpUrl {
        crate::cli::parse_http_url("http://127.0.0.1:30007/").unwrap()
    }

    #[test]
    fn the_sender_batches_retries_and_counts_in_the_metrics() {
        let metrics = Arc::new(Metrics::new());
        let (poster, bodies) = collector(2);
        let ship = LogShip::with(url(), Some(metrics.clone()), caps(100, 1 << 20, 10), poster).unwrap();
        for n in 0..3 {
            ship.push(line(n, 20).to_vec());
        }
        // Two failed posts (1 ms, then 2 ms apart), then the lines, in order.
        let mut got = Vec::new();
        while got.len() < 3 {
            let body = bodies.recv_timeout(Duration::from_secs(10)).expect("a post");
            got.extend(numbers_in(&body));
        }
        assert_eq!(got, [0, 1, 2]);
        let sent = wait_until(Duration::from_secs(10), || {
            metrics.render().contains("tracer_log_records_sent_total 3")
        });
        assert!(sent, "{}", metrics.render());
        assert!(
            metrics
                .render()
                .contains("tracer_log_records_dropped_total{reason=\"full\"} 0"),
            "every reason from the start: {}",
            metrics.render()
        );
        ship.push(line(3, 20).to_vec());
        let counts = ship.finish(Duration::from_secs(10));
        assert_eq!((counts.sent, counts.dropped_total()), (4, 0), "flushed at exit");
        let last = bodies.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(numbers_in(&last), [3]);
    }

    #[test]
    fn at_exit_a_dead_collector_costs_at_most_the_flush_time() {
        let metrics = Arc::new(Metrics::new());
        let (poster, _bodies) = collector(usize::MAX);
        let ship = LogShip::with(url(), Some(metrics.clone()), caps(100, 1 << 20, 10), poster).unwrap();
        for n in 0..5 {
            ship.push(line(n, 20).to_vec());
        }
        let t = Instant::now();
        let counts = ship.finish(Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!((counts.sent, counts.dropped(Dropped::Exit)), (0, 5));
        assert!(
            metrics
                .render()
                .contains("tracer_log_records_dropped_total{reason=\"exit\"} 5")
        );
    }

    #[test]
    fn push_never_waits_for_the_collector() {
        // A collector that hangs on every post: pushes still return at once.
        let (hold, held) = mpsc::channel::<()>();
        let poster: Poster = Box::new(move |_, _| {
            let _ = held.recv_timeout(Duration::from_secs(10));
            Err(io::Error::other("hung"))
        });
        let ship = LogShip::with(url(), None, caps(50, 1 << 20, 5), poster).unwrap();
        let t = Instant::now();
        for n in 0..1000 {
            ship.push(line(n, 30).to_vec());
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        drop(hold);
        let counts = ship.finish(Duration::from_millis(100));
        assert_eq!(counts.sent + counts.dropped_total(), 1000);
        assert!(counts.dropped(Dropped::Full) >= 950, "{counts:?}");
    }

    #[test]
    fn the_help_shows_the_caps() {
        use clap::CommandFactory as _;
        let mut cli = crate::cli::Cli::command();
        let watch = cli.find_subcommand_mut("watch").unwrap();
        let help = watch.render_long_help().to_string();
        for needle in [
            format!("at most {MAX_RECORDS} records and {} MiB", MAX_BYTES >> 20),
            format!("up to {BATCH_RECORDS} records or {} MiB", BATCH_BYTES >> 20),
            format!("sent within {} s", BATCH_WAIT.as_secs()),
            format!(
                "{} s doubling up to {} s",
                BACKOFF_FIRST.as_secs_f64(),
                BACKOFF_MAX.as_secs()
            ),
            format!(
                "connect timeout {} s, {} s for a whole post",
                CONNECT_TIMEOUT.as_secs(),
                POST_TIMEOUT.as_secs()
            ),
            format!("for at most {} s", EXIT_FLUSH.as_secs()),
            "Plain http:// only, no TLS".to_string(),
        ] {
            let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains(&needle), "--help does not say {needle:?}: {help}");
        }
    }
}
