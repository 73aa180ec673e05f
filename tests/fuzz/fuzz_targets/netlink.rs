//! Netlink datagrams the tracer reads: rtnetlink dump replies (links, addresses, routes,
//! neighbours) and nf_tables trace events.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tracer::system::netstate::parse_reply(data, 1);
    let _ = tracer::system::firewall::nftrace::parse_datagram(data);
});
