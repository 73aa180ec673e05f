//! `iptables-save -c` text (either backend): parse, model, and walk envd packets through it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::system::firewall::{
    Backend, Ct, HookPoint, IptSave, Packet, Port, at_hook, flags, nat::dnat_of, nat_at_hook,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(save) = IptSave::parse(&text) else { return };
    let tables = save.tables(Backend::Nft);
    let _ = dnat_of(&tables);
    let syn = Packet {
        what: "the SYN".into(),
        in_dev: Some("eth0".into()),
        out_dev: Some("tap0".into()),
        src: Some([10, 12, 0, 2].into()),
        dst: Some([10, 11, 0, 1].into()),
        dst_nat: Some([169, 254, 0, 21].into()),
        src_nat: None,
        sport: Port::Ephemeral,
        dport: Port::Known(49983),
        flags: flags::SYN,
        ct: Ct::New,
        mark: None,
    };
    for hook in [
        HookPoint::Prerouting,
        HookPoint::Forward,
        HookPoint::Input,
        HookPoint::Output,
    ] {
        let _ = at_hook(&tables, hook, &syn);
    }
    let _ = nat_at_hook(&tables, HookPoint::Prerouting, &syn);
});
