//! Loading the kernel programs, attaching them where the path runs, and detaching.
//!
//! Every attachment is a BPF link held by an fd of this process (tp_btf, tcx, netfilter), so
//! whatever way the process ends (return, signal, panic, SIGKILL) the kernel detaches
//! everything when the fds close. Nothing is pinned.
pub mod btf;
pub mod features;
pub mod kallsyms;
pub mod netfilter;
mod nf_slots;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::fd::{AsFd as _, OwnedFd},
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
    CFG_ANY_ADDR, CFG_ANY_NETNS, CFG_DEEP, CFG_DETECT_ANY_ADDR, Config, MAX_PORTS, Offsets,
    hooks::{Attach, HOOKS, Stage, tracepoints},
};

use crate::{error::EnvError, system::netns::Netns};
pub use nf_slots::{ALL_PLAN, HOST_PLAN, NfLayout, NfPlan, SANDBOX_PLAN, choose_slots};

/// The main object (tracepoints, tcx, maps), built by build.rs.
static MAIN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// The tracepoints that report drops (`trace --port`'s only ones).
pub fn drop_tracepoints() -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .filter(|h| h.attach == Attach::TpBtf && h.point == tracer_common::point::DROP)
        .map(|h| h.name)
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
