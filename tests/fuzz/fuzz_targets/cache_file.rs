//! The discovery cache in /run/tracer, as read back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tracer::discovery::cache::parse(&String::from_utf8_lossy(data));
});
