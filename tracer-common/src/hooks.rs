//! The hook table: every attach point of the tracer, described once. Loading, attaching, the
//! watcher's detection and zoom-in sets, `tracer check`'s feature table and load trial, the
//! bench's and bpf_stats' program labels, and the tests' helpers are all derived from it.
//! Adding a hook is its kernel program (`tracer-ebpf`), its decoder (`tracer`'s
//! `events::decode`, by `point`) and one row here.
use crate::point;

/// How a hook's program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A typed tracepoint (tp_btf), node-wide.
    TpBtf,
    /// tcx on a device of the path.
    Tcx { ingress: bool },
    /// BPF netfilter links at the hooks of a namespace, one program per priority slot.
    Netfilter,
}

/// Where an attachment applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Node,
    Namespace,
    Device,
}

/// What a hook is for (and so what its absence costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `trace --vm` and `watch` refuse to start without it.
    Path,
    /// Every mode that reports drops needs it (`trace --port` too).
    Drops,
    /// Without it a detail is lost; the trace runs.
    Detail,
}

/// When the watcher attaches it: node-wide from the start (rare events, filtered in the
/// kernel), or only while it zooms in on a failing sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Detect,
    Zoom,
}

/// An older form of a tracepoint with fewer arguments, and its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Older {
    /// How `tracer check` names it.
    pub label: &'static str,
    pub program: &'static str,
    pub args: usize,
    pub since: &'static str,
    /// What traces go without when it is used.
    pub lost: &'static str,
}

/// One attach point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// The attach point: the tracepoint's name, or the program's for tcx and netfilter.
    pub name: &'static str,
    /// The programs in the kernel object that attach here (a netfilter hook has one per
    /// slot, and an entry slot).
    pub programs: &'static [&'static str],
    pub attach: Attach,
    pub scope: Scope,
    /// The event kind its programs emit ([`point`]).
    pub point: u8,
    /// Tracepoint arguments the program reads (the feature probe); 0 for tcx and netfilter.
    pub args: usize,
    pub need: Need,
    /// The first Linux version that has it.
    pub since: &'static str,
    /// What it gives.
    pub what: &'static str,
    pub older: Option<Older>,
    pub stage: Stage,
}

impl Hook {
    /// The program that reads the newest form.
    pub fn program(&self) -> &'static str {
        self.programs[0]
    }
}

const fn tp(
    name: &'static str,
    pt: u8,
    args: usize,
    need: Need,
    since: &'static str,
    what: &'static str,
    stage: Stage,
) -> Hook {
    Hook {
        name,
        programs: &[],
        attach: Attach::TpBtf,
        scope: Scope::Node,
        point: pt,
        args,
        need,
        since,
        what,
        older: None,
        stage,
    }
}

pub const HOOKS: &[Hook] = &[
    Hook {
        programs: &["kfree_skb"],
        ..tp(
            "kfree_skb",
            point::DROP,
            3,
            Need::Drops,
            "5.17",
            "drops with their reason",
            Stage::Detect,
        )
    },
    Hook {
        programs: &["consume_skb", "consume_skb_nl"],
        older: Some(Older {
            label: "consume_skb (skb only)",
            program: "consume_skb_nl",
            args: 1,
            since: "3.0",
            lost: "the place a packet was freed normally, such as the tap's read (Linux 6.3+)",
        }),
        ..tp(
            "consume_skb",
            point::CONSUME,
            2,
            Need::Detail,
            "6.3",
            "the place a packet was freed normally (the tap's read)",
            Stage::Zoom,
        )
    },
    Hook {
        programs: &["net_dev_start_xmit"],
        ..tp(
            "net_dev_start_xmit",
            point::XMIT,
            2,
            Need::Path,
            "4.7",
            "packets handed to a device",
            Stage::Zoom,
        )
    },
    Hook {
        programs: &["netif_receive_skb"],
        ..tp(
            "netif_receive_skb",
            point::RECEIVE,
            1,
            Need::Path,
            "3.0",
            "packets entering a namespace's stack",
            Stage::Zoom,
        )
    },
    Hook {
        programs: &["inet_sock_set_state"],
        ..tp(
            "inet_sock_set_state",
            point::SOCK_STATE,
            3,
            Need::Path,
            "4.16",
            "the client socket's states",
            Stage::Detect,
        )
    },
    Hook {
        programs: &["tcp_send_reset", "tcp_send_reset_nr"],
        older: Some(Older {
            label: "tcp_send_reset (no reason)",
            program: "tcp_send_reset_nr",
            args: 2,
            since: "4.16",
            lost: "the reason of a RST the stack sends (Linux 6.10+)",
        }),
        ..tp(
            "tcp_send_reset",
            point::SEND_RESET,
            3,
            Need::Detail,
            "6.10",
            "the reason of a RST the stack sends",
            Stage::Detect,
        )
    },
    Hook {
        programs: &["tcp_receive_reset"],
        ..tp(
            "tcp_receive_reset",
            point::RECV_RESET,
            1,
            Need::Path,
            "4.16",
            "RSTs a socket receives",
            Stage::Detect,
        )
    },
    Hook {
        programs: &["fib_table_lookup"],
        ..tp(
            "fib_table_lookup",
            point::FIB_LOOKUP,
            4,
            Need::Path,
            "4.17",
            "route lookups",
            Stage::Zoom,
        )
    },
    Hook {
        programs: &["neigh_update"],
        ..tp(
            "neigh_update",
            point::NEIGH,
            5,
            Need::Path,
            "5.11",
            "neighbour (ARP) changes",
            Stage::Zoom,
        )
    },
    Hook {
        programs: &["neigh_timer_handler"],
        ..tp(
            "neigh_timer_handler",
            point::NEIGH,
            2,
            Need::Path,
            "5.11",
            "neighbour timers",
            Stage::Zoom,
        )
    },
    Hook {
        name: "tcx_ingress",
        programs: &["tcx_ingress"],
        attach: Attach::Tcx { ingress: true },
        scope: Scope::Device,
        point: point::TCX_INGRESS,
        args: 0,
        need: Need::Path,
        since: "6.6",
        what: "packets received by the path's devices, without changing their qdiscs",
        older: None,
        stage: Stage::Zoom,
    },
    Hook {
        name: "tcx_egress",
        programs: &["tcx_egress"],
        attach: Attach::Tcx { ingress: false },
        scope: Scope::Device,
        point: point::TCX_EGRESS,
        args: 0,
        need: Need::Path,
        since: "6.6",
        what: "packets sent by the path's devices, without changing their qdiscs",
        older: None,
        stage: Stage::Zoom,
    },
    Hook {
        name: "netfilter",
        programs: &[
            "nf_entry", "nf_slot0", "nf_slot1", "nf_slot2", "nf_slot3", "nf_slot4", "nf_slot5", "nf_slot6",
            "nf_slot7", "nf_slot8",
        ],
        attach: Attach::Netfilter,
        scope: Scope::Namespace,
        point: point::NETFILTER,
        args: 0,
        need: Need::Path,
        since: "6.4",
        what: "which netfilter hook and table a packet reached",
        older: None,
        stage: Stage::Zoom,
    },
];

/// The row of attach point `name`.
pub fn hook(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.name == name)
}

/// Tracepoints, by name: every one, or those of one watcher stage.
pub fn tracepoints(stage: Option<Stage>) -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .filter(move |h| h.attach == Attach::TpBtf && stage.is_none_or(|s| h.stage == s))
        .map(|h| h.name)
}

/// A program's name as the kernel keeps it (`bpf_prog_info.name`: 15 characters), which
/// bpf_stats and `bpftool prog` show.
pub fn kernel_name(program: &str) -> &str {
    &program[..program.len().min(15)]
}

/// Every program of the table, by the name the kernel keeps.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .flat_map(|h| h.programs.iter().map(|p| kernel_name(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_whole_and_names_are_unique() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert!(!h.programs.is_empty(), "{}", h.name);
            assert!(
                h.older.is_none_or(|o| h.programs.contains(&o.program)),
                "{}",
                h.name
            );
            assert_eq!(h.attach == Attach::TpBtf, h.args > 0, "{}", h.name);
            assert!(HOOKS[..i].iter().all(|x| x.name != h.name), "{}", h.name);
        }
        assert!(tracepoints(Some(Stage::Detect)).any(|t| t == "kfree_skb"));
        assert_eq!(kernel_name("neigh_timer_handler"), "neigh_timer_han");
    }
}
