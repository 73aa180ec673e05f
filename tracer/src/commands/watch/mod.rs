//! `tracer watch`: one process per node that turns every failed envd connection into a drop
//! report.
//!
//! Two levels keep being always on cheap. *Detection* stays attached node-wide: socket state
//! changes and resets of envd connections and drops of envd packets, filtered in the kernel
//! (events that are rare by nature). A failed attempt opens an incident for the sandbox it was
//! for and asks for a *zoom-in*: the full path programs on that sandbox for a bounded window,
//! so the orchestrator's next attempt is followed hop by hop and judged by the same engine as
//! `trace`. Then the zoom-in goes; further failures only count.
//!
//! Threads, data flowing one way: the scanner (VMMs found and gone) → the event loop (kernel
//! events → attempts, journeys, incidents; prints) ⇄ the attacher (owns the programs: zoom-ins
//! attach and detach there) and the judge (verdicts, rule naming, the doctor). Nothing blocks
//! the loop. Every record leaves through one place, [`Watcher::print`] (stamped with the
//! fields a log pipeline indexes, `records`), to stdout and, with `--log-http`, to the
//! log-http thread's queue (`logship`).
mod detection;
mod incidents;
mod logship;
pub mod metrics;
mod records;
mod registry;
pub mod reports;
mod scanner;
mod zoom;
mod zooming;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::Ipv4Addr,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use serde_json::Value;
use tracer_model::{
    attempts::{AttemptTracker, Detected, End},
    engine::{inventory::NsInventory, share},
    hop::{Hop, HopKind},
    journey::{Correlator, Journey, JourneyId, Timing},
    verdict::Outcome,
};

use crate::{
    attach::bpf::{
        Filter, Programs,
        btf::{KernelBtf, ReasonNames},
        kallsyms::Kallsyms,
    },
    cli::WatchArgs,
    engine::{
        judge::{HostCache, Item, Judge},
        thread::{Decided, JudgeThread, Shared, Work},
    },
    error::{EXIT_OK, EnvError, is_root},
    events::{
        decode::{Clock, Names, Places},
        drain::Drain,
    },
    output::{Format, Output},
    report::{Reporter, record::JourneyRecord, record::SandboxRef},
    system::firewall::naming::RuleBaseline,
    system::netns::Netns,
};
use incidents::Incidents;
use metrics::{DropLabels, Metrics, OutcomeLabels, ProgramLabels};
use registry::{Entry, Key, Registry};
use reports::ReportDir;
use zoom::{Attacher, Cmd, Reply};

/// Judge threads at most: a zoom-in's verdict reads both namespaces' rulesets, links and
/// programs, mostly waiting on tools and netlink; in a storm several read side by side.
const JUDGE_WORKERS: usize = 4;
/// Verdicts kept for the confirmations of their host-side actor on other sandboxes.
const MAX_SHARED_SOURCES: usize = 256;
/// How often the loop looks at its channels and timers.
const TICK: Duration = Duration::from_millis(5);
/// Failed attempts waiting for a scan to say whose they are, at most, and for how long.
const MAX_UNATTRIBUTED: usize = 4096;
const ATTRIBUTE_WAIT_NS: u64 = 2_000_000_000;
/// Zoom-ins waiting for a free slot, at most (more failing sandboxes are counted, not queued).
pub const MAX_QUEUE: usize = 1024;
/// Output lines waiting for a slow reader of stdout, at most (more are dropped and counted).
const MAX_WAITING_LINES: usize = 10_000;
/// How often the kernel's counters (lost events, program run time) are read.
const POLL_EVERY: Duration = Duration::from_secs(1);

pub fn run(args: WatchArgs) -> Result<i32> {
    if !is_root() {
        return Err(EnvError::NoPrivileges.into());
    }
    let pinned_host = match &args.host_netns {
        Some(arg) => Some(crate::discovery::sandbox::pin_host_arg(arg)?),
        None => None,
    };
    let started = Instant::now();
    // The kernel's BTF is read for offsets and reason names, then let go: a watcher runs for
    // days and has no use for tens of MB of type information.
    let (offsets, reasons) = {
        let btf = KernelBtf::load().map_err(|e| EnvError::NoBtf(format!("{e:#}")))?;
        crate::attach::bpf::features::Features::probe(&btf)
            .require_path(&crate::attach::bpf::features::kernel_release())?;
        (btf.offsets()?, ReasonNames::load(&btf)?)
    };
    let names = Names::new(reasons, Kallsyms::load()?);
    let own = Netns::current()?;
    let filter = Filter {
        ports: vec![args.port],
        netns: vec![pinned_host.as_ref().unwrap_or(&own).inode],
        addrs: Vec::new(),
        ring_bytes: args.ring_size,
        detect_any_addr: true,
        deep: false,
    };
    let mut programs = Programs::load(offsets, &filter)?;
    programs.attach_tracepoints(tracer_common::hooks::tracepoints(Some(
        tracer_common::hooks::Stage::Detect,
    )))?;
    // Everything a zoom-in attaches is loaded now: a zoom-in only creates links.
    programs.load_netfilter_now()?;
    programs.load_path_programs()?;
    for d in &programs.degraded {
        eprintln!("tracer: watch: warning: {d}");
    }
    programs.release_btf();
    // What parsing the BTF freed goes back to the system, not into a heap kept for days.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let events = programs.take_events()?;
    let metrics = match args.metrics {
        Some(addr) => {
            let m = Arc::new(Metrics::new());
            metrics::serve(addr, m.clone())?;
            Some(m)
        }
        None => None,
    };
    let node = match &args.node {
        Some(n) => n.clone(),
        None => records::host_name()?,
    };
    let ship = match &args.log_http {
        Some(url) => Some(logship::LogShip::start(url.clone(), metrics.clone())?),
        None => None,
    };
    let reports = match &args.report_dir {
        Some(dir) => Some(ReportDir::new(dir, args.report_max_files, args.report_max_bytes)?),
        None => None,
    };
    let (to_attacher, attacher_rx) = mpsc::channel();
    let (attacher_tx, from_attacher) = mpsc::channel();
    let attacher = Attacher::new(programs, args.port);
    let attacher_thread = std::thread::Builder::new()
        .name("attacher".into())
        .spawn(move || attacher.run(attacher_rx, attacher_tx))?;
    let (ask_scan, scan_asks) = mpsc::channel();
    let (scan_tx, from_scanner) = mpsc::channel();
    let scanner = scanner::Scanner::new(args.scan_every);
    std::thread::Builder::new()
        .name("scanner".into())
        .spawn(move || scanner.run(scan_asks, scan_tx))?;
    // One judge per zoom-in (its path, its rule baseline, its doctor), all on the judge
    // thread: rule naming and the doctor run tools, never on the loop.
    let judges = JudgeThread::<Key>::spawn_pool(args.max_zoom.clamp(1, JUDGE_WORKERS))?;
    let to_judge = judges.work.clone();
    let (rt, stop) = crate::events::decode::runtime_with_stop()?;
    let clock = Clock::new();
    let stdout = crate::output::DetachedStdout::new(MAX_WAITING_LINES);
    let mut w = Watcher {
        correlator: Correlator::new(
            &[args.port],
            Timing {
                late_ns: args.late_window.as_nanos() as u64,
                ..Timing::default()
            },
        ),
        tracker: AttemptTracker::new(args.port, args.late_window.as_nanos() as u64),
        incidents: Incidents::new(
            clock.unix_ns(Clock::now_mono_ns()),
            args.repeat_every.as_nanos() as u64,
        ),
        args,
        clock,
        drain: Drain::new(names, Places::default()),
        registry: Registry::default(),
        host_namespaces: pinned_host.iter().map(|n| n.inode).collect(),
        pinned_host: pinned_host.map(|n| n.inode),
        watched_ns: HashSet::new(),
        zooms: HashMap::new(),
        queue: VecDeque::new(),
        unattributed: Vec::new(),
        to_attacher,
        to_judge,
        ask_scan,
        metrics,
        reports,
        node,
        ship,
        out: Output::to_writer(Format::Json, Box::new(stdout)),
        shared_sources: HashMap::new(),
        host_cache: Arc::default(),
        scanned: false,
    };
    eprintln!(
        "tracer: watch: detection attached in {} ms (port {}, max {} zoom-ins); finding sandboxes",
        started.elapsed().as_millis(),
        w.args.port,
        w.args.max_zoom
    );
    let result = rt.block_on(w.run_loop(events, &from_scanner, &from_attacher, &judges.decided, stop));
    // Last counts, then everything detaches with the programs.
    for r in w.incidents.repeats(Clock::now_mono_ns(), true) {
        let _ = w.print(&r);
    }
    // What still waits for the collector is posted, for a bounded time.
    if let Some(ship) = w.ship.take() {
        let url = ship.url().to_string();
        let c = ship.finish(logship::EXIT_FLUSH);
        let why: Vec<String> = logship::Dropped::ALL
            .iter()
            .filter(|d| c.dropped(**d) > 0)
            .map(|d| format!("{} {}", c.dropped(*d), d.label()))
            .collect();
        eprintln!(
            "tracer: watch: --log-http: {} records posted to {url}, {} dropped{}",
            c.sent,
            c.dropped_total(),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join(", "))
            }
        );
    }
    drop(w);
    let _ = judges.finish(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !attacher_thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    result.map(|()| EXIT_OK)
}

/// A zoom-in: asked for, then attached with its path.
struct Zoom {
    sandbox: Arc<crate::discovery::sandbox::Sandbox>,
    asked_at: Instant,
    /// Set once attached: the addresses and namespace its hops carry, and when it ends.
    attached: Option<Attached>,
    /// A journey of it went to its judge (the first decides the zoom-in): its programs are
    /// detached and its slot is free while the judge reads and decides.
    handed: bool,
}

struct Attached {
    host_ip: Ipv4Addr,
    addrs: Vec<Ipv4Addr>,
    netns: u32,
    /// Monotonic ns when everything was attached: journeys that began before are partial.
    since_ns: u64,
    until: Instant,
}

struct Watcher {
    args: WatchArgs,
    clock: Clock,
    /// Kernel records to named hops.
    drain: Drain,
    tracker: AttemptTracker,
    correlator: Correlator,
    registry: Registry,
    incidents: Incidents,
    /// Namespaces where the orchestrator's attempts are counted.
    host_namespaces: HashSet<u32>,
    pinned_host: Option<u32>,
    /// Namespaces in the kernel filter.
    watched_ns: HashSet<u32>,
    zooms: HashMap<Key, Zoom>,
    queue: VecDeque<Key>,
    /// Failed attempts for a host IP no known sandbox explains yet (a scan was asked for).
    unattributed: Vec<(tracer_model::attempts::Attempt, u64)>,
    to_attacher: mpsc::Sender<Cmd>,
    to_judge: mpsc::Sender<Work<Key>>,
    ask_scan: mpsc::Sender<()>,
    metrics: Option<Arc<Metrics>>,
    reports: Option<ReportDir>,
    /// The node's name, in every record.
    node: String,
    /// `--log-http`: records also go to the collector, from a thread of their own.
    ship: Option<logship::LogShip>,
    out: Output,
    /// Verdicts whose host-side actor is being confirmed on other sandboxes, by key (at most
    /// [`MAX_SHARED_SOURCES`]).
    shared_sources: HashMap<Key, Arc<JourneyRecord>>,
    /// The host side's inventory, shared by the zoom-ins' judges.
    host_cache: Arc<HostCache>,
    /// The first scan arrived (until then the watcher is not "attached" for its users).
    scanned: bool,
}

impl Watcher {
    async fn run_loop(
        &mut self,
        events: RingBuf<MapData>,
        scans: &mpsc::Receiver<scanner::Update>,
        attacher: &mpsc::Receiver<Reply>,
        judge: &mpsc::Receiver<Decided<Key>>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let mut fd = crate::events::decode::ring_fd(events)?;
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(TICK);
        let mut last_poll = Instant::now();
        loop {
            tokio::select! {
                guard = fd.readable_mut() => {
                    let mut guard = guard?;
                    if self.drain(guard.get_inner_mut())? {
                        guard.clear_ready();
                    }
                }
                _ = tick.tick() => {
                    while let Ok(u) = scans.try_recv() {
                        self.scanned(u)?;
                    }
                    while let Ok(r) = attacher.try_recv() {
                        self.attacher_said(r)?;
                    }
                    while let Ok(d) = judge.try_recv() {
                        self.judged(d)?;
                    }
                    self.timers()?;
                    if last_poll.elapsed() >= POLL_EVERY {
                        last_poll = Instant::now();
                        let _ = self.to_attacher.send(Cmd::Poll);
                    }
                }
                _ = &mut stop => break,
            }
        }
        Ok(())
    }

    /// Prints a record: the one way out for every kind, stamped first.
    fn print(&mut self, v: &Value) -> Result<()> {
        let v = self.stamped(v);
        self.emit(&v)
    }

    /// A record with the fields every record carries (`records::stamp`).
    fn stamped(&self, v: &Value) -> Value {
        let mut v = v.clone();
        records::stamp(&mut v, &self.node, records::now_unix_ns());
        v
    }

    /// A stamped record to the collector's queue (never waiting for it) and to stdout.
    fn emit(&mut self, v: &Value) -> Result<()> {
        if let Some(ship) = &self.ship {
            let mut line = serde_json::to_vec(v)?;
            line.push(b'\n');
            ship.push(line);
        }
        self.out.json_line(v).context("write to stdout")
    }

    fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }

    /// Drains the ring (a bounded number of records); true when it is empty.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<bool> {
        let mut hops = Vec::new();
        let errors = self.drain.decode_errors;
        let empty = self.drain.drain(
            ring,
            |_| Vec::new(),
            |h| {
                hops.push(h);
                Ok(())
            },
        )?;
        if let Some(m) = self.metrics() {
            m.decode_errors.inc_by(self.drain.decode_errors - errors);
        }
        for h in hops {
            self.hop(h)?;
        }
        Ok(empty)
    }

    fn hop(&mut self, hop: Hop) -> Result<()> {
        let detection = matches!(
            hop.kind,
            HopKind::Socket { .. } | HopKind::RecvReset | HopKind::SendReset { .. } | HopKind::Drop { .. }
        );
        let zoomed = self.zoomed_hop(&hop);
        if detection {
            let orchestrator = !matches!(hop.kind, HopKind::Socket { .. } | HopKind::RecvReset)
                || self.is_host_ns(hop.netns);
            if orchestrator && let Some(d) = self.tracker.push(&hop) {
                self.detected(d, zoomed)?;
            }
        }
        if zoomed {
            self.correlator.push(hop);
        }
        Ok(())
    }

    /// Namespaces where the orchestrator runs: given, or the host sides of the sandboxes.
    fn is_host_ns(&self, inode: u32) -> bool {
        self.host_namespaces.contains(&inode)
    }

    /// A hop of a sandbox being zoomed in on: in its namespace, or carrying its addresses.
    fn zoomed_hop(&self, h: &Hop) -> bool {
        self.zooms
            .values()
            .filter_map(|z| z.attached.as_ref())
            .any(|a| a.netns == h.netns || a.addrs.contains(&h.src()) || a.addrs.contains(&h.dst()))
    }

    fn scanned(&mut self, u: scanner::Update) -> Result<()> {
        let now = Clock::now_mono_ns();
        for (key, sb, start_ns) in u.added {
            if self.pinned_host.is_none()
                && let Some(h) = &sb.host_ns
            {
                self.host_namespaces.insert(h.inode);
                self.watch_ns(h.inode);
            }
            self.watch_ns(sb.netns.inode);
            self.registry.insert(key, sb, start_ns);
        }
        for key in self.registry.retire_missing(&u.live, now) {
            // Its zoom-in (if any) follows nothing any more.
            if self.zooms.contains_key(&key) {
                self.unzoom(key);
            }
        }
        for gone in self.registry.expire(now) {
            if let Some(v) = self.incidents.sandbox_ended(gone.key, self.clock.unix_ns(now)) {
                self.print(&v)?;
            }
            let inode = gone.netns();
            if !self.registry.running().any(|e| e.netns() == inode) && self.watched_ns.remove(&inode) {
                let _ = self.to_attacher.send(Cmd::Unwatch(inode));
            }
        }
        // Attempts that waited for a scan that started after them.
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unattributed)
            .into_iter()
            .partition(|(a, _)| a.end_ns <= u.at_ns);
        self.unattributed = wait;
        for (a, _) in ready {
            self.attempt(a)?;
        }
        if !self.scanned {
            self.scanned = true;
            eprintln!(
                "tracer: watch: attached; {} sandboxes (scan {} ms); Ctrl-C to stop",
                self.registry.running().count(),
                u.took.as_millis()
            );
        }
        self.gauges();
        Ok(())
    }

    fn watch_ns(&mut self, inode: u32) {
        if self.watched_ns.insert(inode) {
            let _ = self.to_attacher.send(Cmd::Watch(inode));
        }
    }

    /// Zoom-ins holding a slot: attached, or being attached, and not yet handed to their
    /// judge (a handed one has let its programs go; its judge reads and decides).
    fn slots_used(&self) -> usize {
        self.zooms.values().filter(|z| !z.handed).count()
    }

    fn gauges(&self) {
        if let Some(m) = self.metrics() {
            m.incidents_open.set(self.incidents.open_count() as i64);
            m.sandboxes.set(self.registry.running().count() as i64);
            m.zoom_active.set(self.slots_used() as i64);
            m.zoom_queued.set(self.queue.len() as i64);
        }
    }
}

/// The journey holds the attempt's start: its SYN, or its socket entering SYN_SENT (a connect
/// that failed at once has neither and is whole).
fn starts_here(j: &Journey) -> bool {
    match j.id {
        JourneyId::Conn(_) => j.hops.iter().any(|(leg, h)| {
            (*leg == tracer_model::journey::Leg::Request && h.is_syn())
                || matches!(
                    h.kind,
                    HopKind::Socket {
                        new_state: tracer_model::tcp::TCP_SYN_SENT,
                        ..
                    }
                )
        }),
        JourneyId::NoRoute { .. } | JourneyId::NotSent { .. } | JourneyId::Withheld { .. } => true,
    }
}

fn end_name(e: End) -> &'static str {
    match e {
        End::Connected => "connected",
        End::Refused => "refused",
        End::GaveUp => "gave_up",
    }
}

fn sandbox_ref(e: &Entry, host_ip: Ipv4Addr) -> SandboxRef {
    let sb = &e.sandbox;
    SandboxRef {
        id: sb.id.clone(),
        netns: sb.netns.label(),
        tap: sb.tap.clone().unwrap_or_default(),
        guest_ip: sb.guest_ip.map(|g| g.to_string()).unwrap_or_default(),
        host_ip: host_ip.to_string(),
        pid: sb.pid,
    }
}

/// Why nothing of a sandbox can be followed any more, if so: its namespace is gone.
fn unreachable_sandbox(e: &Entry) -> Option<String> {
    let ns = &e.sandbox.netns;
    let here = crate::system::netns::inode_of(&ns.path).ok();
    if here == Some(ns.inode) {
        return None;
    }
    let vmm = match (e.sandbox.pid, e.end_ns) {
        (Some(pid), Some(_)) => format!("its VMM (pid {pid}) has exited"),
        (Some(pid), None) => format!("its VMM is pid {pid}"),
        _ => "no VMM was found".into(),
    };
    Some(format!(
        "nothing of sandbox {} can be followed: {vmm}, and its namespace {} is gone",
        e.label(),
        ns.label()
    ))
}
