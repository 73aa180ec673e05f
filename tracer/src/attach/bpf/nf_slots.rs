//! The netfilter slots: where they go in a namespace ([`NfPlan`]), which slots a hook gets
//! ([`choose_slots`]), loading the netfilter object and attaching its programs
//! ([`Programs::attach_netfilter`]), and where they ended up ([`NfLayout`]).
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    time::Instant,
};

use anyhow::{Result, anyhow};
use aya::maps::{Map, MapData};
use tracer_common::{NF_HOOK_SLOTS, NF_SLOT_PRIORITIES, hook};

use super::{Programs, netfilter};
use crate::{error::EnvError, system::netns::Netns};

/// The netfilter object, loaded by [`netfilter`].
static NF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-nf"));

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

impl Programs {
    /// Detaches every netfilter slot of namespace `inode`.
    pub fn detach_netfilter(&mut self, inode: u32) {
        self.nf_links.remove(&inode);
        self.nf_slots.0.retain(|(ns, _), _| *ns != inode);
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
}
