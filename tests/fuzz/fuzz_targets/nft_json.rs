//! `nft -j list ruleset`: parse, model, DNAT, and rule naming between two dumps.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::system::firewall::{
    Ct, HookPoint, NftRuleset, Packet, Port, Rulesets, at_hook, flags,
    naming::{Place, name_rule},
};
use tracer_model::hook::Hook;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(set) = NftRuleset::parse(&text) else { return };
    let tables = set.tables(&["filter".into()]);
    let rules = Rulesets {
        nft: Some(set),
        ..Default::default()
    };
    let _ = rules.dnat();
    let _ = rules.hook_priorities();
    let syn = Packet {
        what: "the SYN".into(),
        in_dev: Some("eth0".into()),
        out_dev: None,
        src: Some([10, 12, 0, 2].into()),
        dst: Some([10, 11, 0, 1].into()),
        dst_nat: None,
        src_nat: None,
        sport: Port::Ephemeral,
        dport: Port::Known(49983),
        flags: flags::SYN,
        ct: Ct::New,
        mark: None,
    };
    let _ = at_hook(&tables, HookPoint::Prerouting, &syn);
    let place = Place {
        hook: Hook::Prerouting,
        table: None,
        window: Some((-300, 0)),
    };
    let _ = name_rule(&Rulesets::default(), &rules, place);
});
