//! Everything about firewall rulesets, in one place: reading them (`iptables-save -c` of both
//! backends and `nft -j list ruleset`, once per namespace per snapshot, every command with a
//! timeout), one rule model for both, the evaluator the doctor walks packets through, rule
//! naming by counter differences, the DNAT discovery reads, and `--nft-trace`. No other
//! module runs iptables or nft or reads their output.
pub mod eval;
pub mod iptables;
pub mod model;
pub mod naming;
pub mod nat;
pub mod nft;
pub mod nftrace;

use std::{fs, io};

use tracer_model::hook::{Hook, STANDARD};

use crate::{
    system::netns::Netns,
    system::tools::{self, CmdError},
};
pub use eval::{Ct, Hit, Outcome, Packet, Port, at_hook, nat_at_hook};
pub use iptables::IptSave;
pub use model::{Action, Backend, Chain, Cond, HookPoint, Rule, Source, Table, flags};
pub use nat::Dnat;
pub use nft::NftRuleset;

/// The rulesets of one namespace at one moment.
#[derive(Debug, Clone, Default)]
pub struct Rulesets {
    /// One dump per iptables backend in use.
    pub ipt: Vec<(Backend, IptSave)>,
    /// Native nftables (including the tables iptables-nft keeps in nf_tables).
    pub nft: Option<NftRuleset>,
    /// What the rules were read with ("iptables-nft-save -c", "nft -j list ruleset").
    pub sources: Vec<String>,
    /// Tools that failed, one sentence each (a missing tool is not an error).
    pub errors: Vec<String>,
}

impl Rulesets {
    /// Reads the rulesets of `ns`: iptables-nft-save, iptables-legacy-save (only when legacy
    /// tables are loaded there: saves a run per namespace on nft hosts), and nft.
    pub fn read(ns: &Netns) -> Self {
        let mut r = Self::default();
        for backend in [Backend::Nft, Backend::Legacy] {
            if backend == Backend::Legacy && !legacy_loaded(ns) {
                continue;
            }
            let command = backend.save_command();
            match run_tool(ns, command, &["-c"]).map(|t| t.map(|t| IptSave::parse(&t))) {
                Ok(Some(Ok(save))) => {
                    r.ipt.push((backend, save));
                    r.sources.push(format!("{command} -c"));
                }
                Ok(Some(Err(e))) => r.errors.push(format!("{command}: {e:#}")),
                Ok(None) => {}
                Err(e) => r.errors.push(e),
            }
        }
        match run_tool(ns, "nft", &["-j", "list", "ruleset"]).map(|t| t.map(|t| NftRuleset::parse(&t))) {
            Ok(Some(Ok(set))) => {
                r.nft = Some(set);
                r.sources.push("nft -j list ruleset".into());
            }
            Ok(Some(Err(e))) => r.errors.push(format!("nft: {e:#}")),
            Ok(None) => {}
            Err(e) => r.errors.push(e),
        }
        r
    }

    /// Every table in the rule model: iptables (each backend), then the native nft tables
    /// that iptables-nft does not own.
    pub fn tables(&self) -> Vec<Table> {
        let mut out: Vec<Table> = self.ipt.iter().flat_map(|(b, s)| s.tables(*b)).collect();
        if let Some(set) = &self.nft {
            let owned: Vec<String> = self
                .ipt
                .iter()
                .filter(|(b, _)| *b == Backend::Nft)
                .flat_map(|(_, s)| s.tables.iter().map(|t| t.name.clone()))
                .collect();
            out.extend(set.tables(&owned));
        }
        out
    }

    /// The DNAT of the namespace (discovery's guest and host IP).
    pub fn dnat(&self) -> Option<Dnat> {
        nat::dnat_of(&self.tables())
    }

    /// E2B's datapath, as the NAT rules say (v1: iptables, v2: nft slot-firewall chains).
    pub fn datapath(&self) -> Option<nat::Datapath> {
        nat::datapath_of(&self.tables())
    }

    /// Priorities at which hook functions exist, per hook number: the nft base chains
    /// (iptables-nft tables are nft tables too), the legacy iptables tables, and conntrack,
    /// which may be loaded without any rule.
    pub fn hook_priorities(&self) -> [Vec<i32>; tracer_common::hook::COUNT] {
        let mut out: [Vec<i32>; tracer_common::hook::COUNT] = Default::default();
        let mut push = |hook: Hook, prio: i32| out[hook as usize].push(prio);
        for (name, prio, hooks) in STANDARD {
            if *name == "conntrack" {
                hooks.iter().for_each(|h| push(*h, *prio));
            }
        }
        for c in self.nft.iter().flat_map(|n| n.base_chains()) {
            if let (Some(h), Some(p)) = (c.hook.as_deref().and_then(Hook::from_nft), c.priority) {
                push(h, p);
            }
        }
        for (_, save) in self.ipt.iter().filter(|(b, _)| *b == Backend::Legacy) {
            for table in &save.tables {
                for (name, prio, hooks) in STANDARD {
                    if *name == table.name {
                        hooks.iter().for_each(|h| push(*h, *prio));
                    }
                }
            }
        }
        out
    }
}

/// Runs a ruleset tool in `ns`: Ok(None) when it is not installed or refuses (e.g. no
/// nf_tables in this kernel); Err when it hung or could not run.
fn run_tool(ns: &Netns, program: &str, args: &[&str]) -> Result<Option<String>, String> {
    let mut command = ns.command(program);
    command.args(args);
    match tools::run(&mut command, None, tools::TOOL_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(Some(tools::text(&out.stdout))),
        Ok(_) | Err(CmdError::NotFound(_)) => Ok(None),
        Err(e) => Err(format!("{program} in {}: {e}", ns.label())),
    }
}

/// Whether legacy iptables has any table in `ns`. /proc/thread-self/net follows the thread's
/// namespace. When unsure, says yes.
fn legacy_loaded(ns: &Netns) -> bool {
    let Ok(_inside) = ns.enter() else { return true };
    match fs::read_to_string("/proc/thread-self/net/ip_tables_names") {
        Ok(names) => names.lines().any(|l| !l.trim().is_empty()),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}
