//! One rule model for every ruleset the tracer reads: iptables dumps (both backends) and
//! native nftables. The evaluator walks packets through it, rule naming compares its
//! counters, discovery reads the DNAT from it.
use std::net::Ipv4Addr;

use crate::hook::Hook;
use serde::Serialize;

/// Which iptables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn save_command(self) -> &'static str {
        match self {
            Self::Nft => "iptables-nft-save",
            Self::Legacy => "iptables-legacy-save",
        }
    }
}

/// Where a chain hooks in. `Ingress` is netdev/inet ingress (before PREROUTING).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HookPoint {
    Ingress,
    /// netdev egress (after POSTROUTING, before the queue discipline).
    Egress,
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl HookPoint {
    pub fn from_nft(name: &str) -> Option<Self> {
        match name {
            "ingress" => Some(Self::Ingress),
            "egress" => Some(Self::Egress),
            other => Hook::from_nft(other).map(Self::from),
        }
    }

    /// The netfilter hook, None for ingress.
    pub fn hook(self) -> Option<Hook> {
        Some(match self {
            Self::Ingress | Self::Egress => return None,
            Self::Prerouting => Hook::Prerouting,
            Self::Input => Hook::Input,
            Self::Forward => Hook::Forward,
            Self::Output => Hook::Output,
            Self::Postrouting => Hook::Postrouting,
        })
    }

    /// The iptables built-in chain, None for ingress.
    pub fn ipt_chain(self) -> Option<&'static str> {
        self.hook().map(Hook::name)
    }
}

impl From<Hook> for HookPoint {
    fn from(h: Hook) -> Self {
        match h {
            Hook::Prerouting => Self::Prerouting,
            Hook::Input => Self::Input,
            Hook::Forward => Self::Forward,
            Hook::Output => Self::Output,
            Hook::Postrouting => Self::Postrouting,
        }
    }
}

pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ALL: u8 = 0x3f;
}

// ---------------------------------------------------------------------------------------------
// The rule model.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    InDev(Vec<String>),
    OutDev(Vec<String>),
    Src(Vec<(Ipv4Addr, u8)>),
    Dst(Vec<(Ipv4Addr, u8)>),
    /// Matches TCP or not.
    Tcp(bool),
    SPort(Vec<(u16, u16)>),
    DPort(Vec<(u16, u16)>),
    /// (flags & mask) == cmp.
    Flags {
        mask: u8,
        cmp: u8,
    },
    /// flags & any != 0.
    FlagsAny(u8),
    /// Conntrack states (NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED, ...), upper case.
    CtState(Vec<String>),
    /// (mark & mask) == value.
    Mark {
        value: u32,
        mask: u32,
    },
    /// Always true (comments, counters).
    True,
    /// Something the model cannot evaluate; the text says what.
    Unknown(String),
    Not(Box<Cond>),
}

impl Cond {
    /// A condition that always holds, or never does.
    pub fn always(b: bool) -> Self {
        if b {
            Self::True
        } else {
            Self::Not(Box::new(Self::True))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Reject,
    Return,
    Jump(String),
    Goto(String),
    Dnat(Option<Ipv4Addr>),
    Snat(Option<Ipv4Addr>),
    Masquerade,
    Redirect,
    /// Hands the packet elsewhere (NFQUEUE, TPROXY, a verdict map): it may not come back.
    Divert(String),
    /// Non-terminal, changes the packet or its conntrack (MARK, NOTRACK, CT zone, TTL ...).
    Set(Effect),
    /// Non-terminal, changes nothing (LOG, counter only ...).
    Continue,
}

/// What a non-terminal rule changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The skb mark (the value when the rule says it).
    Mark(Option<u32>),
    /// Conntrack is skipped: no entry, no NAT.
    Notrack,
    /// Conntrack in another zone.
    CtZone(Option<u16>),
    /// The IP TTL (set to the value, or changed otherwise).
    Ttl(Option<u8>),
    /// Anything else (CONNMARK, TOS, DSCP, TCPMSS ...), by name.
    Other(String),
}

impl Action {
    pub fn is_nat(&self) -> bool {
        matches!(
            self,
            Self::Dnat(_) | Self::Snat(_) | Self::Masquerade | Self::Redirect
        )
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub conds: Vec<Cond>,
    pub action: Action,
    /// As the tool prints it.
    pub text: String,
    /// nft rule handle.
    pub handle: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Chain {
    pub name: String,
    /// Base chains only.
    pub hook: Option<HookPoint>,
    pub priority: i32,
    pub is_nat: bool,
    /// DROP policy of a base chain.
    pub policy_drop: bool,
    /// netdev ingress chains on a device we cannot tell (nft 1.0.6 does not print it).
    pub device: Option<String>,
    pub rules: Vec<Rule>,
}

/// Which tool wrote a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Iptables(Backend),
    Nft,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Self::Iptables(Backend::Nft) => "iptables-nft",
            Self::Iptables(Backend::Legacy) => "iptables-legacy",
            Self::Nft => "nft",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Table {
    pub source: Source,
    /// nft family (ip, inet, netdev); "ip" for iptables.
    pub family: String,
    pub name: String,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

pub fn flag_bit(f: &str) -> u8 {
    match f {
        "fin" => flags::FIN,
        "syn" => flags::SYN,
        "rst" => flags::RST,
        "psh" => flags::PSH,
        "ack" => flags::ACK,
        "urg" => flags::URG,
        "all" => flags::ALL,
        _ => 0,
    }
}
