//! The DNAT that makes a sandbox reachable: E2B rewrites the slot's host IP to the guest's
//! address in the sandbox namespace (network v1: iptables `nat PREROUTING`; v2: nft chain
//! `preroute_nat` in `inet slot-firewall`). Read from the rule model, so both look the same.
use std::net::Ipv4Addr;

use super::model::{Action, Chain, Cond, HookPoint, Source, Table};

/// What a namespace's DNAT rule says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dnat {
    /// The matched destination, when the rule matches one address.
    pub host_ip: Option<Ipv4Addr>,
    pub guest_ip: Ipv4Addr,
}

/// E2B's datapath of a sandbox namespace, by where its NAT lives: v1 writes it with iptables,
/// v2 as chains of nft's `inet slot-firewall` (`preroute_nat`, `postroute_nat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    V1,
    V2,
}

impl Datapath {
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// The chains E2B v2 adds to the slot firewall: the NAT (`v2/ns_nat.go`), and the egress DSCP
/// chain (`v2/dscp.go`: type filter, postrouting at mangle priority, -150), which exists on
/// every v2 slot, empty when `SANDBOX_EGRESS_DSCP` is 0.
pub const V2_TABLE: (&str, &str) = ("inet", "slot-firewall");
pub const V2_NAT_CHAINS: [&str; 2] = ["preroute_nat", "postroute_nat"];
pub const V2_MANGLE_CHAIN: &str = "postroute_mangle";

/// Which datapath a namespace's rules say: where the DNAT is; without one (the DNAT may be
/// the fault), whether v2's chains exist, else whether iptables has a nat table with a
/// SNAT. None when nothing says.
pub fn datapath_of(tables: &[Table]) -> Option<Datapath> {
    let of = |t: &Table| match t.source {
        Source::Nft => Datapath::V2,
        Source::Iptables(_) => Datapath::V1,
    };
    let with_nat = |t: &&Table, want: fn(&Action) -> bool| {
        t.chains.iter().any(|c| c.rules.iter().any(|r| want(&r.action)))
    };
    if let Some(t) = tables
        .iter()
        .find(|t| with_nat(t, |a| matches!(a, Action::Dnat(_))))
    {
        return Some(of(t));
    }
    let v2_chains = tables.iter().any(|t| {
        (t.family.as_str(), t.name.as_str()) == V2_TABLE
            && t.chains
                .iter()
                .any(|c| V2_NAT_CHAINS.contains(&c.name.as_str()) || c.name == V2_MANGLE_CHAIN)
    });
    if v2_chains {
        return Some(Datapath::V2);
    }
    tables
        .iter()
        .find(|t| with_nat(t, |a| matches!(a, Action::Snat(_))))
        .map(of)
}

/// The first DNAT of chains hooked at PREROUTING, else of any chain.
pub fn dnat_of(tables: &[Table]) -> Option<Dnat> {
    let chains = || tables.iter().flat_map(|t| t.chains.iter());
    let prerouting = chains().filter(|c| c.hook == Some(HookPoint::Prerouting));
    prerouting.chain(chains()).find_map(first_dnat)
}

fn first_dnat(c: &Chain) -> Option<Dnat> {
    c.rules.iter().find_map(|r| match r.action {
        Action::Dnat(Some(guest_ip)) => Some(Dnat {
            host_ip: single_destination(&r.conds),
            guest_ip,
        }),
        _ => None,
    })
}

/// The address of a plain `-d A/32` (`ip daddr A`) match; a wider prefix, several addresses
/// or a negation match no single host.
fn single_destination(conds: &[Cond]) -> Option<Ipv4Addr> {
    conds.iter().find_map(|c| match c {
        Cond::Dst(nets) => match nets.as_slice() {
            [(ip, 32)] => Some(*ip),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::firewall::{iptables::IptSave, model::Backend, nft::NftRuleset};

    #[test]
    fn dnat_from_iptables_save() {
        let save = IptSave::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             [0:0] -A OUTPUT -d 10.0.0.0/8 -j DNAT --to-destination 1.2.3.4\n\
             [1:60] -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21\n\
             [0:0] -A POSTROUTING -s 169.254.0.21/32 -o eth0 -j SNAT --to-source 10.11.0.1\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(
            dnat_of(&save.tables(Backend::Nft)),
            Some(Dnat {
                host_ip: Some(Ipv4Addr::new(10, 11, 0, 1)),
                guest_ip: Ipv4Addr::new(169, 254, 0, 21)
            })
        );
        let wide = IptSave::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.11.0.0/16 -j DNAT --to-destination 169.254.0.21:49983\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(dnat_of(&wide.tables(Backend::Nft)).unwrap().host_ip, None);
        let none = IptSave::parse("*filter\nCOMMIT\n").unwrap();
        assert_eq!(dnat_of(&none.tables(Backend::Nft)), None);
    }

    #[test]
    fn dnat_from_nft_json() {
        // As `nft -j list ruleset` prints E2B network v2's chain.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "slot-firewall", "handle": 1}},
          {"chain": {"family": "inet", "table": "slot-firewall", "name": "preroute_nat", "handle": 1,
                     "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"chain": {"family": "inet", "table": "slot-firewall", "name": "postroute_nat", "handle": 2,
                     "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "slot-firewall", "chain": "preroute_nat", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.11.0.5"}},
            {"dnat": {"family": "ip", "addr": "169.254.0.21"}}]}},
          {"rule": {"family": "inet", "table": "slot-firewall", "chain": "postroute_nat", "handle": 4, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "169.254.0.21"}},
            {"snat": {"family": "ip", "addr": "10.11.0.5"}}]}}]}"#;
        let tables = NftRuleset::parse(json).unwrap().tables(&[]);
        assert_eq!(
            dnat_of(&tables),
            Some(Dnat {
                host_ip: Some(Ipv4Addr::new(10, 11, 0, 5)),
                guest_ip: Ipv4Addr::new(169, 254, 0, 21)
            })
        );
        let empty = NftRuleset::parse(r#"{"nftables": []}"#).unwrap();
        assert_eq!(dnat_of(&empty.tables(&[])), None);
        // The datapath: v2 by the DNAT's table, and still v2 with the DNAT rule gone.
        assert_eq!(datapath_of(&tables), Some(Datapath::V2));
        let without_dnat: Vec<Table> = tables
            .iter()
            .cloned()
            .map(|mut t| {
                t.chains
                    .iter_mut()
                    .for_each(|c| c.rules.retain(|r| !matches!(r.action, Action::Dnat(_))));
                t
            })
            .collect();
        assert_eq!(datapath_of(&without_dnat), Some(Datapath::V2));
        assert_eq!(datapath_of(&empty.tables(&[])), None);
        // With only the (empty) egress DSCP chain left of E2B v2's, still v2.
        let mangle_only = NftRuleset::parse(
            r#"{"nftables": [{"table": {"family": "inet", "name": "slot-firewall", "handle": 1}},
              {"chain": {"family": "inet", "table": "slot-firewall", "name": "postroute_mangle", "handle": 5,
                         "type": "filter", "hook": "postrouting", "prio": -150, "policy": "accept"}}]}"#,
        )
        .unwrap();
        assert_eq!(datapath_of(&mangle_only.tables(&[])), Some(Datapath::V2));
    }

    #[test]
    fn the_datapath_of_iptables_nat_is_v1() {
        let save = IptSave::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n\
             -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21\n\
             -A POSTROUTING -s 169.254.0.21/32 -o eth0 -j SNAT --to-source 10.11.0.1\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(datapath_of(&save.tables(Backend::Legacy)), Some(Datapath::V1));
        let snat_only = IptSave::parse(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 169.254.0.21/32 -o eth0 -j SNAT --to-source 10.11.0.1\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(datapath_of(&snat_only.tables(Backend::Nft)), Some(Datapath::V1));
    }
}
