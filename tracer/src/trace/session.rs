//! A trace of one sandbox's path: attach to its devices and namespaces, correlate events
//! into journeys, decide, report. The one-shot `--probe` and the passive watch share it.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};

use tracer_model::{
    hop::{Hop, HopKind},
    journey::{Correlator, Journey, JourneyId, Timing},
    path::ExpectedPath,
    reason::ReasonClass,
    rule::RuleName,
    tcp::nud_bits,
    verdict::{self, Outcome, Verdict},
};

use crate::{
    bpf::{
        ALL_TRACEPOINTS, Filter, NfLayout, Programs,
        btf::{KernelBtf, ReasonNames},
        kallsyms::Kallsyms,
    },
    cli::TraceArgs,
    connect::{self, AttemptEvent},
    error::{EXIT_FOUND, EXIT_OK, EnvError},
    events::{Clock, Names, decode, hop_from_event},
    firewall::{
        Rulesets,
        naming::{Place, RuleBaseline},
    },
    netns::Netns,
    netstate,
    output::{Format, Output},
    report::{Judged, Reporter},
    sandbox::Sandbox,
};

/// Where a netfilter drop happened: namespace inode, hook, priority window.
type DropPlace = (u32, tracer_model::hook::Hook, Option<(i32, i32)>);

/// How often finished journeys are collected (bounds verdict latency with the settle time).
const TICK: Duration = Duration::from_millis(5);
/// With --probe: how long to wait for a verdict after the last attempt ended.
const PROBE_GRACE: Duration = Duration::from_millis(1500);

/// Everything attached for one sandbox.
struct Attached {
    programs: Programs,
    /// ifindex → device name, per namespace inode (to name netfilter in/out devices).
    ifnames: HashMap<u32, HashMap<u32, String>>,
    devices: usize,
}

pub fn run(args: TraceArgs, sb: Sandbox, started: Instant) -> Result<i32> {
    let port = args.ports.first().copied().unwrap_or(49983);
    let (path, mut warnings) = crate::target::path_of(&sb, port)?;
    warnings.extend(sb.warnings.iter().cloned());
    let host_ns = sb.host_ns.clone().unwrap_or(Netns::current()?);
    let sandbox_ns = sb.netns.clone();
    // The counter baseline: the sandbox namespace's rules as discovery just read them, the
    // host side's read while the programs attach (both take tens of milliseconds).
    let host_rules = {
        let ns = host_ns.clone();
        std::thread::spawn(move || Rulesets::read(&ns))
    };
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "sandbox found");
    // Kernel symbols, struct offsets and reason names are read while the programs attach:
    // the programs stay silent until the configuration is written.
    let kallsyms = std::thread::spawn(Kallsyms::load);
    let btf_facts = std::thread::spawn(|| -> Result<_> {
        let btf = KernelBtf::load().map_err(|e| EnvError::NoBtf(format!("{e:#}")))?;
        Ok((btf.offsets()?, ReasonNames::load(&btf)?))
    });
    let attach_start = Instant::now();
    let (mut attached, filter) = attach(&path, &host_ns, &sandbox_ns, &args)?;
    let mut baseline = RuleBaseline::default();
    let sandbox_rules = sb
        .rules
        .clone()
        .unwrap_or_else(|| Arc::new(Rulesets::read(&sandbox_ns)));
    baseline.insert(sandbox_ns.inode, sandbox_rules);
    let host_rules = host_rules
        .join()
        .map_err(|_| anyhow::anyhow!("ruleset reader panicked"))?;
    if host_ns.inode != sandbox_ns.inode {
        baseline.insert(host_ns.inode, Arc::new(host_rules));
    }
    for ns in [&host_ns, &sandbox_ns] {
        let present = baseline
            .get(ns.inode)
            .map(|r| r.hook_priorities())
            .unwrap_or_default();
        attached.programs.attach_netfilter(ns, &present)?;
    }
    let (offsets, reasons) = btf_facts
        .join()
        .map_err(|_| anyhow::anyhow!("BTF reader panicked"))??;
    attached.programs.configure(offsets, &filter)?;
    let attach_time = attach_start.elapsed();
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "attached");
    // Test hook: the detach tests prove nothing stays attached after a panic.
    if std::env::var_os("TRACER_TEST_PANIC").is_some() {
        panic!("TRACER_TEST_PANIC is set: panicking with everything attached");
    }
    let kallsyms = kallsyms
        .join()
        .map_err(|_| anyhow::anyhow!("kallsyms reader panicked"))??;
    let names = Names::new(reasons, kallsyms);
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "ready");
    for w in &warnings {
        eprintln!("tracer: warning: {}", crate::output::escape(w));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Installed before "attached" is printed: a signal right after it ends the trace cleanly.
    let stop = {
        let _context = rt.enter();
        crate::events::stop_signal()?
    };
    announce(&path, attached.devices, attach_time, args.probe);
    let events = attached.programs.take_events()?;
    let out = Output::stdout(Format::from_json_flag(args.json));
    let mut session = Session {
        debug_events: std::env::var_os("TRACER_DEBUG_EVENTS").is_some(),
        nf_layout: attached.programs.nf_layout().clone(),
        sandbox: sb.clone(),
        doctor: None,
        reporter: Reporter::new(out, args.all_hops, Some(&path)),
        correlator: Correlator::new(&args.ports, Timing::default()),
        path,
        sandbox_ns,
        host_ns,
        names,
        ifnames: std::mem::take(&mut attached.ifnames),
        baseline,
        rules_now: HashMap::new(),
        named: HashMap::new(),
        probe_ports: HashSet::new(),
        probing: args.probe,
        failures: 0,
        decided: None,
        nft_trace: args.nft_trace,
    };
    let result = rt.block_on(session.run_loop(events, &args, stop));
    super::report_lost(&attached.programs)?;
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

/// The one stderr line that says what is attached (tests and scripts wait for "attached").
fn announce(path: &ExpectedPath, devices: usize, attach_time: Duration, probe: bool) {
    let host_veth = if path.host_veth.is_empty() {
        "?"
    } else {
        &path.host_veth
    };
    let mode = if probe {
        "probing"
    } else {
        "watching (Ctrl-C to stop)"
    };
    eprintln!(
        "tracer: sandbox {} — {} {host_veth} → {} {} ({} → {}); attached to {devices} devices, 2 namespaces in {} ms; {mode}",
        path.sandbox_id.as_deref().unwrap_or("-"),
        path.host_ns.label(),
        path.sandbox_ns.label(),
        path.tap,
        path.host_ip,
        path.guest_ip,
        attach_time.as_millis(),
    );
}

/// Loads the programs and attaches them to the path's devices and namespaces only.
fn attach(
    path: &ExpectedPath,
    host_ns: &Netns,
    sandbox_ns: &Netns,
    args: &TraceArgs,
) -> Result<(Attached, Filter)> {
    let mut addrs = path.addresses();
    addrs.extend(&args.addrs);
    let filter = Filter {
        ports: args.ports.clone(),
        netns: vec![host_ns.inode, sandbox_ns.inode],
        addrs,
    };
    let mut programs = Programs::open(&filter)?;
    programs.attach_tracepoints(ALL_TRACEPOINTS)?;
    let mut ifnames = HashMap::new();
    let mut devices = 0;
    let host_devs = [path.host_veth.as_str()];
    let sandbox_devs = [
        path.ns_veth.as_str(),
        path.tap.as_str(),
        path.bridge.as_deref().unwrap_or(""),
    ];
    for (ns, devs) in [(host_ns, &host_devs[..]), (sandbox_ns, &sandbox_devs[..])] {
        let snap = netstate::snapshot(ns).with_context(|| format!("read the links of {}", ns.label()))?;
        for dev in devs.iter().filter(|d| !d.is_empty()) {
            // A missing device (tap-missing, ...) is a finding of the trace, not an error.
            if let Some(link) = snap.link(dev) {
                programs.attach_tcx(ns, link.ifindex)?;
                devices += 1;
            }
        }
        ifnames.insert(
            ns.inode,
            snap.links.iter().map(|l| (l.ifindex, l.name.clone())).collect(),
        );
    }
    Ok((
        Attached {
            programs,
            ifnames,
            devices,
        },
        filter,
    ))
}

struct Session {
    /// TRACER_DEBUG_EVENTS: every decoded event on stderr, for debugging the tracer itself.
    debug_events: bool,
    sandbox: Sandbox,
    /// Where the netfilter slots are: the priority windows of netfilter hops.
    nf_layout: NfLayout,
    /// The doctor's checks of the sandbox, taken at the first failure and refreshed after a
    /// while (configuration changes while watching).
    doctor: Option<(Instant, Vec<crate::doctor::Check>)>,
    reporter: Reporter,
    correlator: Correlator,
    path: ExpectedPath,
    sandbox_ns: Netns,
    host_ns: Netns,
    names: Names,
    ifnames: HashMap<u32, HashMap<u32, String>>,
    baseline: RuleBaseline,
    /// The rulesets read after a failure, per namespace inode, with when: shared by rule
    /// naming and the doctor, so a failure costs one read per namespace.
    rules_now: HashMap<u32, (Instant, Arc<Rulesets>)>,
    /// Rules already named, by (netns, hook, window): counters only grow, so once is enough
    /// (and a watch must not run iptables-save per attempt).
    named: HashMap<DropPlace, RuleName>,
    probe_ports: HashSet<u16>,
    /// --probe: only our own attempts are reported, and the first verdict ends the run.
    probing: bool,
    failures: u64,
    /// With --probe: the verdict that ends the run.
    decided: Option<Outcome>,
    nft_trace: bool,
}

impl Session {
    async fn run_loop(
        &mut self,
        events: RingBuf<MapData>,
        args: &TraceArgs,
        stop_signal: impl std::future::Future<Output = ()>,
    ) -> Result<i32> {
        let mut fd = crate::events::ring_fd(events)?;
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
        loop {
            tokio::select! {
                guard = fd.readable_mut() => {
                    let mut guard = guard?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        if let Some(ev) = decode(&item) && let Some(hop) = hop_from_event(&ev, &mut self.names) {
                            if self.debug_events {
                                eprintln!("event: {hop:?}");
                            }
                            self.correlator.push(self.name_devices(hop));
                        }
                    }
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    while let Ok(ev) = rx.try_recv() {
                        if let AttemptEvent::Bound(port) = ev {
                            self.probe_ports.insert(port);
                        }
                    }
                    if prober.as_ref().is_some_and(|h| h.is_finished()) && probe_done_at.is_none() {
                        probe_done_at = Some(Instant::now());
                        if let Some(h) = prober.take() {
                            h.join().map_err(|_| anyhow::anyhow!("prober panicked"))??;
                        }
                    }
                    let due = self.correlator.take_due(Clock::now_mono_ns());
                    self.handle(due)?;
                    if self.decided.is_some() || probe_done_at.is_some_and(|t| t.elapsed() > PROBE_GRACE) {
                        break;
                    }
                }
                _ = &mut stop_signal => break,
                _ = &mut deadline => break,
            }
        }
        stop.store(true, Ordering::Relaxed);
        if args.probe && self.decided.is_none() {
            let rest = self.correlator.take_all();
            self.handle(rest)?;
        }
        self.reporter.print_repeats()?;
        Ok(self.exit_code(args.probe))
    }

    fn start_probe(
        &self,
        attempts: u32,
        timeout: Duration,
        tx: mpsc::Sender<AttemptEvent>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<Result<()>> {
        let target = SocketAddrV4::new(self.path.host_ip, self.path.port);
        let own = Netns::current().ok().map(|n| n.inode);
        let ns = (own != Some(self.host_ns.inode)).then(|| self.host_ns.clone());
        connect::spawn(ns, target, attempts, timeout, tx, stop)
    }

    fn exit_code(&self, probe: bool) -> i32 {
        match (probe, self.decided) {
            (true, Some(Outcome::Connected)) => EXIT_OK,
            (true, _) => EXIT_FOUND,
            (false, _) if self.failures > 0 => EXIT_FOUND,
            _ => EXIT_OK,
        }
    }

    /// Names the in/out devices of netfilter hops from the namespace's links.
    fn name_devices(&self, mut hop: Hop) -> Hop {
        if let HopKind::Netfilter {
            hook,
            slot,
            window_end,
            ..
        } = &mut hop.kind
            && let Some(end) = self.nf_layout.window_end(hop.netns, *hook as u8, *slot)
        {
            *window_end = end;
        }
        if let HopKind::Netfilter {
            in_ifindex,
            out_ifindex,
            in_dev,
            out_dev,
            ..
        } = &mut hop.kind
            && let Some(names) = self.ifnames.get(&hop.netns)
        {
            *in_dev = names.get(in_ifindex).cloned();
            *out_dev = names.get(out_ifindex).cloned();
        }
        hop
    }

    /// Journeys of this sandbox: to its host IP, or through its namespace.
    fn relevant(&self, j: &Journey) -> bool {
        match j.id {
            JourneyId::NoRoute { dst, .. } => dst == self.path.host_ip,
            JourneyId::Conn(_) => {
                j.target.is_some_and(|(ip, _)| ip == self.path.host_ip)
                    || j.hops.iter().any(|(_, h)| h.netns == self.path.sandbox_ns.inode)
            }
        }
    }

    fn is_probe(&self, j: &Journey) -> bool {
        match j.id {
            JourneyId::Conn(k) => self.probe_ports.contains(&k.client_port),
            JourneyId::NoRoute { .. } => true,
        }
    }

    fn handle(&mut self, journeys: Vec<Journey>) -> Result<()> {
        let probing = self.probing;
        for j in journeys {
            if !self.relevant(&j) || (probing && !self.is_probe(&j)) || self.decided.is_some() {
                continue;
            }
            let v = self.decide(&j);
            if v.outcome != Outcome::Connected {
                self.failures += 1;
            }
            let rule = self.name_rule(&j, &v);
            let explained_by = if v.outcome != Outcome::Connected {
                crate::doctor::explain(&v, self.doctor_checks())
            } else {
                Vec::new()
            };
            self.reporter.add(Judged {
                journey: &j,
                verdict: &v,
                rule: rule.as_ref(),
                explained_by: &explained_by,
            })?;
            if probing {
                self.decided = Some(v.outcome);
            }
        }
        Ok(())
    }

    fn decide(&mut self, j: &Journey) -> Verdict {
        let neigh_snapshot = std::cell::OnceCell::new();
        let sandbox_ns = self.sandbox_ns.clone();
        let correlator = &self.correlator;
        // The namespace's neighbour table now is the truth (the kernel moves an entry back to
        // INCOMPLETE without any tracepoint we attach); the last change seen is the fallback.
        let lookup = |ns: u32, addr: std::net::Ipv4Addr| {
            let snap = neigh_snapshot.get_or_init(|| netstate::snapshot(&sandbox_ns).ok());
            let live = (ns == sandbox_ns.inode)
                .then(|| {
                    snap.as_ref()?
                        .neighbours
                        .iter()
                        .find(|n| n.addr == addr)
                        .map(|n| nud_bits(&n.state))
                })
                .flatten();
            live.or_else(|| correlator.neigh_state(ns, addr))
        };
        verdict::decide(j, Some(&self.path), &lookup)
    }

    /// The doctor's read-only checks of this sandbox (no connection attempt: the trace is
    /// making its own), taken at the first failure and refreshed after a while
    /// (configuration changes while watching). They reuse the rulesets rule naming just read.
    fn doctor_checks(&mut self) -> &[crate::doctor::Check] {
        let stale = self
            .doctor
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(5));
        if stale {
            let fresh: HashMap<u32, Arc<Rulesets>> = self
                .rules_now
                .iter()
                .filter(|(_, (at, _))| at.elapsed() < Duration::from_secs(5))
                .map(|(inode, (_, r))| (*inode, r.clone()))
                .collect();
            let report = crate::doctor::check_with_rules(&self.sandbox, false, fresh);
            self.doctor = Some((Instant::now(), report.checks));
        }
        self.doctor
            .as_ref()
            .map(|(_, c)| c.as_slice())
            .unwrap_or_default()
    }

    /// The rule of a netfilter drop (named once per place), by counters, else by an nft trace
    /// when asked for.
    fn name_rule(&mut self, j: &Journey, v: &Verdict) -> Option<RuleName> {
        let d = v.drop.as_ref()?;
        let hook = d.hook.filter(|_| d.reason.is(ReasonClass::Netfilter))?;
        let inode = v.failing_hop.and_then(|i| j.hops.get(i)).map(|(_, h)| h.netns)?;
        let key = (inode, hook, d.priority_window);
        if let Some(done) = self.named.get(&key) {
            return Some(done.clone());
        }
        let ns = self.netns_by_inode(inode)?;
        let now = Arc::new(Rulesets::read(&ns));
        self.rules_now.insert(inode, (Instant::now(), now.clone()));
        let place = Place {
            hook,
            table: d.table.as_deref(),
            window: d.priority_window,
        };
        let mut rule = self.baseline.name(inode, &now, place);
        if self.nft_trace
            && rule.rule.is_none()
            && let Some(traced) = crate::firewall::nftrace::resolve(&ns, &self.host_ns, &self.path)
        {
            rule = traced;
        }
        self.named.insert(key, rule.clone());
        Some(rule)
    }

    fn netns_by_inode(&self, inode: u32) -> Option<Netns> {
        [&self.host_ns, &self.sandbox_ns]
            .into_iter()
            .find(|n| n.inode == inode)
            .cloned()
            .or_else(|| crate::netns::all_named().into_iter().find(|n| n.inode == inode))
    }
}
