//! A trace of one sandbox's path: attach to its devices and namespaces, correlate events
//! into journeys, decide, report. The one-shot `--probe` and the passive watch share it.
use std::{
    collections::HashSet,
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};

use tracer_model::{
    journey::{Correlator, Journey, JourneyId, Timing},
    path::ExpectedPath,
    verdict::Outcome,
};

use super::{
    losses::LossLog,
    setup::{announce, attach},
};
use crate::engine::{
    judge::{Item, Judge},
    thread::{JudgeThread, Work},
};
use crate::{
    attach::{
        bpf::{
            Programs,
            btf::{KernelBtf, ReasonNames},
            features::{Features, kernel_release},
            kallsyms::Kallsyms,
        },
        plan::{PathPlan, Side},
    },
    cli::TraceArgs,
    discovery::sandbox::Sandbox,
    error::{EXIT_FOUND, EXIT_OK, EnvError},
    events::{
        decode::{Clock, Names, Places},
        drain::Drain,
    },
    output::{Format, Output},
    report::Reporter,
    report::pcapng::{Caps, Capture, Order},
    system::connect::{self, AttemptEvent},
    system::firewall::{Rulesets, naming::RuleBaseline},
};

/// How often finished journeys are collected (bounds verdict latency with the settle time).
const TICK: Duration = Duration::from_millis(5);
/// How often the traced sandbox's VMM is checked (a /proc read).
const SLOT_CHECK: Duration = Duration::from_millis(500);
/// With --probe: how long to wait for a verdict after the last attempt ended.
const PROBE_GRACE: Duration = Duration::from_millis(1500);

pub fn run(args: TraceArgs, sb: Sandbox, started: Instant) -> Result<i32> {
    let port = args.ports.first().copied().unwrap_or(49983);
    let (path, mut warnings) = crate::discovery::target::path_of(&sb, port)?;
    warnings.extend(sb.warnings.iter().cloned());
    // Probes go only from the verified host side; without one, nothing is sent at all.
    let site = crate::discovery::target::probe_site(&sb, SocketAddrV4::new(path.host_ip, port));
    if args.probe
        && let Err(why) = &site
    {
        return super::withheld::host_side_unknown(&args, &path, why);
    }
    let site = site.ok();
    // Passive mode without a verified host side attaches to the sandbox's namespace only.
    let host_ns = sb.host_ns.clone();
    let sandbox_ns = sb.netns.clone();
    // A capture file that cannot be written is said before anything attaches.
    let capture = match &args.pcapng {
        Some(file) => Some(
            Capture::create(
                file,
                match args.pcapng_order {
                    crate::cli::CaptureOrder::Time => Order::Time,
                    crate::cli::CaptureOrder::Packet => Order::Packet,
                },
                Caps {
                    max_packets: args.pcapng_max_packets,
                    max_bytes: args.pcapng_max_bytes,
                },
            )
            .map_err(|e| EnvError::Usage(format!("{e:#}: give --pcapng a writable path")))?,
        ),
        None => None,
    };
    // The counter baseline: the sandbox namespace's rules as discovery just read them, the
    // host side's read while the programs attach (both take tens of milliseconds).
    let host_rules = host_ns
        .clone()
        .map(|ns| std::thread::spawn(move || Rulesets::read(&ns)));
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "sandbox found");
    // Kernel symbols, struct offsets and reason names are read while the programs attach:
    // the programs stay silent until the configuration is written.
    let kallsyms = std::thread::spawn(Kallsyms::load);
    let btf_facts = std::thread::spawn(|| -> Result<_> {
        let btf = KernelBtf::load().map_err(|e| EnvError::NoBtf(format!("{e:#}")))?;
        let features = Features::probe(&btf);
        // A kernel without what the path needs is refused before a struct it lacks is.
        features.require_path(&kernel_release())?;
        Ok((btf.offsets()?, ReasonNames::load(&btf)?))
    });
    let attach_start = Instant::now();
    let plan = PathPlan::of(&path, host_ns.as_ref(), &sandbox_ns);
    let (mut attached, filter) = match attach(&path, &plan, &args) {
        Ok(a) => a,
        // The kernel's own answer when it lacks a feature is an errno: say which feature.
        Err(e) => return Err(btf_facts.join().ok().and_then(Result::err).unwrap_or(e)),
    };
    let mut baseline = RuleBaseline::default();
    let sandbox_rules = sb
        .rules
        .clone()
        .unwrap_or_else(|| Arc::new(Rulesets::read(&sandbox_ns)));
    baseline.insert(sandbox_ns.inode, sandbox_rules);
    if let (Some(ns), Some(reader)) = (&host_ns, host_rules) {
        let rules = reader
            .join()
            .map_err(|_| anyhow::anyhow!("ruleset reader panicked"))?;
        if ns.inode != sandbox_ns.inode {
            baseline.insert(ns.inode, Arc::new(rules));
        }
    }
    // Each namespace gets the hooks envd's packets cross there, after its tables.
    let present = |side: &Side<'_>| {
        baseline
            .get(side.ns.inode)
            .map(|r| r.hook_priorities())
            .unwrap_or_default()
    };
    if let Err(e) = plan.attach_netfilter(&mut attached.programs, present, |_| false) {
        return Err(btf_facts.join().ok().and_then(Result::err).unwrap_or(e));
    }
    let (offsets, reasons) = btf_facts
        .join()
        .map_err(|_| anyhow::anyhow!("BTF reader panicked"))??;
    attached.programs.configure(offsets, &filter)?;
    let attach_time = attach_start.elapsed();
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "attached");
    // Test hook: the detach tests prove nothing stays attached after a panic.
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("TRACER_TEST_PANIC").is_some() {
        panic!("TRACER_TEST_PANIC is set: panicking with everything attached");
    }
    let kallsyms = kallsyms
        .join()
        .map_err(|_| anyhow::anyhow!("kallsyms reader panicked"))??;
    let names = Names::new(reasons, kallsyms);
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "ready");
    for w in warnings.iter().chain(&attached.programs.degraded) {
        eprintln!("tracer: warning: {}", crate::output::escape(w));
    }
    // Installed before "attached" is printed: a signal right after it ends the trace cleanly.
    let (rt, stop) = crate::events::decode::runtime_with_stop()?;
    announce(&path, attached.devices, attach_time, args.probe);
    let events = attached.programs.take_events()?;
    let out = Output::stdout(Format::from_json_flag(args.json));
    let judge = Judge::new(
        path.clone(),
        sb.clone(),
        (host_ns.clone(), sandbox_ns.clone()),
        site.clone(),
        Reporter::new(out, args.all_hops || args.deep(), Some(&path))
            .with_deep(args.deep())
            .with_blind_spots(attached.blind_spots.clone()),
        baseline,
        args.nft_trace,
    );
    let judge_thread = JudgeHandle::spawn()?;
    let judge = match (args.deep(), capture) {
        (true, capture) => judge.with_deep(capture),
        (false, _) => judge,
    };
    judge_thread
        .work
        .send(Work::Add((), Box::new(judge)))
        .map_err(|_| anyhow::anyhow!("the judge thread is gone"))?;
    let judge = judge_thread;
    // A sandbox's slot passes to the next sandbox seconds after it ends: the trace stops
    // then, rather than judge the new sandbox's attempts under the old id.
    let slot_taken = sb
        .pid
        .is_some()
        .then(|| crate::discovery::target::watch_slot(&sb, SLOT_CHECK));
    let mut session = Session {
        slot_taken,
        drain: Drain::new(
            names,
            Places {
                nf_layout: attached.programs.nf_layout().clone(),
                ifnames: std::mem::take(&mut attached.ifnames),
            },
        ),
        correlator: Correlator::new(
            &args.ports,
            Timing {
                late_ns: args.late_window.as_nanos() as u64,
                ..Timing::default()
            },
        ),
        path,
        host_ns_inode: host_ns.as_ref().map(|h| h.inode),
        site,
        probe_ports: HashSet::new(),
        probing: args.probe,
        failures: 0,
        decided: None,
        in_judgement: 0,
        losses: LossLog::default(),
        not_sent: Vec::new(),
        answered: std::collections::HashMap::new(),
        awaiting: Vec::new(),
        attempt_timeout: args.timeout,
    };
    let result = rt.block_on(session.run_loop(events, &attached.programs, &args, judge, stop));
    let result = result?;
    if args.probe {
        eprintln!(
            "tracer: verdict {} ms after start (attach {} ms)",
            started.elapsed().as_millis(),
            attach_time.as_millis()
        );
    }
    Ok(result)
}

/// The event loop's state: turning events into journeys and handing finished ones to the
/// judge. Nothing here blocks.
struct Session {
    /// Says when another sandbox took the traced one's slot.
    slot_taken: Option<mpsc::Receiver<EnvError>>,
    /// Kernel records to named hops.
    drain: Drain,
    correlator: Correlator,
    path: ExpectedPath,
    /// The verified host side's namespace (None: not known, not attached).
    host_ns_inode: Option<u32>,
    /// Where probe attempts are made from (None: nowhere, nothing is sent).
    site: Option<connect::ProbeSite>,
    probe_ports: HashSet<u16>,
    /// --probe: only our own attempts are reported, and the first verdict ends the run.
    probing: bool,
    failures: u64,
    /// With --probe: the verdict that ends the run.
    decided: Option<Outcome>,
    /// Journeys handed to the judge and not yet decided.
    in_judgement: usize,
    losses: LossLog,
    /// Probe attempts whose connect() failed at once: (when, errno).
    not_sent: Vec<(u64, i32)>,
    /// Probe attempts that ended, by local port: whether the request after the handshake
    /// got an answer.
    answered: std::collections::HashMap<u16, bool>,
    /// Probe journeys that connected, waiting for their attempt's end (the request after the
    /// handshake may still go unanswered), until the deadline.
    awaiting: Vec<(Journey, Instant)>,
    /// A probe attempt's timeout.
    attempt_timeout: Duration,
}

/// How long an attempt that failed at connect() waits for its route events.
const NOT_SENT_SETTLE_NS: u64 = 30_000_000;

/// How long a stop waits for the judge to finish what it was given.
const JUDGE_GRACE: Duration = Duration::from_millis(500);

impl Session {
    async fn run_loop(
        &mut self,
        events: RingBuf<MapData>,
        programs: &Programs,
        args: &TraceArgs,
        judge: JudgeHandle,
        stop_signal: impl std::future::Future<Output = ()>,
    ) -> Result<i32> {
        let mut fd = crate::events::decode::ring_fd(events)?;
        tokio::pin!(stop_signal);
        let mut tick = tokio::time::interval(TICK);
        let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let (tx, rx) = mpsc::channel::<AttemptEvent>();
        let stop = Arc::new(AtomicBool::new(false));
        let mut prober = args
            .probe
            .then(|| self.start_probe(args.attempts, args.timeout, tx, stop.clone()));
        let mut probe_done_at: Option<Instant> = None;
        let mut gone: Option<EnvError> = None;
        loop {
            tokio::select! {
                guard = fd.readable_mut() => {
                    let mut guard = guard?;
                    if self.drain(guard.get_inner_mut(), programs) {
                        guard.clear_ready();
                    }
                }
                _ = tick.tick() => {
                    while let Ok(ev) = rx.try_recv() {
                        match ev {
                            AttemptEvent::Bound(port) => {
                                self.probe_ports.insert(port);
                            }
                            // A connect that failed at once: its route events, if any, may
                            // still be on their way; it is handed over a little later.
                            AttemptEvent::Done(a) => {
                                if let connect::AttemptResult::NotSent(errno) = a.result {
                                    self.not_sent.push((Clock::now_mono_ns(), errno));
                                }
                                // Only a request that waited out its timeout went unanswered:
                                // a status, a refusal or bytes that are not HTTP all came back.
                                let answered = !matches!(a.result, connect::AttemptResult::Timeout);
                                self.answered.insert(a.local_port, answered);
                            }
                            // Not sent: judged from what the check read, at once.
                            AttemptEvent::Withheld(w) => self.withheld(&w, &judge),
                        }
                    }
                    self.settle_not_sent();
                    if prober.as_ref().is_some_and(|h| h.is_finished()) && probe_done_at.is_none() {
                        probe_done_at = Some(Instant::now());
                        if let Some(h) = prober.take() {
                            h.join().map_err(|_| anyhow::anyhow!("prober panicked"))??;
                        }
                    }
                    self.losses.observe(programs.lost_events().unwrap_or(0), Clock::now_mono_ns());
                    self.collect_decisions(&judge);
                    let due = self.correlator.take_due(Clock::now_mono_ns());
                    self.hand_over(due, &judge);
                    let waited = probe_done_at.is_some_and(|t| t.elapsed() > PROBE_GRACE);
                    if self.decided.is_some() || (waited && self.in_judgement == 0) {
                        break;
                    }
                    if let Some(e) = self.slot_taken.as_ref().and_then(|rx| rx.try_recv().ok()) {
                        gone = Some(e);
                        break;
                    }
                }
                _ = &mut stop_signal => break,
                _ = &mut deadline => break,
            }
        }
        stop.store(true, Ordering::Relaxed);
        if gone.is_some() {
            // What is still open may be the new sandbox's: nothing more is judged.
        } else if args.probe && self.decided.is_none() {
            let rest = self.correlator.take_all();
            self.hand_over(rest, &judge);
        } else if !args.probe {
            // Attempts whose end is already known are reported; the ones still waiting
            // (for a reply, or out their late window) cannot be judged honestly.
            let known = self.correlator.take_decided(Clock::now_mono_ns());
            self.hand_over(known, &judge);
            let open = self.correlator.open_count();
            if open > 0 {
                eprintln!("tracer: {open} attempts were still in flight at exit and are not judged");
            }
        }
        self.finish(judge);
        if self.drain.decode_errors > 0 {
            eprintln!(
                "tracer: {} event records could not be decoded (a bug)",
                self.drain.decode_errors
            );
        }
        if let Some(e) = gone {
            return Err(e.into());
        }
        Ok(self.exit_code(args.probe))
    }

    /// Drains the ring into the correlator; true when it is empty.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, programs: &Programs) -> bool {
        let correlator = &mut self.correlator;
        let stack = |id| programs.stack(id).unwrap_or_default();
        self.drain
            .drain(ring, stack, |hop| {
                correlator.push(hop);
                Ok(())
            })
            .unwrap_or(true)
    }

    /// Attempts that failed at connect() become journeys once their route events had time to
    /// arrive (the kernel's events and the prober's news travel apart).
    fn settle_not_sent(&mut self) {
        let now = Clock::now_mono_ns();
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.not_sent)
            .into_iter()
            .partition(|(at, _)| now >= at + NOT_SENT_SETTLE_NS);
        self.not_sent = wait;
        for (at, errno) in ready {
            self.correlator.connect_failed(
                self.host_ns_inode.unwrap_or(0),
                self.path.host_ip,
                self.path.port,
                errno,
                at,
            );
        }
    }

    /// Hands this sandbox's finished journeys to the judge.
    fn hand_over(&mut self, journeys: Vec<Journey>, judge: &JudgeHandle) {
        // Connected probes whose attempt has ended (or waited long enough) go first.
        let now = Instant::now();
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|(j, deadline)| now >= *deadline || self.answered.contains_key(&port_of(j)));
        self.awaiting = wait;
        let journeys: Vec<Journey> = ready.into_iter().map(|(j, _)| j).chain(journeys).collect();
        for j in journeys {
            // A probe's connection is judged once its request was answered, or not.
            if self.probing
                && self.is_probe(&j)
                && tracer_model::verdict::is_connected(&j)
                && !self.answered.contains_key(&port_of(&j))
                && !self.awaiting.iter().any(|(w, _)| w.id == j.id)
                && self.awaiting.len() < 64
            {
                let deadline = Instant::now() + self.attempt_timeout + Duration::from_millis(500);
                self.awaiting.push((j, deadline));
                continue;
            }
            // A probe is decided by its first journey: nothing after it is judged.
            let probe_done = self.probing && self.in_judgement + self.decided.iter().count() > 0;
            if !self.relevant(&j) || (self.probing && !self.is_probe(&j)) || probe_done {
                continue;
            }
            let guest_neigh = self
                .correlator
                .neigh_state(self.path.sandbox_ns.inode, self.path.guest_ip);
            let lost_events = self.losses.since(j.first_ns);
            let request_unanswered = self.probing && self.answered.get(&port_of(&j)) == Some(&false);
            let item = Item::Journey {
                journey: Box::new(j),
                guest_neigh,
                lost_events,
                request_unanswered,
            };
            if judge.work.send(Work::Judge((), item)).is_ok() {
                self.in_judgement += 1;
            }
        }
    }

    fn collect_decisions(&mut self, judge: &JudgeHandle) {
        while let Ok(d) = judge.decided.try_recv() {
            self.in_judgement = self.in_judgement.saturating_sub(1);
            if d.outcome != Outcome::Connected {
                self.failures += 1;
            }
            if self.probing {
                self.decided = Some(d.outcome);
            }
        }
    }

    /// Lets the judge finish what it was given, for a bounded time.
    fn finish(&mut self, judge: JudgeHandle) {
        let (decided, ended) = judge.finish(JUDGE_GRACE);
        for d in decided {
            self.in_judgement = self.in_judgement.saturating_sub(1);
            if d.outcome != Outcome::Connected {
                self.failures += 1;
            }
            if self.probing && self.decided.is_none() {
                self.decided = Some(d.outcome);
            }
        }
        match ended {
            Some(Err(e)) if !crate::output::is_closed_pipe(&e) => eprintln!("tracer: {e:#}"),
            Some(_) => {}
            None => eprintln!(
                "tracer: stopped while a verdict was still being worked out (a tool did not answer in time)"
            ),
        }
    }

    fn start_probe(
        &self,
        attempts: u32,
        timeout: Duration,
        tx: mpsc::Sender<AttemptEvent>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<Result<()>> {
        match self.site.clone() {
            Some(site) => site.spawn(attempts, timeout, tx, stop),
            // Unreachable: run() answers --probe without a site before attaching.
            None => std::thread::spawn(|| Ok(())),
        }
    }

    /// A probe the guard withheld: its verdict rests on what the guard read.
    fn withheld(&mut self, w: &connect::Withheld, judge: &JudgeHandle) {
        let host = self.host_ns_inode.unwrap_or(0);
        let (probe_route, host_side_problem) = super::withheld::facts(w, &self.path, host);
        let journey = Journey::withheld(host, self.path.host_ip, self.path.port, Clock::now_mono_ns());
        let item = Item::Withheld {
            journey: Box::new(journey),
            probe_route: probe_route.map(Box::new),
            host_side_problem,
        };
        if judge.work.send(Work::Judge((), item)).is_ok() {
            self.in_judgement += 1;
        }
    }

    fn exit_code(&self, probe: bool) -> i32 {
        match (probe, self.decided) {
            (true, Some(Outcome::Connected)) => EXIT_OK,
            (true, _) => EXIT_FOUND,
            (false, _) if self.failures > 0 => EXIT_FOUND,
            _ => EXIT_OK,
        }
    }

    /// Journeys of this sandbox: to its host IP, or through its namespace.
    fn relevant(&self, j: &Journey) -> bool {
        match j.id {
            JourneyId::NoRoute { dst, .. }
            | JourneyId::NotSent { dst, .. }
            | JourneyId::Withheld { dst, .. } => dst == self.path.host_ip,
            JourneyId::Conn(_) => {
                j.target.is_some_and(|(ip, _)| ip == self.path.host_ip)
                    || j.hops.iter().any(|(_, h)| h.netns == self.path.sandbox_ns.inode)
            }
        }
    }

    fn is_probe(&self, j: &Journey) -> bool {
        match j.id {
            JourneyId::Conn(k) => self.probe_ports.contains(&k.client_port),
            JourneyId::NoRoute { .. } | JourneyId::NotSent { .. } | JourneyId::Withheld { .. } => true,
        }
    }
}

/// The client port of a connection attempt (0 for others).
fn port_of(j: &Journey) -> u16 {
    j.client().map_or(0, |(_, p)| p)
}

/// The judge's thread, with the trace's one judge.
type JudgeHandle = JudgeThread<()>;
