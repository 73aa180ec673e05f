//! Sandbox ids and the names they hide in: pure parsing of command lines, socket paths,
//! cgroup names and fdinfo, no I/O.
use std::{net::Ipv4Addr, path::Path};

use crate::error::EnvError;

const API_SOCK_FLAG: &str = "--api-sock";
/// E2B's default SANDBOXES_HOST_NETWORK_CIDR: slot N's host IP is this + N.
const E2B_HOST_NET: u32 = u32::from_be_bytes([10, 11, 0, 0]);

/// Longest sandbox id (or prefix) accepted: E2B's are 21 characters (`i` + 20), older and
/// other deployments differ; anything longer is not an id.
pub const MAX_ID_LEN: usize = 64;
/// Length of the random part E2B appends to names (`fc-<id>-<rand>.sock`, `sbx-<id>-<rand>`).
const RAND_LEN: usize = 20;

/// Whether `id` can be a sandbox id or a prefix of one: 1 to [`MAX_ID_LEN`] lowercase letters
/// and digits. That is all paths and commands need to stay safe (no `/`, no leading `-`, no
/// control characters); E2B's own ids are `i` + 20 of them (`ix7hj8hustuvlxiqc0g0u`).
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(is_id_byte)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// The `--api-sock` value of a NUL-separated command line. Only a whole argument counts: the
/// `bash -c "... firecracker --api-sock ..."` wrapper E2B starts Firecracker with carries the
/// flag inside one long argument and must not be taken for the VMM.
pub fn api_sock_of(cmdline: &[u8]) -> Option<String> {
    // Runs on every process of the host: compare bytes, allocate only for the answer.
    let flag = API_SOCK_FLAG.as_bytes();
    let mut args = cmdline.split(|b| *b == 0);
    let value = loop {
        let arg = args.next()?;
        if arg == flag {
            break args.next()?;
        }
        if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix(b"=")) {
            break v;
        }
    };
    (!value.is_empty()).then(|| String::from_utf8_lossy(value).into_owned())
}

/// `/tmp/fc-<id>-<rand>.sock` (or the older `/tmp/fc-<id>.sock`) → id.
pub fn id_from_api_sock(path: &str) -> Option<String> {
    let file = Path::new(path).file_name()?.to_str()?;
    id_before_rand(file.strip_prefix("fc-")?.strip_suffix(".sock")?)
}

/// `sbx-<id>-<rand>` (an E2B cgroup directory; `sbx-<id>` before 2026-03) → id.
pub fn id_from_cgroup_name(name: &str) -> Option<String> {
    id_before_rand(name.strip_prefix("sbx-")?)
}

/// `<id>-<rand>` → id, where rand is the last [`RAND_LEN`] characters (E2B renews it on every
/// start); a name without that suffix is the id itself.
fn id_before_rand(name: &str) -> Option<String> {
    let cut = name.len().checked_sub(RAND_LEN + 1);
    let id = match cut.and_then(|c| Some((name.get(..c)?, name.get(c..)?))) {
        Some((id, rest)) if rest.len() == RAND_LEN + 1 && is_rand_suffix(rest) => id,
        _ => name,
    };
    is_valid_id(id).then(|| id.to_string())
}

/// `-` followed by [`RAND_LEN`] lowercase alphanumerics.
fn is_rand_suffix(s: &str) -> bool {
    s.strip_prefix('-')
        .is_some_and(|r| r.len() == RAND_LEN && r.bytes().all(is_id_byte))
}

/// `/proc/<pid>/cgroup` (`0::/e2b/sbx-<id>-<rand>`) → id.
pub fn id_from_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(id_from_cgroup_name)
}

/// The tap a `/dev/net/tun` fd is attached to, from its fdinfo (`iff:\ttap0`).
pub fn iff_from_fdinfo(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `ns-7` → 7.
pub fn slot_from_netns(name: &str) -> Option<u32> {
    name.strip_prefix("ns-")?.parse().ok().filter(|n| *n > 0)
}

/// Slot N's host IP with E2B's default CIDR.
pub fn e2b_host_ip(slot: u32) -> Ipv4Addr {
    Ipv4Addr::from(E2B_HOST_NET.wrapping_add(slot))
}

/// The id among `known` that `arg` names: itself, else the only one it is a prefix of.
/// Unknown and ambiguous ids are the operator's to fix (exit 2, listing the candidates).
pub fn match_id(arg: &str, known: &[String]) -> Result<String, EnvError> {
    if known.iter().any(|k| k == arg) {
        return Ok(arg.to_string());
    }
    let mut hits: Vec<String> = known.iter().filter(|k| k.starts_with(arg)).cloned().collect();
    hits.sort();
    hits.dedup();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(EnvError::UnknownSandbox {
            id: arg.to_string(),
            known: known.to_vec(),
        }),
        _ => Err(EnvError::AmbiguousSandboxId {
            prefix: arg.to_string(),
            candidates: hits,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a real node's report (../shared/field/operator-report-2025-12-24.md), verbatim.
    const ID: &str = "ix7hj8hustuvlxiqc0g0u";
    const RAND: &str = "5v46qx8woej5mafpjhog";
    const REPORT_SOCKETS: [(&str, &str); 2] = [
        (
            "/tmp/fc-ix7hj8hustuvlxiqc0g0u-5v46qx8woej5mafpjhog.sock",
            "ix7hj8hustuvlxiqc0g0u",
        ),
        (
            "/tmp/fc-i2fewa6azuz8dedm8btll-uur67n8z1artmx5wym8s.sock",
            "i2fewa6azuz8dedm8btll",
        ),
    ];

    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn ids() {
        assert!(is_valid_id(ID), "E2B: i + 20");
        assert!(is_valid_id("i2x0abcdef0123456789"), "20, as older deployments");
        assert!(is_valid_id("ix7hj8"), "a prefix");
        assert!(!is_valid_id("IX7HJ8HUSTUVLXIQC0G0U"));
        assert!(!is_valid_id("ix7hj8-ustuvlxiqc0g0u"));
        assert!(!is_valid_id("ns-1"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("../../etc"));
        assert!(!is_valid_id("-rf"));
        assert!(!is_valid_id("ix7hj8\u{1b}[2J"));
        assert!(is_valid_id(&"a".repeat(MAX_ID_LEN)));
        assert!(!is_valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn prefixes_name_one_sandbox_or_list_the_candidates() {
        let known: Vec<String> = REPORT_SOCKETS.iter().map(|(_, id)| id.to_string()).collect();
        assert_eq!(match_id("ix7hj8", &known).unwrap(), ID);
        assert_eq!(match_id(ID, &known).unwrap(), ID);
        match match_id("i", &known) {
            Err(EnvError::AmbiguousSandboxId { prefix, candidates }) => {
                assert_eq!(prefix, "i");
                assert_eq!(candidates, vec!["i2fewa6azuz8dedm8btll", ID]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            match_id("iz", &known),
            Err(EnvError::UnknownSandbox { .. })
        ));
        // An exact id wins over longer ids it is a prefix of.
        let nested = vec!["abc".to_string(), "abcd".to_string()];
        assert_eq!(match_id("abc", &nested).unwrap(), "abc");
    }

    #[test]
    fn api_sock_only_as_a_whole_argument() {
        let sock = format!("/tmp/fc-{ID}-{RAND}.sock");
        let fc = cmdline(&["/fc-versions/v1.10/firecracker", "--api-sock", &sock]);
        assert_eq!(api_sock_of(&fc), Some(sock.clone()));
        let eq = cmdline(&["firecracker", &format!("--api-sock={sock}")]);
        assert_eq!(api_sock_of(&eq), Some(sock.clone()));
        let wrapper = cmdline(&[
            "bash",
            "-c",
            &format!("ip netns exec ns-1 firecracker --api-sock {sock}"),
        ]);
        assert_eq!(api_sock_of(&wrapper), None);
        assert_eq!(api_sock_of(&cmdline(&["firecracker", "--api-sock"])), None);
        assert_eq!(api_sock_of(b""), None);
    }

    #[test]
    fn ids_from_the_field_reports_sockets_and_cgroups() {
        for (sock, id) in REPORT_SOCKETS {
            assert_eq!(id_from_api_sock(sock).as_deref(), Some(id), "{sock}");
            let cmd = cmdline(&["/fc-versions/v1.12.1_a41d3fb/firecracker", "--api-sock", sock]);
            let found = api_sock_of(&cmd).and_then(|s| id_from_api_sock(&s));
            assert_eq!(found.as_deref(), Some(id));
            let rand = sock.rsplit('-').next().unwrap().trim_end_matches(".sock");
            assert_eq!(
                id_from_cgroup_name(&format!("sbx-{id}-{rand}")).as_deref(),
                Some(id)
            );
            let proc_cgroup = format!("0::/e2b/sbx-{id}-{rand}\n");
            assert_eq!(id_from_proc_cgroup(&proc_cgroup).as_deref(), Some(id));
        }
        // Older names: no random part.
        assert_eq!(
            id_from_api_sock(&format!("/tmp/fc-{ID}.sock")).as_deref(),
            Some(ID)
        );
        assert_eq!(id_from_cgroup_name(&format!("sbx-{ID}")).as_deref(), Some(ID));
        // 20-character ids of older deployments.
        assert_eq!(
            id_from_api_sock(&format!("/tmp/fc-i2x0abcdef0123456789-{RAND}.sock")).as_deref(),
            Some("i2x0abcdef0123456789")
        );
        assert_eq!(id_from_api_sock("/run/firecracker.socket"), None);
        assert_eq!(id_from_api_sock("/tmp/fc-Not_An-Id.sock"), None);
        assert_eq!(id_from_cgroup_name("system.slice"), None);
        assert_eq!(id_from_proc_cgroup("0::/user.slice/session-1.scope\n"), None);
    }

    #[test]
    fn tap_name_from_fdinfo() {
        let attached = "pos:\t0\nflags:\t02004002\nmnt_id:\t26\nino:\t1045\niff:\ttap0\n";
        assert_eq!(iff_from_fdinfo(attached).as_deref(), Some("tap0"));
        assert_eq!(iff_from_fdinfo("pos:\t0\nflags:\t02004002\n"), None);
    }

    #[test]
    fn slots_and_e2b_formulas() {
        assert_eq!(slot_from_netns("ns-300"), Some(300));
        assert_eq!(slot_from_netns("ns-0"), None);
        assert_eq!(slot_from_netns("e2b-host"), None);
        assert_eq!(e2b_host_ip(300), Ipv4Addr::new(10, 11, 1, 44));
    }
}
