//! The one judge thread, for `trace` and the watcher alike, and the work it takes: each
//! judge (one per trace, one per zoom-in) decides attempts off the event loop.
use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_model::verdict::Outcome;

use super::judge::{Item, Judge};
use crate::report::record::JourneyRecord;

/// What an event loop hands the judge thread. `K` names a judge: `()` for a trace's one,
/// a sandbox's key for each of the watcher's zoom-ins.
pub enum Work<K> {
    Add(K, Box<Judge>),
    /// That judge is done: it says what it has to say at the end (repeats, the capture).
    Remove(K),
    Judge(K, Item),
    /// Print how often each failure repeated.
    Repeats,
}

/// What the judge thread tells the loop back, per item judged.
pub struct Decided<K> {
    pub key: K,
    pub outcome: Outcome,
    pub record: Box<JourneyRecord>,
}

/// The one judge thread, for `trace` and the watcher alike: rule naming, the inventory
/// reads and the doctor run tools and netlink dumps that take milliseconds to seconds (or
/// hang until their timeout), and the event loop must keep draining the ring buffer and
/// answering signals meanwhile.
pub struct JudgeThread<K> {
    pub work: mpsc::Sender<Work<K>>,
    pub decided: mpsc::Receiver<Decided<K>>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl<K: Eq + std::hash::Hash + Clone + Send + 'static> JudgeThread<K> {
    pub fn spawn() -> Result<Self> {
        let (work, work_rx) = mpsc::channel();
        let (decided_tx, decided) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("judge".into())
            .spawn(move || run(work_rx, decided_tx))?;
        Ok(Self {
            work,
            decided,
            thread,
        })
    }

    /// Hangs up and lets the judges finish what they were given, for `grace` at most (a hung
    /// tool must not keep the tracer from exiting; the judge's children die with the
    /// process): the decisions that came meanwhile, and how the thread ended (None: it was
    /// still working).
    pub fn finish(self, grace: Duration) -> (Vec<Decided<K>>, Option<Result<()>>) {
        drop(self.work);
        let mut out = Vec::new();
        let deadline = Instant::now() + grace;
        while !self.thread.is_finished() && Instant::now() < deadline {
            match self.decided.recv_timeout(Duration::from_millis(10)) {
                Ok(d) => out.push(d),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The judge has returned: its thread ends at once.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    while !self.thread.is_finished() {
                        std::thread::yield_now();
                    }
                }
            }
        }
        out.extend(self.decided.try_iter());
        let ended = self.thread.is_finished().then(|| {
            self.thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the judge panicked")))
        });
        (out, ended)
    }
}

fn run<K: Eq + std::hash::Hash + Clone>(
    work: mpsc::Receiver<Work<K>>,
    decided: mpsc::Sender<Decided<K>>,
) -> Result<()> {
    let mut judges: HashMap<K, Box<Judge>> = HashMap::new();
    for w in work {
        match w {
            Work::Add(key, judge) => {
                judges.insert(key, judge);
            }
            Work::Remove(key) => {
                if let Some(mut j) = judges.remove(&key) {
                    j.finish()?;
                }
            }
            Work::Judge(key, item) => {
                let Some(judge) = judges.get_mut(&key) else {
                    continue;
                };
                let (outcome, record) = judge.judge_item(item)?;
                let done = Decided {
                    key,
                    outcome,
                    record: Box::new(record),
                };
                if decided.send(done).is_err() {
                    break;
                }
            }
            Work::Repeats => {
                for j in judges.values_mut() {
                    j.reporter.print_repeats()?;
                }
            }
        }
    }
    for (_, mut j) in judges.drain() {
        j.finish()?;
    }
    Ok(())
}
