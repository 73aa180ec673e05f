//! The firewall evaluator lives in the pure model (`tracer_model::firewall::eval`): the verdict
//! engine walks packets through the rules it reads. Its tests stay here, beside the parsers
//! that turn real rulesets into the rule model.
pub use tracer_model::firewall::eval::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::firewall::{
        iptables::{IptSave, parse_ipt_rule},
        model::{Action, Backend, Cond, HookPoint, Table, flags},
        nft::NftRuleset,
    };

    fn syn() -> Packet {
        Packet {
            what: "the SYN".into(),
            in_dev: Some("eth0".into()),
            out_dev: Some("tap0".into()),
            src: Some([10, 12, 0, 2].into()),
            dst: Some([169, 254, 0, 21].into()),
            dst_nat: None,
            src_nat: None,
            sport: Port::Ephemeral,
            dport: Port::Known(49983),
            flags: flags::SYN,
            ct: Ct::New,
            mark: Some(0),
        }
    }

    fn synack() -> Packet {
        Packet {
            what: "the SYN-ACK".into(),
            in_dev: Some("tap0".into()),
            out_dev: Some("eth0".into()),
            src: Some([169, 254, 0, 21].into()),
            dst: Some([10, 12, 0, 2].into()),
            dst_nat: None,
            src_nat: None,
            sport: Port::Known(49983),
            dport: Port::Ephemeral,
            flags: flags::SYN | flags::ACK,
            ct: Ct::Established,
            mark: Some(0),
        }
    }

    fn ipt(text: &str) -> Vec<Table> {
        IptSave::parse(text).unwrap().tables(Backend::Nft)
    }

    fn drops(tables: &[Table], hook: HookPoint, p: &Packet) -> Vec<Outcome> {
        at_hook(tables, hook, p)
    }

    #[test]
    fn parses_iptables_rules() {
        let r = parse_ipt_rule(
            "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 --tcp-flags SYN,ACK SYN,ACK -m comment --comment \"a b\" -j DROP",
        );
        assert_eq!(r.action, Action::Drop);
        assert!(r.conds.contains(&Cond::InDev(vec!["eth0".into()])));
        assert!(r.conds.contains(&Cond::DPort(vec![(49983, 49983)])));
        assert!(r.conds.contains(&Cond::Flags {
            mask: flags::SYN | flags::ACK,
            cmp: flags::SYN | flags::ACK
        }));
        assert!(!r.conds.iter().any(|c| matches!(c, Cond::Unknown(_))), "{r:?}");
        let r = parse_ipt_rule(
            "-A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21:49983",
        );
        assert_eq!(r.action, Action::Dnat(Some([169, 254, 0, 21].into())));
        let r = parse_ipt_rule("-A INPUT -m addrtype --src-type LOCAL ! -s 10.0.0.0/255.0.0.0 -j ACCEPT");
        assert!(matches!(r.conds[0], Cond::Unknown(_)), "{r:?}");
        assert_eq!(
            r.conds[1],
            Cond::Not(Box::new(Cond::Src(vec![([10, 0, 0, 0].into(), 8)])))
        );
    }

    #[test]
    fn forward_drop_rule_and_policy() {
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP\nCOMMIT\n",
        );
        assert!(matches!(&drops(&t, HookPoint::Forward, &syn())[..], [Outcome::Drops(h)] if !h.policy));
        assert!(drops(&t, HookPoint::Forward, &synack()).is_empty());

        let t = ipt("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n");
        assert!(matches!(&drops(&t, HookPoint::Forward, &syn())[..], [Outcome::Drops(h)] if h.policy));
        // Policy DROP with an accept for envd first: fine.
        let t = ipt(
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A FORWARD -i eth0 -o tap0 -j ACCEPT\nCOMMIT\n",
        );
        assert!(drops(&t, HookPoint::Forward, &syn()).is_empty());
        assert!(drops(&t, HookPoint::Forward, &synack()).is_empty());
    }

    #[test]
    fn user_chains_and_returns() {
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n:LAB-GUARD - [0:0]\n-A FORWARD -i eth0 -j LAB-GUARD\n-A LAB-GUARD -p tcp -m tcp --dport 49983 -j DROP\nCOMMIT\n",
        );
        let out = drops(&t, HookPoint::Forward, &syn());
        assert!(
            matches!(&out[..], [Outcome::Drops(h)] if h.chains == ["FORWARD", "LAB-GUARD"]),
            "{out:?}"
        );
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n:G - [0:0]\n-A FORWARD -j G\n-A FORWARD -j DROP\n-A G -d 169.254.0.21/32 -j ACCEPT\nCOMMIT\n",
        );
        assert!(drops(&t, HookPoint::Forward, &syn()).is_empty());
        assert_eq!(drops(&t, HookPoint::Forward, &synack()).len(), 1);
    }

    #[test]
    fn unknown_matches_make_warnings_not_problems() {
        // An unknown match on the DROP: it may drop.
        let t =
            ipt("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m addrtype --dst-type LOCAL -j DROP\nCOMMIT\n");
        assert!(matches!(
            &drops(&t, HookPoint::Forward, &syn())[..],
            [Outcome::MayDrop(_)]
        ));
        // An unknown match on an ACCEPT before a DROP: the drop is only possible.
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m set --match-set ok src -j ACCEPT\n-A FORWARD -j DROP\nCOMMIT\n",
        );
        assert!(matches!(
            &drops(&t, HookPoint::Forward, &syn())[..],
            [Outcome::MayDrop(_)]
        ));
        // A maybe-drop followed by a sure drop: dropped either way.
        let t = ipt(
            "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m addrtype --dst-type LOCAL -j DROP\n-A FORWARD -j DROP\nCOMMIT\n",
        );
        assert!(matches!(
            &drops(&t, HookPoint::Forward, &syn())[..],
            [Outcome::Drops(_)]
        ));
    }

    #[test]
    fn ephemeral_ports_and_ct_states() {
        let t = ipt(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 1024:65535 -m state --state NEW -j DROP\nCOMMIT\n",
        );
        let mut p = synack();
        p.in_dev = Some("veth-1".into());
        assert!(
            drops(&t, HookPoint::Input, &p).is_empty(),
            "the reply is ESTABLISHED"
        );
        p.ct = Ct::New;
        assert_eq!(drops(&t, HookPoint::Input, &p).len(), 1);
        let t =
            ipt("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 40000:50000 -j DROP\nCOMMIT\n");
        assert!(matches!(
            &drops(&t, HookPoint::Input, &p)[..],
            [Outcome::MayDrop(_)]
        ));
    }

    const NFT: &str = r#"{"nftables": [
      {"table": {"family": "ip", "name": "filter", "handle": 1}},
      {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
      {"table": {"family": "inet", "name": "slot-firewall", "handle": 2}},
      {"chain": {"family": "inet", "table": "slot-firewall", "name": "PREROUTE_FILTER", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "slot-firewall", "name": "preroute_nat", "handle": 4, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "PREROUTE_FILTER", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "tap0"}}, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "PREROUTE_FILTER", "handle": 7, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "tap0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "169.254.0.0", "len": 16}}]}}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "slot-firewall", "chain": "preroute_nat", "handle": 17, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.11.0.5"}}, {"dnat": {"family": "ip", "addr": "169.254.0.21"}}]}},
      {"table": {"family": "ip", "name": "lab-fault", "handle": 3}},
      {"chain": {"family": "ip", "table": "lab-fault", "name": "pre", "handle": 1, "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "ip", "table": "lab-fault", "chain": "pre", "handle": 2, "expr": [{"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}, "right": "syn"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 49983}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}
    ]}"#;

    #[test]
    fn nft_rulesets_skip_iptables_tables_and_evaluate_the_rest() {
        let t = NftRuleset::parse(NFT).unwrap().tables(&["filter".into()]);
        assert_eq!(
            t.len(),
            2,
            "the iptables-nft filter table is left to iptables-nft-save"
        );
        let mut p = syn();
        p.dst = Some([10, 11, 0, 5].into());
        p.dst_nat = Some([169, 254, 0, 21].into());
        let out = drops(&t, HookPoint::Prerouting, &p);
        assert!(
            matches!(&out[..], [Outcome::Drops(h)] if h.table == "lab-fault" && h.handle == Some(2) && h.rule.contains("drop")),
            "{out:?}"
        );
        // The slot firewall accepts the established reply before its drop of 169.254/16.
        let mut r = synack();
        r.dst = Some([169, 254, 0, 22].into());
        assert!(drops(&t, HookPoint::Prerouting, &r).is_empty());
        r.ct = Ct::New;
        assert_eq!(drops(&t, HookPoint::Prerouting, &r).len(), 1);
        let dnat = nat_at_hook(&t, HookPoint::Prerouting, &p).unwrap();
        assert_eq!(dnat.action, Action::Dnat(Some([169, 254, 0, 21].into())));
    }

    /// Found by the iptables_save fuzz target: jumps that fan out (or loop, in a saved file)
    /// made one walk cost n^depth. A walk is bounded; a loop is not followed.
    #[test]
    fn fanned_out_and_looping_jumps_are_walked_in_bounded_time() {
        let mut text = String::from("*filter\n:FORWARD ACCEPT [0:0]\n");
        for level in 0..8 {
            text += &format!(":C{level} - [0:0]\n");
        }
        for _ in 0..40 {
            text += "[0:0] -A FORWARD -j C0\n";
            for level in 0..7 {
                text += &format!("[0:0] -A C{level} -j C{}\n", level + 1);
            }
            // A loop back to the first user chain.
            text += "[0:0] -A C7 -j C0\n";
        }
        text += "[0:0] -A FORWARD -p tcp --dport 49983 -j DROP\nCOMMIT\n";
        let t = ipt(&text);
        let out = at_hook(&t, HookPoint::Forward, &syn());
        // 40^8 walks if every jump walked again; each chain once, the DROP after them found.
        assert!(
            matches!(&out[..], [Outcome::Drops(h)] if h.chains == ["FORWARD"] && h.rule.contains("--dport 49983")),
            "{out:?}"
        );
    }
}
