//! What discovery reads from /proc and cgroupfs of processes anyone may start: command lines,
//! socket paths, cgroup paths, fdinfo, stat lines, and /proc/kallsyms.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tracer::{attach::bpf::kallsyms::Kallsyms, discovery::sandbox, system::proc};

fuzz_target!(|data: &[u8]| {
    if let Some(sock) = sandbox::api_sock_of(data) {
        let _ = sandbox::id_from_api_sock(&sock);
    }
    let text = String::from_utf8_lossy(data);
    let _ = sandbox::id_from_proc_cgroup(&text);
    let _ = sandbox::iff_from_fdinfo(&text);
    let _ = sandbox::id_from_cgroup_name(&text);
    let _ = sandbox::slot_from_netns(&text);
    let _ = sandbox::match_id(&text, &["ix7hj8hustuvlxiqc0g0u".into()]);
    let _ = proc::parse_stat(&text);
    let k = Kallsyms::parse(&text);
    let _ = k.describe(0xffff_ffff_8100_0000);
});
