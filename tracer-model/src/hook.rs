//! Netfilter hooks and the priorities of the standard tables at them: the one place both are
//! defined (the kernel programs only know hook numbers and slot priorities).
use serde::{Deserialize, Serialize};
use tracer_common::hook;

/// An IPv4 netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub const ALL: [Hook; hook::COUNT] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ];

    /// From the kernel's hook number (`enum nf_inet_hooks`).
    pub fn from_num(n: u8) -> Option<Self> {
        Self::ALL.get(n as usize).copied()
    }

    /// The kernel's hook number.
    pub fn num(self) -> u8 {
        self as u8
    }

    /// As iptables names the built-in chain.
    pub fn name(self) -> &'static str {
        match self {
            Self::Prerouting => "PREROUTING",
            Self::Input => "INPUT",
            Self::Forward => "FORWARD",
            Self::Output => "OUTPUT",
            Self::Postrouting => "POSTROUTING",
        }
    }

    /// As nft names the hook.
    pub fn nft_name(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Output => "output",
            Self::Postrouting => "postrouting",
        }
    }

    /// From an iptables built-in chain name.
    pub fn from_chain(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    /// From an nft hook name.
    pub fn from_nft(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.nft_name() == name)
    }
}

/// Priority of iptables' raw table (and of nft's `raw` keyword).
pub const PRIO_RAW: i32 = -300;
pub const PRIO_CONNTRACK: i32 = -200;
pub const PRIO_MANGLE: i32 = -150;
/// Destination NAT (before routing).
pub const PRIO_NAT_DST: i32 = -100;
pub const PRIO_FILTER: i32 = 0;
pub const PRIO_SECURITY: i32 = 50;
/// Source NAT (after routing).
pub const PRIO_NAT_SRC: i32 = 100;
pub const PRIO_CONNTRACK_CONFIRM: i32 = i32::MAX;

/// The standard hook functions at each hook, with their priority: iptables' tables and
/// conntrack (`include/uapi/linux/netfilter_ipv4.h`).
pub const STANDARD: &[(&str, i32, &[Hook])] = &[
    ("raw", PRIO_RAW, &[Hook::Prerouting, Hook::Output]),
    ("conntrack", PRIO_CONNTRACK, &[Hook::Prerouting, Hook::Output]),
    ("mangle", PRIO_MANGLE, &Hook::ALL),
    ("nat", PRIO_NAT_DST, &[Hook::Prerouting, Hook::Output]),
    ("filter", PRIO_FILTER, &[Hook::Input, Hook::Forward, Hook::Output]),
    (
        "security",
        PRIO_SECURITY,
        &[Hook::Input, Hook::Forward, Hook::Output],
    ),
    ("nat", PRIO_NAT_SRC, &[Hook::Input, Hook::Postrouting]),
    (
        "conntrack-confirm",
        PRIO_CONNTRACK_CONFIRM,
        &[Hook::Input, Hook::Postrouting],
    ),
];

/// The priority of iptables table `table` at `hook`, when the table has a chain there.
pub fn iptables_priority(table: &str, hook: Hook) -> Option<i32> {
    STANDARD
        .iter()
        .find(|(name, _, hooks)| *name == table && hooks.contains(&hook))
        .map(|(_, prio, _)| *prio)
}

/// Standard tables of `hook` with a priority in the window (lo, hi): after `lo`, before `hi`
/// (an `hi` of i32::MAX is open).
pub fn tables_in_window(hook: Hook, (lo, hi): (i32, i32)) -> Vec<&'static str> {
    STANDARD
        .iter()
        .filter(|(_, prio, hooks)| hooks.contains(&hook) && *prio > lo && (*prio < hi || hi == i32::MAX))
        .map(|(name, _, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_priorities() {
        for h in Hook::ALL {
            assert_eq!(Hook::from_num(h.num()), Some(h));
            assert_eq!(Hook::from_chain(h.name()), Some(h));
            assert_eq!(Hook::from_nft(h.nft_name()), Some(h));
        }
        assert_eq!(Hook::from_num(5), None);
        assert_eq!(iptables_priority("nat", Hook::Prerouting), Some(-100));
        assert_eq!(iptables_priority("nat", Hook::Postrouting), Some(100));
        assert_eq!(iptables_priority("filter", Hook::Prerouting), None);
        assert_eq!(tables_in_window(Hook::Forward, (1, 51)), vec!["security"]);
    }
}
