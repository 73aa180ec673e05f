//! Whether what a verdict names exists as it says: each actor checked against the live
//! namespace with the system's own tools (iptables-save, nft, ip, tc, sysctl, the bpf
//! syscall), while the fault is still in place. An actor that does not exist, or whose state
//! is not what the verdict says, is a false claim whatever the grade would have been.
//! Claims of absence (a missing rule, a missing route) and claims about the guest or the VMM
//! are not checked here.
use serde_json::Value;

use crate::sh::run_in;

/// The false claims among a verdict's actors: one line each, saying what was claimed and
/// what the namespace shows.
pub fn false_claims(verdict: &Value) -> Vec<String> {
    verdict["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let ns = namespace(a["netns"].as_str()?)?;
            let why = check(ns, &a["id"])?;
            Some(format!(
                "{} in {}: {why}",
                a["id"]["kind"].as_str().unwrap_or("?"),
                ns.unwrap_or("root")
            ))
        })
        .collect()
}

/// The namespace to run tools in: `root` is the machine's own; an unnamed one (`netns:N`)
/// cannot be entered by name and is not checked.
fn namespace(label: &str) -> Option<Option<&str>> {
    match label {
        "root" => Some(None),
        l if l.starts_with("netns:") || l.is_empty() => None,
        l => Some(Some(l)),
    }
}

/// Why the claim `id` is false in `ns`, or None when it holds (or cannot be checked).
fn check(ns: Option<&str>, id: &Value) -> Option<String> {
    let s = |k: &str| id[k].as_str().unwrap_or("").to_string();
    match id["kind"].as_str()? {
        "firewall_rule" => firewall_rule(
            ns,
            &s("source"),
            &s("family"),
            &s("table"),
            &s("rule"),
            id["handle"].as_u64(),
        ),
        "chain_policy" => chain_policy(ns, &s("source"), &s("family"), &s("table"), &s("chain")),
        "route" => route(ns, id["table"].as_u64()?, &s("dst"), &s("route_type")),
        "policy_rule" => policy_rule(ns, id["priority"].as_u64()?),
        "address" => address(ns, &s("device"), &s("address"), id["missing"].as_bool()?),
        "neighbour" => neighbour(ns, &s("device"), &s("address"), &s("state"), id["mac"].as_str()),
        "link" => link(ns, &s("device"), &s("state")),
        "sysctl" => sysctl(ns, &s("name"), &s("value")),
        "qdisc" => qdisc(ns, &s("device"), &s("qdisc")),
        "tc_filter" => tc_filter(ns, &s("device"), &s("direction"), id["priority"].as_u64()?),
        "bpf_program" => bpf_program(id["id"].as_u64()? as u32),
        _ => None,
    }
}

/// Whitespace-insensitive containment: tools differ in how they space a rule.
fn contains_rule(listing: &str, rule: &str) -> bool {
    let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let rule = squash(rule);
    !rule.is_empty() && listing.lines().any(|l| squash(l).contains(&rule))
}

fn save_tool(source: &str) -> Option<&'static str> {
    match source {
        "iptables-nft" => Some("iptables-nft-save"),
        "iptables-legacy" => Some("iptables-legacy-save"),
        _ => None,
    }
}

fn firewall_rule(
    ns: Option<&str>,
    source: &str,
    family: &str,
    table: &str,
    rule: &str,
    handle: Option<u64>,
) -> Option<String> {
    if let Some(tool) = save_tool(source) {
        let out = run_in(ns, tool, &["-t", table]).ok()?;
        return (!contains_rule(&out, rule)).then(|| format!("no rule `{rule}` in {source} {table}"));
    }
    let Ok(out) = run_in(ns, "nft", &["-a", "list", "table", family, table]) else {
        return Some(format!("no nft table {family} {table}"));
    };
    let by_handle = handle.is_some_and(|h| out.contains(&format!("# handle {h}")));
    (!by_handle && !contains_rule(&out, rule)).then(|| format!("no rule `{rule}` in nft {family} {table}"))
}

fn chain_policy(ns: Option<&str>, source: &str, family: &str, table: &str, chain: &str) -> Option<String> {
    let drops = match save_tool(source) {
        Some(tool) => {
            let out = run_in(ns, tool, &["-t", table]).ok()?;
            out.lines().any(|l| l.starts_with(&format!(":{chain} DROP")))
        }
        None => {
            let out = run_in(ns, "nft", &["list", "chain", family, table, chain]).ok()?;
            out.contains("policy drop")
        }
    };
    (!drops).then(|| format!("chain {table} {chain} has no DROP policy"))
}

fn json(ns: Option<&str>, program: &str, args: &[&str]) -> Option<Vec<Value>> {
    let out = run_in(ns, program, args).ok()?;
    serde_json::from_str::<Value>(out.trim())
        .ok()?
        .as_array()
        .cloned()
}

fn route(ns: Option<&str>, table: u64, dst: &str, kind: &str) -> Option<String> {
    let routes = json(ns, "ip", &["-j", "route", "show", "table", &table.to_string()])?;
    let (addr, prefix) = dst.split_once('/').unwrap_or((dst, "32"));
    let want = match (addr, prefix) {
        ("0.0.0.0", "0") => "default".to_string(),
        (a, "32") => a.to_string(),
        (a, p) => format!("{a}/{p}"),
    };
    let found = routes.iter().any(|r| {
        r["dst"].as_str() == Some(want.as_str())
            && (kind.is_empty() || kind == "unicast" || r["type"].as_str() == Some(kind))
    });
    (!found).then(|| format!("no {kind} route to {dst} in table {table}"))
}

fn policy_rule(ns: Option<&str>, priority: u64) -> Option<String> {
    let rules = json(ns, "ip", &["-j", "rule", "show"])?;
    let found = rules.iter().any(|r| r["priority"].as_u64() == Some(priority));
    (!found).then(|| format!("no policy rule with priority {priority}"))
}

fn address(ns: Option<&str>, device: &str, address: &str, missing: bool) -> Option<String> {
    let addr = address.split('/').next().unwrap_or(address);
    let has = json(ns, "ip", &["-j", "addr", "show", "dev", device])
        .unwrap_or_default()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .any(|a| a["local"].as_str() == Some(addr));
    match (missing, has) {
        (true, true) => Some(format!("{device} has {addr}, said to be missing")),
        (false, false) => Some(format!("{device} has no address {addr}")),
        _ => None,
    }
}

fn neighbour(
    ns: Option<&str>,
    device: &str,
    address: &str,
    state: &str,
    mac: Option<&str>,
) -> Option<String> {
    // Only permanent entries stay put long enough to check; others come and go by design.
    if !state.eq_ignore_ascii_case("permanent") {
        return None;
    }
    let entries = json(ns, "ip", &["-j", "neigh", "show", "dev", device])?;
    let found = entries.iter().any(|e| {
        e["dst"].as_str() == Some(address)
            && mac.is_none_or(|m| e["lladdr"].as_str().is_some_and(|l| l.eq_ignore_ascii_case(m)))
    });
    (!found).then(|| format!("no permanent entry for {address} on {device}"))
}

fn link(ns: Option<&str>, device: &str, state: &str) -> Option<String> {
    let links = json(ns, "ip", &["-j", "link", "show", "dev", device]);
    let Some(l) = links.as_ref().and_then(|v| v.first()) else {
        return (state != "missing").then(|| format!("no device {device}"));
    };
    let up = l["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")));
    match state {
        "missing" => Some(format!("{device} exists, said to be missing")),
        "down" if up => Some(format!("{device} is up, said to be down")),
        s if s.starts_with("mtu ") => {
            let mtu = l["mtu"].as_u64().unwrap_or(0);
            (s != format!("mtu {mtu}")).then(|| format!("{device} has mtu {mtu}, said {s}"))
        }
        _ => None,
    }
}

fn sysctl(ns: Option<&str>, name: &str, value: &str) -> Option<String> {
    let out = run_in(ns, "sysctl", &["-n", name]).ok()?;
    (out.trim() != value.trim()).then(|| format!("{name} is {}, said {value}", out.trim()))
}

fn qdisc(ns: Option<&str>, device: &str, kind: &str) -> Option<String> {
    let qdiscs = json(ns, "tc", &["-j", "qdisc", "show", "dev", device])?;
    let found = qdiscs.iter().any(|q| q["kind"].as_str() == Some(kind));
    (!found).then(|| format!("no {kind} qdisc on {device}"))
}

fn tc_filter(ns: Option<&str>, device: &str, direction: &str, priority: u64) -> Option<String> {
    let mut args = vec!["filter", "show", "dev", device];
    if matches!(direction, "ingress" | "egress") {
        args.push(direction);
    }
    let out = run_in(ns, "tc", &args).ok()?;
    let found = out.contains(&format!("pref {priority} "));
    (!found).then(|| format!("no {direction} filter with pref {priority} on {device}"))
}

/// BPF_PROG_GET_FD_BY_ID: the program exists while something holds it.
fn bpf_program(id: u32) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = Attr {
        id,
        ..Default::default()
    };
    // SAFETY: the attribute is a valid, initialized struct of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the call just returned.
        unsafe { libc::close(fd as i32) };
        return None;
    }
    (std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT))
        .then(|| format!("no BPF program with id {id}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rules_match_whatever_the_spacing() {
        let listing = "*filter\n-A FORWARD  -i eth0 -p tcp -m tcp --dport 49983 -j DROP\nCOMMIT\n";
        assert!(contains_rule(
            listing,
            "-A FORWARD -i eth0 -p tcp -m tcp --dport 49983 -j DROP"
        ));
        assert!(!contains_rule(listing, "-A FORWARD -i eth0 -j ACCEPT"));
        assert!(!contains_rule(listing, "  "));
    }

    #[test]
    fn unnamed_namespaces_and_unknown_kinds_are_not_checked() {
        assert_eq!(namespace("netns:4026532"), None);
        assert_eq!(namespace("root"), Some(None));
        assert_eq!(namespace("ns-1"), Some(Some("ns-1")));
        let v = json!({"actors": [
            {"netns": "netns:1", "id": {"kind": "link", "device": "x", "state": "down"}},
            {"netns": "root", "id": {"kind": "guest", "what": "silent"}},
        ]});
        assert!(false_claims(&v).is_empty());
    }

    /// The machine's own loopback is up: saying it is down is false; a program id that
    /// cannot exist is false.
    #[test]
    fn a_state_that_is_not_so_is_a_false_claim() {
        // SAFETY: no arguments.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let v = json!({"actors": [
            {"netns": "root", "id": {"kind": "link", "device": "lo", "state": "down"}},
            {"netns": "root", "id": {"kind": "bpf_program", "id": 4_000_000_000u32}},
        ]});
        let f = false_claims(&v);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("lo is up"), "{f:?}");
    }
}
