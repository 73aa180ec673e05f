//! Loading the kernel programs, attaching them where the path runs, and detaching.
//!
//! Every attachment is a BPF link held by an fd of this process (tp_btf, tcx, netfilter), so
//! whatever way the process ends (return, signal, panic, SIGKILL) the kernel detaches
//! everything when the fds close. Nothing is pinned.
pub mod btf;
pub mod features;
pub mod kallsyms;
pub mod netfilter;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, SchedClassifier, TcAttachType, links::LinkOrder, tc::SchedClassifierLinkId,
        tc::TcAttach, tp_btf::BtfTracePointLinkId,
    },
};
use tracer_common::{
    CFG_ANY_ADDR, CFG_ANY_NETNS, CFG_DEEP, CFG_DETECT_ANY_ADDR, Config, MAX_PORTS, NF_HOOK_SLOTS,
    NF_SLOT_PRIORITIES, Offsets, hook,
    hooks::{Attach, HOOKS, Stage, tracepoints},
};

use crate::{error::EnvError, system::netns::Netns};

/// The main object (tracepoints, tcx, maps), built by build.rs.
static MAIN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
/// The netfilter object, loaded by [`netfilter`].
static NF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-nf"));

/// The tracepoints that report drops (`trace --port`'s only ones).
pub fn drop_tracepoints() -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .filter(|h| h.attach == Attach::TpBtf && h.point == tracer_common::point::DROP)
        .map(|h| h.name)
}

/// Where netfilter slots go in one namespace: which hooks, and whether a slot follows each
/// table there (naming the table a drop happened in) or the hook only gets its entry slot.
/// Every slot is a program run for every packet crossing the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NfPlan {
    pub hooks: &'static [u8],
    pub per_table: bool,
    /// A slot after the last table too ("passed every table"; a drop at conntrack's confirm
    /// comes after it).
    pub exit: bool,
}

/// A sandbox's namespace: the hooks envd's packets cross there (forwarded both ways), with a
/// slot after each table (E2B's slot firewall has nft rules without counters: the slots
/// name their table). A packet delivered or made locally there (a missing DNAT, the
/// namespace's own RST) is still seen by tcx, the drop and reset tracepoints, and named by
/// rule counters; the namespace's own traffic pays nothing for those hooks.
pub const SANDBOX_PLAN: NfPlan = NfPlan {
    hooks: &[hook::PRE_ROUTING, hook::FORWARD, hook::POST_ROUTING],
    per_table: true,
    exit: false,
};
/// The orchestrator's namespace: envd's packets are made and delivered there, never
/// forwarded, while every sandbox's own traffic crosses it: an entry slot per hook it uses
/// (which hook), and rule counters name the table and rule.
pub const HOST_PLAN: NfPlan = NfPlan {
    hooks: &[
        hook::PRE_ROUTING,
        hook::LOCAL_IN,
        hook::LOCAL_OUT,
        hook::POST_ROUTING,
    ],
    per_table: false,
    exit: false,
};
/// One namespace for both sides (a setup without a host side of its own): everything.
pub const ALL_PLAN: NfPlan = NfPlan {
    hooks: &[
        hook::PRE_ROUTING,
        hook::LOCAL_IN,
        hook::FORWARD,
        hook::LOCAL_OUT,
        hook::POST_ROUTING,
    ],
    per_table: true,
    exit: true,
};

/// What the kernel filter lets through.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    /// Namespace inodes; empty = every namespace.
    pub netns: Vec<u32>,
    /// Addresses; empty = any address.
    pub addrs: Vec<Ipv4Addr>,
    /// Size of the event ring buffer in bytes (None: the object's 4 MiB).
    pub ring_bytes: Option<u32>,
    /// The watcher's mode: detection programs match any address; the path programs only
    /// `addrs` (empty: none until a zoom-in adds some).
    pub detect_any_addr: bool,
    /// Deep mode: packet bytes, skb and conntrack facts, the kernel stack at a drop.
    pub deep: bool,
}

/// Loaded programs and their attachments.
pub struct Programs {
    ebpf: Ebpf,
    /// Netfilter programs by slot (`nf_slotN`), and `nf_entry`: slot 0 where packets of ours
    /// arrive followed (every hook but OUTPUT).
    nf_programs: Vec<OwnedFd>,
    nf_entry: Option<OwnedFd>,
    /// Netfilter links, per namespace inode.
    nf_links: HashMap<u32, Vec<OwnedFd>>,
    /// Slots attached, per namespace and hook.
    nf_slots: NfLayout,
    /// Tracepoint links, by tracepoint name.
    tp_links: HashMap<&'static str, BtfTracePointLinkId>,
    /// The program attached to a tracepoint when it is not the one named after it (an older
    /// kernel's form of the tracepoint passes fewer arguments).
    variants: HashMap<&'static str, &'static str>,
    /// What the older forms of tracepoints lose here, one sentence each.
    pub degraded: Vec<String>,
    /// tcx links, by (namespace inode, ifindex).
    tcx_links: HashMap<(u32, u32), Vec<(&'static str, SchedClassifierLinkId)>>,
    /// The kernel's BTF, to load tracepoint programs; released once everything is loaded
    /// (tens of MB a long-running watcher has no use for).
    btf: Option<aya::Btf>,
    /// Time spent attaching, for reports and benchmarks.
    pub attach_time: std::time::Duration,
}

impl Programs {
    /// Loads the main object, writes the filter and the kernel's struct offsets.
    pub fn load(offsets: Offsets, filter: &Filter) -> Result<Self> {
        let mut programs = Self::open(filter)?;
        programs.configure(offsets, filter)?;
        Ok(programs)
    }

    /// Loads the main object and the address/namespace sets, without the configuration:
    /// until [`Programs::configure`] the programs return at once, so they can be attached while
    /// the offsets are still being read from BTF.
    pub fn open(filter: &Filter) -> Result<Self> {
        if filter.ports.is_empty() || filter.ports.len() > MAX_PORTS {
            return Err(EnvError::Usage(format!(
                "between 1 and {MAX_PORTS} ports can be followed (--port)"
            ))
            .into());
        }
        let btf = aya::Btf::parse_file(btf::vmlinux_path(), aya::Endianness::default())
            .map_err(|e| EnvError::NoBtf(e.to_string()))?;
        let mut loader = EbpfLoader::new();
        loader.btf(&btf);
        if let Some(bytes) = filter.ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let ebpf = loader
            .load(MAIN_OBJ)
            .map_err(|e| EnvError::from_load(&e.to_string()))?;
        let mut programs = Self {
            ebpf,
            nf_programs: Vec::new(),
            nf_entry: None,
            nf_links: HashMap::new(),
            nf_slots: NfLayout::default(),
            tp_links: HashMap::new(),
            tcx_links: HashMap::new(),
            variants: HashMap::new(),
            degraded: Vec::new(),
            btf: Some(btf),
            attach_time: Default::default(),
        };
        for ns in &filter.netns {
            programs.add_netns(*ns)?;
        }
        for a in &filter.addrs {
            programs.add_addr(*a)?;
        }
        Ok(programs)
    }

    /// The older form of tracepoint `name` (its program, what is lost), from the hook table.
    fn older_form(name: &str) -> Option<(&'static str, &'static str)> {
        let h = tracer_common::hooks::hook(name)?;
        h.older.map(|o| (o.program, o.lost))
    }

    fn program_of(&self, tracepoint: &'static str) -> &'static str {
        self.variants.get(tracepoint).copied().unwrap_or(tracepoint)
    }

    /// Writes the configuration (ports, flags, offsets): from here on the programs report.
    pub fn configure(&mut self, offsets: Offsets, filter: &Filter) -> Result<()> {
        let mut cfg = Config {
            off: offsets,
            ..Default::default()
        };
        for (slot, port) in cfg.ports.iter_mut().zip(&filter.ports) {
            *slot = *port;
        }
        if filter.netns.is_empty() {
            cfg.flags |= CFG_ANY_NETNS;
        }
        if filter.detect_any_addr {
            cfg.flags |= CFG_DETECT_ANY_ADDR;
        } else if filter.addrs.is_empty() {
            cfg.flags |= CFG_ANY_ADDR;
        }
        if filter.deep {
            cfg.flags |= CFG_DEEP;
        }
        let mut config: Array<_, Config> = Array::try_from(self.map_mut("CONFIG")?)?;
        config.set(0, &cfg, 0).context("write CONFIG")?;
        Ok(())
    }

    /// Follows packets in one more namespace (a watcher adds sandboxes as they appear).
    pub fn add_netns(&mut self, inode: u32) -> Result<()> {
        let mut m: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(self.map_mut("NETNS")?)?;
        m.insert(&inode, &1, 0).context("update NETNS")
    }

    /// Follows packets to or from one more address.
    pub fn add_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        let mut m: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(self.map_mut("ADDRS")?)?;
        m.insert(&u32::from_ne_bytes(addr.octets()), &1, 0)
            .context("update ADDRS")
    }

    /// Releases the kernel's BTF: every program the caller will attach is loaded already.
    pub fn release_btf(&mut self) {
        self.btf = None;
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// Loads and attaches tracepoint programs (tp_btf: typed, no tracefs needed); ones
    /// already attached stay as they are.
    pub fn attach_tracepoints(&mut self, names: impl IntoIterator<Item = &'static str>) -> Result<()> {
        let start = Instant::now();
        for name in names {
            if self.tp_links.contains_key(name) {
                continue;
            }
            self.load_tracepoint(name)?;
            let program = self.program_of(name);
            let prog: &mut BtfTracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or_else(|| anyhow!("program {program} missing"))?
                .try_into()?;
            let link = prog
                .attach()
                .map_err(|e| EnvError::from_program(name, &format!("{e:#}")))?;
            self.tp_links.insert(name, link);
        }
        self.attach_time += start.elapsed();
        Ok(())
    }

    /// Loads the program for tracepoint `name` unless loaded. An older kernel's form of a
    /// tracepoint passes fewer arguments: the verifier refuses the newer program, and the one
    /// that reads the older form is loaded instead (found by trying; what it loses is noted
    /// in `degraded`).
    fn load_tracepoint(&mut self, name: &'static str) -> Result<()> {
        // Test hook: load the older forms as a kernel before 6.3/6.10 would.
        #[cfg(feature = "test-hooks")]
        if std::env::var_os("TRACER_TEST_OLDER_TRACEPOINTS").is_some()
            && !self.variants.contains_key(name)
            && let Some((older, lost)) = Self::older_form(name)
        {
            self.variants.insert(name, older);
            self.degraded.push(format!(
                "{name} passes fewer arguments here: traces go without {lost}"
            ));
        }
        let program = self.program_of(name);
        let btf = self.btf.as_ref();
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing"))?
            .try_into()?;
        if prog.fd().is_ok() {
            return Ok(());
        }
        let btf = btf.ok_or_else(|| anyhow!("{name}: loaded after the kernel's BTF was released"))?;
        let Err(e) = prog.load(name, btf) else {
            return Ok(());
        };
        match Self::older_form(name).filter(|(older, _)| *older != program) {
            Some((older, lost)) => {
                self.variants.insert(name, older);
                self.degraded.push(format!(
                    "{name} passes fewer arguments here: traces go without {lost}"
                ));
                self.load_tracepoint(name)
            }
            None => Err(EnvError::from_program(name, &format!("{e:#}")).into()),
        }
    }

    /// `tracer check`: loads (never attaches) every program the tracer has, each tracepoint
    /// program in the form this kernel's verifier takes: (program, the form loaded or the
    /// kernel's refusal). Nothing is changed on the host; the programs go with `self`.
    pub fn try_load_all(&mut self) -> Vec<(&'static str, Result<&'static str, String>)> {
        let mut out = Vec::new();
        for h in HOOKS {
            let r = match h.attach {
                Attach::TpBtf => self.load_tracepoint(h.name).map(|()| self.program_of(h.name)),
                Attach::Tcx { .. } => self.loaded_tcx(h.name).map(|_| h.name),
                Attach::Netfilter => self.load_netfilter_now().map(|()| "netfilter slots"),
            };
            let name = match h.attach {
                Attach::Netfilter => "netfilter slots",
                _ => h.name,
            };
            out.push((name, r.map_err(|e| format!("{e:#}"))));
        }
        out
    }

    /// Loads (without attaching) the programs a zoom-in attaches: the per-packet tracepoints
    /// and tcx, so that attaching them later only creates links.
    pub fn load_path_programs(&mut self) -> Result<()> {
        for name in tracepoints(Some(Stage::Zoom)) {
            self.load_tracepoint(name)?;
        }
        for h in HOOKS.iter().filter(|h| matches!(h.attach, Attach::Tcx { .. })) {
            self.loaded_tcx(h.name)?;
        }
        Ok(())
    }

    /// The tcx program `name`, loaded (once).
    fn loaded_tcx(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| EnvError::from_program(name, &format!("{e:#}")))?;
        }
        Ok(prog)
    }

    /// Detaches tracepoint programs (the programs stay loaded for the next attach).
    pub fn detach_tracepoints(&mut self, names: impl IntoIterator<Item = &'static str>) -> Result<()> {
        for name in names {
            let Some(link) = self.tp_links.remove(name) else {
                continue;
            };
            let prog: &mut BtfTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            prog.detach(link)?;
        }
        Ok(())
    }

    /// Attaches tcx ingress and egress to device `ifindex` of namespace `ns`.
    pub fn attach_tcx(&mut self, ns: &Netns, ifindex: u32) -> Result<()> {
        let start = Instant::now();
        if self.tcx_links.contains_key(&(ns.inode, ifindex)) {
            return Ok(());
        }
        let mut links = Vec::new();
        let tcx = HOOKS.iter().filter_map(|h| match h.attach {
            Attach::Tcx { ingress: true } => Some((h.name, TcAttachType::Ingress)),
            Attach::Tcx { ingress: false } => Some((h.name, TcAttachType::Egress)),
            _ => None,
        });
        for (name, dir) in tcx {
            let prog = self.loaded_tcx(name)?;
            // tcx attaches in the caller's namespace: enter, attach, return.
            let _inside = ns.enter()?;
            let attached = prog
                .attach(
                    aya::programs::NetworkInterface::Index(ifindex),
                    TcAttach::Tcx {
                        attach_type: dir,
                        order: LinkOrder::default(),
                    },
                )
                .map_err(|e| EnvError::from_program(name, &format!("{e:#}")))
                .with_context(|| format!("attach {name} to ifindex {ifindex} in {}", ns.label()));
            match attached {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    // Half attached is not attached: the ingress link goes too.
                    self.tcx_links.insert((ns.inode, ifindex), links);
                    let _ = self.detach_tcx(ns.inode, ifindex);
                    return Err(e);
                }
            }
        }
        self.tcx_links.insert((ns.inode, ifindex), links);
        self.attach_time += start.elapsed();
        Ok(())
    }

    /// Detaches tcx from device `ifindex` of namespace `inode` (a device that is gone
    /// already took its links with it).
    pub fn detach_tcx(&mut self, inode: u32, ifindex: u32) -> Result<()> {
        for (name, link) in self.tcx_links.remove(&(inode, ifindex)).unwrap_or_default() {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            let _ = prog.detach(link);
        }
        Ok(())
    }

    /// Detaches every netfilter slot of namespace `inode`.
    pub fn detach_netfilter(&mut self, inode: u32) {
        self.nf_links.remove(&inode);
        self.nf_slots.0.retain(|(ns, _), _| *ns != inode);
    }

    /// Stops following packets in a namespace.
    pub fn remove_netns(&mut self, inode: u32) -> Result<()> {
        let mut m: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(self.map_mut("NETNS")?)?;
        match m.remove(&inode) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("update NETNS"),
        }
    }

    /// Stops following packets to or from an address.
    pub fn remove_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        let mut m: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(self.map_mut("ADDRS")?)?;
        match m.remove(&u32::from_ne_bytes(addr.octets())) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("update ADDRS"),
        }
    }

    /// Attaches the netfilter programs at the hooks of namespace `ns` that `plan` names: at
    /// the entry, and with `per_table` at the exit and right after each priority at which a
    /// hook function exists there (`present[hook]`: the tables and chains of the namespace's
    /// rulesets). Every slot is a program run per packet, also for traffic that is not
    /// followed, so slots only go where they tell something apart.
    pub fn attach_netfilter(
        &mut self,
        ns: &Netns,
        present: &[Vec<i32>; hook::COUNT],
        plan: NfPlan,
    ) -> Result<()> {
        let start = Instant::now();
        if self.nf_programs.is_empty() {
            self.load_netfilter()?;
        }
        let mut links = Vec::new();
        {
            let _inside = ns.enter()?;
            for &hooknum in plan.hooks {
                let mut slots = if plan.per_table {
                    choose_slots(hooknum, &present[hooknum as usize])
                } else {
                    vec![0]
                };
                if !plan.exit && slots.len() > 1 {
                    slots.pop();
                }
                let mut placed = Vec::with_capacity(slots.len());
                for &slot in &slots {
                    let prog = match (slot, &self.nf_entry) {
                        // Locally made packets first appear at OUTPUT: its entry matches contents.
                        (0, Some(entry)) if hooknum != hook::LOCAL_OUT => entry,
                        _ => &self.nf_programs[slot as usize],
                    };
                    let (link, prio) = attach_slot(prog, hooknum, slot, ns)?;
                    links.push(link);
                    placed.push((slot, prio));
                }
                self.nf_slots.0.insert((ns.inode, hooknum), placed);
            }
        }
        self.nf_links.insert(ns.inode, links);
        self.attach_time += start.elapsed();
        Ok(())
    }

    /// Where the netfilter slots are, per namespace and hook.
    pub fn nf_layout(&self) -> &NfLayout {
        &self.nf_slots
    }

    /// Loads the netfilter programs now (they are otherwise loaded at their first attach);
    /// needed before the event ring is taken, since they are linked to it by name.
    pub fn load_netfilter_now(&mut self) -> Result<()> {
        if self.nf_programs.is_empty() {
            self.load_netfilter()?;
        }
        Ok(())
    }

    fn load_netfilter(&mut self) -> Result<()> {
        let fds = self.map_fds()?;
        let programs = netfilter::link_programs(NF_OBJ, &fds)?;
        let mut slots: Vec<(usize, OwnedFd)> = Vec::new();
        for prog in &programs {
            let fd =
                netfilter::load(prog).map_err(|e| EnvError::from_program("netfilter", &format!("{e:#}")))?;
            match prog.name.strip_prefix("nf_slot").and_then(|n| n.parse().ok()) {
                Some(slot) => slots.push((slot, fd)),
                None if prog.name == "nf_entry" => self.nf_entry = Some(fd),
                None => return Err(anyhow!("unexpected netfilter program {}", prog.name)),
            }
        }
        slots.sort_by_key(|(s, _)| *s);
        if slots.iter().enumerate().any(|(i, (s, _))| i != *s) || slots.len() != NF_SLOT_PRIORITIES.len() {
            return Err(anyhow!("the netfilter object does not hold one program per slot"));
        }
        self.nf_programs = slots.into_iter().map(|(_, fd)| fd).collect();
        Ok(())
    }

    /// Raw fds of the main object's maps, by name, for the netfilter loader.
    fn map_fds(&self) -> Result<HashMap<String, RawFd>> {
        let mut fds = HashMap::new();
        for (name, map) in self.ebpf.maps() {
            fds.insert(name.to_string(), map_data(map)?.fd().as_fd().as_raw_fd());
        }
        Ok(fds)
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Per program: (name, runs, run time in ns) as the kernel counts them while
    /// `kernel.bpf_stats_enabled=1` (zeros otherwise). Netfilter slots are `nf_slotN`.
    pub fn run_stats(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<(String, u64, u64)> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((
                    name.to_string(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ))
            })
            .collect();
        let named = self
            .nf_programs
            .iter()
            .enumerate()
            .map(|(i, fd)| (format!("nf_slot{i}"), fd))
            .chain(self.nf_entry.iter().map(|fd| ("nf_entry".to_string(), fd)));
        let nf: HashMap<u32, String> = named
            .filter_map(|(name, fd)| Some((netfilter::prog_id(fd.as_fd()).ok()?, name)))
            .collect();
        if !nf.is_empty() {
            for info in aya::programs::loaded_programs().flatten() {
                if let Some(name) = nf.get(&info.id()) {
                    out.push((name.clone(), info.run_count(), info.run_time().as_nanos() as u64));
                }
            }
        }
        out
    }

    /// Events the kernel could not queue because the ring buffer was full.
    /// The kernel stack recorded under `id` (deep mode's drops), innermost frame first.
    pub fn stack(&self, id: u32) -> Result<Vec<u64>> {
        let map = self
            .ebpf
            .map("STACKS")
            .ok_or_else(|| anyhow!("map STACKS missing"))?;
        let stacks = aya::maps::StackTraceMap::try_from(map)?;
        let trace = stacks.get(&id, 0)?;
        Ok(trace.frames().iter().map(|f| f.ip).collect())
    }

    pub fn lost_events(&self) -> Result<u64> {
        let map = self.ebpf.map("LOST").ok_or_else(|| anyhow!("map LOST missing"))?;
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(lost.get(&0, 0)?.iter().sum())
    }
}

/// How far from its planned priority a slot may move when that one is taken (another tracer
/// at the same priority, or a link of an earlier run still being released): the standard
/// tables are 50 to 100 apart, so the slot stays between the same two.
const MAX_SHIFT: i32 = 16;

/// Attaches one slot's program at `hooknum`, at its planned priority or, when that is taken
/// (EBUSY: the kernel allows one BPF program per namespace, hook and priority), at the next
/// free one inward. Returns the link and the priority used.
fn attach_slot(prog: &OwnedFd, hooknum: u8, slot: u8, ns: &Netns) -> Result<(OwnedFd, i32)> {
    let planned = NF_SLOT_PRIORITIES[slot as usize];
    // The last slot sits just below i32::MAX: it moves down; the others move up.
    let step = if planned > i32::MAX - MAX_SHIFT - 2 { -1 } else { 1 };
    let mut last = None;
    for shift in 0..=MAX_SHIFT {
        let prio = planned + step * shift;
        match netfilter::attach(prog.as_fd(), hooknum, prio) {
            Ok(link) => return Ok((link, prio)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => {
                return Err(EnvError::from_program("netfilter", &format!("BPF_LINK_CREATE: {e}")).into());
            }
        }
    }
    Err(EnvError::Usage(format!(
        "every netfilter priority from {planned} to {} at hook {hooknum} in {} is taken by other BPF programs ({}); is another tracer attached there?",
        planned + step * MAX_SHIFT,
        ns.label(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
    .into())
}

/// The netfilter slots attached, per (namespace inode, hook number): (slot, priority used).
#[derive(Debug, Clone, Default)]
pub struct NfLayout(HashMap<(u32, u8), Vec<(u8, i32)>>);

impl NfLayout {
    /// Priority at which `slot` was attached at `hook` in namespace `netns`.
    pub fn priority(&self, netns: u32, hooknum: u8, slot: u8) -> Option<i32> {
        let slots = self.0.get(&(netns, hooknum))?;
        slots.iter().find(|(s, _)| *s == slot).map(|(_, p)| *p)
    }

    /// Priority of the slot attached after `slot` at `hook` in namespace `netns` (i32::MAX
    /// after the last one): a drop after `slot` happened between the two.
    pub fn window_end(&self, netns: u32, hooknum: u8, slot: u8) -> Option<i32> {
        let slots = self.0.get(&(netns, hooknum))?;
        Some(
            slots
                .iter()
                .find(|(s, _)| *s > slot)
                .map(|(_, p)| *p)
                .unwrap_or(i32::MAX),
        )
    }
}

/// The slots for one hook: entry and exit, and the first candidate slot after each present
/// priority (see `tracer_common::NF_HOOK_SLOTS`).
pub fn choose_slots(hooknum: u8, present: &[i32]) -> Vec<u8> {
    let candidates = NF_HOOK_SLOTS[hooknum as usize];
    let last = candidates[candidates.len() - 1];
    let mut slots = vec![0, last];
    for &p in present {
        if let Some(&s) = candidates.iter().find(|s| NF_SLOT_PRIORITIES[**s as usize] > p) {
            slots.push(s);
        }
    }
    slots.sort_unstable();
    slots.dedup();
    slots
}

fn map_data(map: &Map) -> Result<&MapData> {
    Ok(match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::RingBuf(m)
        | Map::StackTraceMap(m) => m,
        other => return Err(anyhow!("unexpected map type {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_right_after_the_priorities_present() {
        // PREROUTING with E2B's slot firewall (-150) and the nat table (-100).
        assert_eq!(choose_slots(0, &[-150, -100]), vec![0, 3, 4, 8]);
        // Nothing but conntrack.
        assert_eq!(choose_slots(0, &[-200]), vec![0, 2, 8]);
        // FORWARD with filter (0) and an nft chain at 10: slot 5 (1) between them, slot 6 (51)
        // after the chain.
        assert_eq!(choose_slots(2, &[0, 10]), vec![0, 5, 6, 8]);
        // A priority past every slot adds nothing.
        assert_eq!(choose_slots(4, &[i32::MAX]), vec![0, 8]);
    }

    #[test]
    fn netfilter_object_links_every_slot() {
        let fds: HashMap<String, RawFd> = [
            "EVENTS", "CONFIG", "NETNS", "ADDRS", "TRACKED", "LOST", "NF_SKIP", "HOT",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), 100 + i as RawFd))
        .collect();
        let progs = netfilter::link_programs(NF_OBJ, &fds).unwrap();
        let names: Vec<&str> = progs.iter().map(|p| p.name.as_str()).collect();
        // One per slot, and the entry slot of the hooks where packets arrive followed.
        assert_eq!(names.len(), NF_SLOT_PRIORITIES.len() + 1, "{names:?}");
        assert!(names.contains(&"nf_entry"), "{names:?}");
        for p in &progs {
            for (i, ins) in p.insns.iter().enumerate() {
                if ins.code == 0x85 && ins.regs >> 4 == 1 {
                    let target = i as i64 + 1 + ins.imm as i64;
                    assert!(
                        (0..p.insns.len() as i64).contains(&target),
                        "{}: call out of range",
                        p.name
                    );
                }
            }
            let map_refs = p
                .insns
                .iter()
                .filter(|i| i.code == 0x18 && i.regs >> 4 == 1)
                .count();
            assert!(map_refs > 0, "{} references no map", p.name);
        }
        // The hook table's netfilter programs are exactly these.
        let table = tracer_common::hooks::hook("netfilter").unwrap();
        let mut want: Vec<&str> = table.programs.to_vec();
        let mut got = names.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
    }

    /// Every program of the hook table is in the kernel objects, and every program of the
    /// main object is in the table: a hook is its program, its decoder and its row.
    #[test]
    fn the_hook_table_and_the_objects_agree() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        // Loading needs privileges: the programs are the global functions outside `.text`.
        let obj = object::File::parse(MAIN_OBJ).unwrap();
        let mut in_object: Vec<&str> = obj
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.is_global())
            .filter(|s| {
                s.section_index()
                    .and_then(|i| obj.section_by_index(i).ok())
                    .and_then(|sec| sec.name().ok().map(|n| n != ".text"))
                    .unwrap_or(false)
            })
            .filter_map(|s| s.name().ok())
            .collect();
        in_object.sort_unstable();
        let mut in_table: Vec<&str> = tracer_common::hooks::HOOKS
            .iter()
            .filter(|h| h.attach != tracer_common::hooks::Attach::Netfilter)
            .flat_map(|h| h.programs.iter().copied())
            .collect();
        in_table.sort_unstable();
        assert_eq!(in_object, in_table);
    }
}
