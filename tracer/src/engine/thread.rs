//! The one judge thread, for `trace` and the watcher alike, and the work it takes: each
//! judge (one per trace, one per zoom-in) decides attempts off the event loop.
use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Result;
use std::sync::Arc;
use tracer_model::{
    engine::{inventory::NsInventory, share},
    verdict::Outcome,
};

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
    /// A host-side actor that one verdict named (`from`): confirm it, per sandbox, on each
    /// candidate's own attempt with the engine's evaluators over that verdict's host-side
    /// inventory. Each one confirmed comes back as a [`Decided`] with `shared`.
    Confirm {
        from: K,
        actor: Box<tracer_model::engine::Actor>,
        inventory: Arc<NsInventory>,
        candidates: Vec<(K, share::Attempt)>,
    },
}

/// A localization shared from another sandbox's verdict.
pub struct Shared<K> {
    pub from: K,
    pub actor: tracer_model::engine::Actor,
    /// The evaluator's sentence that confirmed it for this sandbox.
    pub confirmation: String,
}

/// What the judge thread tells the loop back, per item judged.
pub struct Decided<K> {
    pub key: K,
    pub outcome: Outcome,
    /// The judged attempt's record (None for a shared localization).
    pub record: Option<Box<JourneyRecord>>,
    /// The host side's inventory the verdict rests on (to confirm its actor elsewhere).
    pub host_inventory: Option<Arc<NsInventory>>,
    /// Set when this is a confirmation of another verdict's actor, not a judged attempt.
    pub shared: Option<Shared<K>>,
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
        Self::spawn_pool(1)
    }

    /// `workers` judge threads: each judge (a key) lives on one of them, so judges of
    /// different sandboxes read their facts side by side (those reads wait on tools and
    /// netlink far more than they compute) while one judge's items stay in order.
    pub fn spawn_pool(workers: usize) -> Result<Self> {
        let (work, work_rx) = mpsc::channel::<Work<K>>();
        let (decided_tx, decided) = mpsc::channel();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel();
            let done = decided_tx.clone();
            senders.push(tx);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("judge-{i}"))
                    .spawn(move || run(rx, done))?,
            );
        }
        drop(decided_tx);
        let thread = std::thread::Builder::new()
            .name("judges".into())
            .spawn(move || dispatch(work_rx, senders, threads))?;
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

/// Routes each item to the worker of its judge; `Repeats` goes to every one. Ends when the
/// loop hangs up and every worker has finished.
fn dispatch<K: Eq + std::hash::Hash>(
    work: mpsc::Receiver<Work<K>>,
    workers: Vec<mpsc::Sender<Work<K>>>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
) -> Result<()> {
    let of = |k: &K| {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(k) as usize % workers.len()
    };
    for w in work {
        let to = match &w {
            Work::Add(k, _) | Work::Remove(k) | Work::Judge(k, _) => of(k),
            Work::Confirm { from, .. } => of(from),
            Work::Repeats => {
                for tx in &workers {
                    let _ = tx.send(Work::Repeats);
                }
                continue;
            }
        };
        let _ = workers[to].send(w);
    }
    drop(workers);
    let mut result = Ok(());
    for t in threads {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a judge panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
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
                    record: Some(Box::new(record)),
                    host_inventory: judge.host_inventory.take(),
                    shared: None,
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
            Work::Confirm {
                from,
                actor,
                inventory,
                candidates,
            } => {
                for (key, attempt) in candidates {
                    let Some(confirmation) = share::confirm(&actor, &inventory, &attempt) else {
                        continue;
                    };
                    let done = Decided {
                        key,
                        outcome: Outcome::Unknown,
                        record: None,
                        host_inventory: None,
                        shared: Some(Shared {
                            from: from.clone(),
                            actor: (*actor).clone(),
                            confirmation,
                        }),
                    };
                    if decided.send(done).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    for (_, mut j) in judges.drain() {
        j.finish()?;
    }
    Ok(())
}
