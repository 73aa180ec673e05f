//! The rule that dropped a packet, as rule naming found it (rule counters, or an nft trace).
//! It is found after the verdict placed the drop (hook, priority window, namespace) and is
//! carried beside the verdict, never written into it.

/// Table, chain and rule of a netfilter drop; each part only when it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RuleName {
    /// `filter` for iptables, `<family> <table>` for nft (`ip lab-fault`).
    pub table: Option<String>,
    pub chain: Option<String>,
    pub rule: Option<RuleText>,
    /// Why chain or rule are not known, or how they were found.
    pub note: Option<RuleNote>,
}

/// A rule, as the tool that wrote it prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleText {
    /// As iptables-save prints it: `-A FORWARD -i eth0 ... -j DROP`.
    Iptables(String),
    /// A built-in chain's policy: `-P FORWARD DROP`.
    Policy { chain: String, policy: String },
    /// As nft prints it, and its handle.
    Nft { text: String, handle: u64 },
    /// An nft base chain's policy.
    NftPolicy { chain: String, policy: String },
}

impl RuleText {
    /// `text # handle N` (as `nft -a` prints rules) → Nft; anything else is taken as is.
    pub fn from_nft_listing(s: &str) -> Self {
        match s.rsplit_once(" # handle ") {
            Some((text, h)) if h.trim().parse::<u64>().is_ok() => Self::Nft {
                text: text.trim().to_string(),
                handle: h.trim().parse().unwrap_or(0),
            },
            _ => Self::Nft {
                text: s.to_string(),
                handle: 0,
            },
        }
    }

    /// The rule as the reports print it.
    pub fn render(&self) -> String {
        match self {
            Self::Iptables(t) => t.clone(),
            Self::Policy { chain, policy } => format!("-P {chain} {policy}"),
            Self::Nft { text, handle } => format!("{text} # handle {handle}"),
            Self::NftPolicy { chain, policy } => format!("chain {chain} policy {policy}"),
        }
    }
}

/// An nft base chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NftChainRef {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleNote {
    /// One nft base chain at that place drops packets, but its rules have no counter.
    NoCounter(NftChainRef),
    /// Several nft chains at that place drop packets: `family table chain` each.
    OneOf(Vec<String>),
    /// Found by `--nft-trace`.
    NftTrace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_listings_keep_their_handle() {
        let r = RuleText::from_nft_listing("tcp dport 49983 drop # handle 2");
        assert_eq!(
            r,
            RuleText::Nft {
                text: "tcp dport 49983 drop".into(),
                handle: 2
            }
        );
        assert_eq!(r.render(), "tcp dport 49983 drop # handle 2");
        let p = RuleText::Policy {
            chain: "FORWARD".into(),
            policy: "DROP".into(),
        };
        assert_eq!(p.render(), "-P FORWARD DROP");
    }
}
