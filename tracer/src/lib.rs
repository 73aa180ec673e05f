//! envd path tracer: follows the orchestrator's connections to envd in Firecracker microVMs
//! through the kernel and names where and why they die.
//!
//! Data flows one way: sandbox → network snapshot → expected path → attach → events →
//! journey → verdict → report. The pure part of that chain (hops, the expected path,
//! journeys, the verdict engine) is the `tracer-model` crate; this crate does the I/O around
//! it, in layers that only import downwards:
//!
//! - system access: `cmd` (tools with a timeout), `netns`, `netstate` (netlink), `firewall`
//!   (every ruleset read, modelled, evaluated and named), `bpf` (the kernel programs, BTF,
//!   kernel symbols), `connect` (connection attempts like the orchestrator's), `conntrack`
//!   (ctnetlink);
//! - what is on this host: `sandbox` (discovery), `cache`, `target`;
//! - judging and telling: `events` (kernel events → hops), `doctor`, `report`, `output`,
//!   `pcapng` (deep mode's capture);
//! - commands: `trace`, `watch` (every sandbox of a node, unattended), `list`, `doctor::run`,
//!   `saved` (`tracer report`: saved output rendered again),
//!   with `cli` and `error`.
pub mod bpf;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod connect;
pub mod conntrack;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod events;
pub mod firewall;
pub mod list;
pub mod netns;
pub mod netstate;
pub mod output;
pub mod pcapng;
pub mod pool;
pub mod report;
pub mod sandbox;
pub mod saved;
pub mod target;
pub mod trace;
pub mod watch;

#[cfg(test)]
mod walls {
    //! The layering above, held by tests: the modules of this crate import each other without
    //! cycles, and the pure model crate does no I/O.
    use std::{
        collections::{BTreeMap, BTreeSet},
        fs,
        path::Path,
    };

    /// Top-level module → the top-level modules its files name with `crate::`.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&src).unwrap();
                let top = rel.components().next().unwrap().as_os_str().to_string_lossy();
                let module = top.trim_end_matches(".rs").to_string();
                if module == "lib" || module == "main" {
                    continue;
                }
                let text = fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let deps = graph.entry(module.clone()).or_default();
                for (i, _) in code.match_indices("crate::") {
                    let name: String = code[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        deps.insert(name);
                    }
                }
                // `use crate::{a, b::c}` groups.
                for (i, _) in code.match_indices("use crate::{") {
                    let group = &code[i + 12..];
                    let mut depth = 0;
                    let mut word = String::new();
                    for c in group.chars() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            c if depth == 0 && (c.is_ascii_alphanumeric() || c == '_') => word.push(c),
                            ':' | ',' | ' ' | '\n' if depth == 0 => {
                                if !word.is_empty() && word != module && word != "self" {
                                    deps.insert(std::mem::take(&mut word));
                                }
                                word.clear();
                                if c == ':' {
                                    depth = 0;
                                }
                            }
                            _ => {}
                        }
                        if c == ':' {
                            // Skip the rest of this path: only its first segment is a module.
                            word.clear();
                        }
                    }
                }
            }
        }
        graph
    }

    fn cycle_from(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = cycle_from(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }

    #[test]
    fn modules_import_each_other_without_cycles() {
        let graph = imports();
        // The parse sees imports, both plain and grouped.
        assert!(
            graph["engine"].contains("doctor") && graph["doctor"].contains("firewall"),
            "{graph:?}"
        );
        assert!(graph["firewall"].contains("cmd"), "{graph:?}");
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            let found = cycle_from(m, &graph, &mut Vec::new(), &mut done);
            assert!(found.is_none(), "import cycle: {}", found.unwrap().join(" → "));
        }
    }

    #[test]
    fn only_the_firewall_runs_iptables_and_nft() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    if !path.ends_with("firewall") {
                        stack.push(path);
                    }
                    continue;
                }
                let text = fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                if [
                    "command(\"nft\")",
                    "command(\"iptables",
                    "Command::new(\"nft\")",
                    "Command::new(\"iptables",
                ]
                .iter()
                .any(|needle| code.contains(needle))
                {
                    offenders.push(path.display().to_string());
                }
            }
        }
        assert!(offenders.is_empty(), "outside firewall/: {offenders:?}");
    }

    /// A probe is a packet on a production network: only `connect.rs`, where every
    /// connection is cleared by the route check first, opens an IP socket. (Netlink sockets
    /// and the metrics listener are not IP clients.)
    #[test]
    fn only_connect_rs_opens_ip_sockets() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let needles = [
            "libc::connect",
            "libc::sendto",
            "libc::sendmsg",
            "TcpStream::connect",
            "UdpSocket",
            "AF_INET",
            "SOCK_STREAM",
            "SOCK_RAW",
            "AF_PACKET",
        ];
        let mut offenders = Vec::new();
        let mut stack = vec![src.clone()];
        let mut seen_guard = false;
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let hits: Vec<&&str> = needles.iter().filter(|n| code.contains(**n)).collect();
                if path.ends_with("connect.rs") {
                    seen_guard = hits.iter().any(|n| **n == "libc::connect") && code.contains("fn clear(");
                } else if !hits.is_empty() {
                    offenders.push(format!("{}: {hits:?}", path.display()));
                }
            }
        }
        assert!(seen_guard, "connect.rs connects, behind its route check");
        assert!(
            offenders.is_empty(),
            "IP sockets outside connect.rs: {offenders:?}"
        );
    }

    /// Test hooks never reach the binary operators run: every one sits behind the
    /// `test-hooks` feature, which only `cargo xtask test` enables.
    #[test]
    fn test_hooks_only_behind_their_feature() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src];
        let mut hooks = 0;
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let lines: Vec<&str> = code.lines().collect();
                for (i, l) in lines.iter().enumerate() {
                    if l.contains("\"TRACER_TEST_") {
                        hooks += 1;
                        let gated = lines[..i]
                            .iter()
                            .rev()
                            .take(3)
                            .any(|p| p.contains("#[cfg(feature = \"test-hooks\")]"));
                        assert!(
                            gated,
                            "{}:{}: a test hook outside the feature",
                            path.display(),
                            i + 1
                        );
                    }
                }
            }
        }
        assert!(hooks > 0, "the panic hook of the detach test exists");
    }
}
