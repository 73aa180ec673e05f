//! Ring buffer records from the kernel programs: decoded, named, correlated into journeys and
//! judged.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tracer::{
    attach::bpf::{btf::ReasonNames, kallsyms::Kallsyms},
    events::decode::{Names, decode, decode_deep, hop_from_event},
    report::deep::DeepRecord,
};
use tracer_model::{
    facts::ReadFacts,
    fixtures,
    journey::{Correlator, Timing},
    verdict,
};

fuzz_target!(|data: &[u8]| {
    let mut names = Names::with_netns(ReasonNames::default(), Kallsyms::parse(""), HashMap::new());
    let mut c = Correlator::new(&[49983], Timing::default());
    let size = size_of::<tracer_common::Event>();
    for chunk in data.chunks(size) {
        if let Some(ev) = decode(chunk)
            && let Some(hop) = hop_from_event(&ev, &mut names)
        {
            c.push(hop);
        }
    }
    // Deep records: the packet bytes and facts a followed packet carries in deep mode.
    for chunk in data.chunks(size_of::<tracer_common::DeepEvent>()) {
        if let Some(d) = decode_deep(chunk, &names, |_| vec![0xffff_ffff_8100_0000; 3]) {
            let _ = DeepRecord::from_hop(&d).line();
        }
    }
    let path = fixtures::path();
    for j in c.take_all() {
        let _ = verdict::decide(&j, Some(&path), &ReadFacts::default());
    }
});
