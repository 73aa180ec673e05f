//! Zoom-ins: the full set of path programs on one failing sandbox, for a bounded window. The
//! programs are loaded once at start; a zoom-in only creates links (tcx on the path's devices,
//! netfilter slots in its namespace, the host side's slots and the per-packet tracepoints
//! while any zoom-in is on) and adds the sandbox's addresses to the kernel filter. All of it
//! runs on this module's thread, which owns the programs: the event loop never waits for an
//! attach.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_model::path::ExpectedPath;

use super::registry::Key;
use crate::{
    attach::{
        bpf::{NfLayout, Programs},
        plan::{PathPlan, Side},
    },
    discovery::sandbox::Sandbox,
    system::firewall::Rulesets,
    system::netns::Netns,
};

/// What the loop asks for.
pub enum Cmd {
    /// Follow packets in one more namespace (detection: drops there).
    Watch(u32),
    Unwatch(u32),
    Zoom {
        key: Key,
        sandbox: Arc<Sandbox>,
        /// Attach tcx to the path's devices (not in a failure storm: see `Watcher::zoom`).
        tcx: bool,
    },
    Unzoom(Key),
    /// Read the kernel's counters (lost events, program run time) and report them.
    Poll,
}

/// What the thread answers.
pub enum Reply {
    Zoomed {
        key: Key,
        path: Box<ExpectedPath>,
        layout: NfLayout,
        /// ifindex → name, for both namespaces of the path.
        ifnames: Vec<(u32, HashMap<u32, String>)>,
        /// The host side's rulesets (the baseline for naming a rule there by its counters).
        /// The host side's rulesets (None: the host side is not known, nothing attached there).
        host_rules: Option<Arc<Rulesets>>,
        blind_spots: Vec<String>,
        took: Duration,
    },
    ZoomFailed {
        key: Key,
        why: String,
    },
    Counters {
        lost: u64,
        /// (program, runs, run time ns) when the kernel keeps statistics.
        programs: Vec<(String, u64, u64)>,
    },
}

struct Zoomed {
    ns: u32,
    /// The verified host side (None: not known, nothing attached there).
    host_ns: Option<u32>,
    devices: Vec<(u32, u32)>,
    addrs: Vec<Ipv4Addr>,
}

/// How long the host side's rulesets are reused across zoom-ins (rule naming compares
/// counters with them: older only means more increments to compare).
const HOST_RULES_FRESH: Duration = Duration::from_secs(60);

pub struct Attacher {
    programs: Programs,
    port: u16,
    /// Host namespaces with netfilter slots attached.
    host_nf: HashMap<u32, ()>,
    /// The host side's rulesets, per namespace, with when they were read.
    host_rules: HashMap<u32, (Instant, Arc<Rulesets>)>,
    zooms: HashMap<Key, Zoomed>,
    /// tcx links whose zoom-in ended, detached when no command waits: each tcx attach or
    /// detach waits for an RCU grace period under the RTNL lock (~15 ms here), so in a failure
    /// storm detaching at once would double what each zoom-in in the queue waits for. Their
    /// programs stay on the devices meanwhile, returning at once (no address of theirs is in
    /// the kernel filter any more). Bounded by the sandboxes watched.
    retired: Vec<(u32, u32)>,
}

impl Attacher {
    pub fn new(programs: Programs, port: u16) -> Self {
        Self {
            programs,
            port,
            host_nf: HashMap::new(),
            host_rules: HashMap::new(),
            zooms: HashMap::new(),
            retired: Vec::new(),
        }
    }

    fn host_rules(&mut self, ns: &Netns) -> Arc<Rulesets> {
        let fresh = self
            .host_rules
            .get(&ns.inode)
            .filter(|(at, _)| at.elapsed() < HOST_RULES_FRESH)
            .map(|(_, r)| r.clone());
        fresh.unwrap_or_else(|| {
            let r = Arc::new(Rulesets::read(ns));
            self.host_rules.insert(ns.inode, (Instant::now(), r.clone()));
            r
        })
    }

    /// Runs until the loop hangs up; everything attached goes with the programs.
    pub fn run(mut self, cmds: mpsc::Receiver<Cmd>, replies: mpsc::Sender<Reply>) {
        loop {
            let cmd = match cmds.try_recv() {
                Ok(cmd) => cmd,
                Err(mpsc::TryRecvError::Empty) if self.detach_one_retired() => continue,
                Err(mpsc::TryRecvError::Empty) => match cmds.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                },
                Err(mpsc::TryRecvError::Disconnected) => break,
            };
            let reply = match cmd {
                Cmd::Watch(ns) => {
                    let _ = self.programs.add_netns(ns);
                    None
                }
                Cmd::Unwatch(ns) => {
                    let _ = self.programs.remove_netns(ns);
                    // Its devices are gone or going: their links must not be taken for attached
                    // ones if the namespace's inode and an ifindex come back.
                    for (n, ifindex) in std::mem::take(&mut self.retired) {
                        if n == ns {
                            let _ = self.programs.detach_tcx(n, ifindex);
                        } else {
                            self.retired.push((n, ifindex));
                        }
                    }
                    None
                }
                Cmd::Zoom { key, sandbox, tcx } => Some(self.zoom(key, &sandbox, tcx)),
                Cmd::Unzoom(key) => {
                    self.unzoom(key);
                    None
                }
                Cmd::Poll => Some(self.counters()),
            };
            if let Some(r) = reply
                && replies.send(r).is_err()
            {
                break;
            }
        }
    }

    fn zoom(&mut self, key: Key, sb: &Sandbox, tcx: bool) -> Reply {
        let start = Instant::now();
        match self.try_zoom(key, sb, tcx) {
            Ok((path, ifnames, host_rules, blind_spots)) => Reply::Zoomed {
                key,
                path: Box::new(path),
                layout: self.programs.nf_layout().clone(),
                ifnames,
                host_rules,
                blind_spots,
                took: start.elapsed(),
            },
            Err(e) => {
                self.unzoom(key);
                Reply::ZoomFailed {
                    key,
                    why: format!("{e:#}"),
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_zoom(
        &mut self,
        key: Key,
        sb: &Sandbox,
        tcx: bool,
    ) -> Result<(
        ExpectedPath,
        Vec<(u32, HashMap<u32, String>)>,
        Option<Arc<Rulesets>>,
        Vec<String>,
    )> {
        let (path, _) = crate::discovery::target::path_of(sb, self.port)?;
        // Only a verified host side is attached; it is never guessed.
        let host_ns = sb.host_ns.clone();
        let plan = PathPlan::of(&path, host_ns.as_ref(), &sb.netns);
        self.zooms.insert(
            key,
            Zoomed {
                ns: sb.netns.inode,
                host_ns: host_ns.as_ref().map(|h| h.inode),
                devices: Vec::new(),
                addrs: Vec::new(),
            },
        );
        let t0 = Instant::now();
        let devices = if tcx {
            plan.attach_devices(&mut self.programs)?
        } else {
            plan.devices_unattached(
                "not attached: other sandboxes were waiting for a zoom-in (a failure storm)",
            )?
        };
        let t1 = Instant::now();
        if let Some(z) = self.zooms.get_mut(&key) {
            z.devices = devices.attached.clone();
        }
        let host_rules = host_ns.as_ref().map(|h| self.host_rules(h));
        // The sandbox's rulesets as discovery read them say where its hook functions are; the
        // host side's slots are shared by every zoom-in on it.
        let present = |side: &Side<'_>| match (&host_rules, side.is_host) {
            (Some(r), true) => r.hook_priorities(),
            _ => sb
                .rules
                .as_ref()
                .map(|r| r.hook_priorities())
                .unwrap_or_else(|| Rulesets::read(&sb.netns).hook_priorities()),
        };
        let host_nf = &self.host_nf;
        let attached = plan.attach_netfilter(&mut self.programs, present, |side| {
            side.is_host && host_nf.contains_key(&side.ns.inode)
        })?;
        for side in plan
            .sides
            .iter()
            .filter(|s| s.is_host && attached.contains(&s.ns.inode))
        {
            self.host_nf.insert(side.ns.inode, ());
        }
        let t2 = Instant::now();
        self.programs.attach_tracepoints(zoom_tracepoints())?;
        tracing::debug!(
            devices_ms = (t1 - t0).as_millis() as u64,
            netfilter_ms = (t2 - t1).as_millis() as u64,
            tracepoints_ms = t2.elapsed().as_millis() as u64,
            "zoom-in attached"
        );
        for a in &plan.addrs {
            self.programs.add_addr(*a)?;
        }
        if let Some(z) = self.zooms.get_mut(&key) {
            z.addrs = plan.addrs.clone();
        }
        Ok((path, devices.ifnames, host_rules, devices.blind_spots))
    }

    /// Detaches one zoom-in; the host side's slots and the tracepoints go with the last one.
    fn unzoom(&mut self, key: Key) {
        let t = Instant::now();
        self.unzoom_now(key);
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "zoom-in detached");
    }

    fn unzoom_now(&mut self, key: Key) {
        let Some(z) = self.zooms.remove(&key) else { return };
        self.retired.extend(z.devices);
        // Another zoom-in on the same namespace (a recycled slot) keeps its slots.
        if !self.zooms.values().any(|o| o.ns == z.ns) && !self.host_nf.contains_key(&z.ns) {
            self.programs.detach_netfilter(z.ns);
        }
        if let Some(host) = z.host_ns
            && !self.zooms.values().any(|o| o.host_ns == Some(host))
            && self.host_nf.remove(&host).is_some()
        {
            self.programs.detach_netfilter(host);
        }
        for a in z.addrs {
            if !self.zooms.values().any(|o| o.addrs.contains(&a)) {
                let _ = self.programs.remove_addr(a);
            }
        }
        if self.zooms.is_empty() {
            let _ = self.programs.detach_tracepoints(zoom_tracepoints());
        }
    }

    /// Detaches one retired device's tcx links, unless a zoom-in uses it again (the links
    /// are then its own). False when none is left.
    fn detach_one_retired(&mut self) -> bool {
        let Some((ns, ifindex)) = self.retired.pop() else {
            return false;
        };
        if !self.zooms.values().any(|z| z.devices.contains(&(ns, ifindex))) {
            let _ = self.programs.detach_tcx(ns, ifindex);
        }
        true
    }

    fn counters(&self) -> Reply {
        Reply::Counters {
            lost: self.programs.lost_events().unwrap_or(0),
            programs: self.programs.run_stats(),
        }
    }
}

/// What a zoom-in attaches while it lasts: the hook table's per-packet and per-lookup
/// tracepoints.
fn zoom_tracepoints() -> impl Iterator<Item = &'static str> {
    tracer_common::hooks::tracepoints(Some(tracer_common::hooks::Stage::Zoom))
}
