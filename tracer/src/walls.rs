//! The layout, held by tests: layers import only downwards (so never in a cycle), commands
//! are siblings that never import each other, only `system/firewall/` runs ruleset tools,
//! only `system/connect.rs` opens IP sockets, test hooks stay behind their feature, and no
//! source file of the workspace grows past 600 lines before its tests.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The layers, lowest first; a layer may import the shared base and the layers before it.
const LAYERS: &[&str] = &[
    "system",
    "discovery",
    "diagnose",
    "attach",
    "events",
    "report",
    "engine",
    "commands",
];
/// Shared by every layer: the command line's types, errors and output.
const BASE: &[&str] = &["cli", "error", "output"];
/// The longest a source file may be before its `#[cfg(test)]`.
const MAX_LINES: usize = 600;
/// Files still being split (each leaves this list in its own commit; none may grow).
const STILL_LONG: &[(&str, usize)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("src/walls.rs") {
                let text = fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out
}

/// The index just past the item that starts at `from` (a block item to its closing brace,
/// any other to its semicolon).
fn item_end(s: &str, from: usize) -> usize {
    let rest = &s[from..];
    let brace = rest.find('{');
    let semi = rest.find(';');
    match (brace, semi) {
        (Some(b), Some(sc)) if sc < b => from + sc + 1,
        (Some(b), _) => {
            let mut depth = 0;
            for (i, c) in rest[b..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            return from + b + i + 1;
                        }
                    }
                    _ => {}
                }
            }
            s.len()
        }
        (None, Some(sc)) => from + sc + 1,
        (None, None) => s.len(),
    }
}

/// The code of a file without its `#[cfg(test)]` items (wherever they are: a test helper in
/// the middle of a file hides nothing after it).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]") {
        let start = at + i;
        out.push_str(&text[at..start]);
        at = item_end(text, start + "#[cfg(test)]".len());
    }
    out.push_str(&text[at..]);
    out
}

/// The first path segment of every `crate::…` path in `code`, grouped imports included.
fn crate_paths(code: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = item_end(rest, 0).saturating_sub(1).max(1);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end.min(group.len())].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(segments(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(segments(&item));
        } else {
            out.insert(segments(rest));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The leading `a::b` identifiers of a path.
fn segments(path: &str) -> Vec<String> {
    path.trim()
        .split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty())
        .take(2)
        .collect()
}

/// Layer → the layers its files import.
fn layer_imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources(&root) {
        let rel = path.strip_prefix(&root).unwrap();
        let layer = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(layer.as_str(), "lib" | "main" | "walls") {
            continue;
        }
        let deps = graph.entry(layer.clone()).or_default();
        for p in crate_paths(&code(&text)) {
            if p[0] != layer {
                deps.insert(p[0].clone());
            }
        }
    }
    graph
}

/// `layer::module` → the `layer::module`s its files import (a layer's own `mod.rs` is the
/// layer itself).
fn module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources(&root) {
        let rel = path.strip_prefix(&root).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .take(2)
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .filter(|c| c != "mod")
            .collect();
        if parts.len() < 2 {
            continue;
        }
        let me = parts.join("::");
        let deps = graph.entry(me.clone()).or_default();
        let code = code(&text);
        // `super::x` in a layer's own module file names a sibling module of that layer.
        let top_file = rel.iter().count() == 2 && !rel.ends_with("mod.rs");
        let siblings = code
            .match_indices("super::")
            .filter(|_| top_file)
            .map(|(i, _)| segments(&code[i + 7..]))
            .filter(|s| !s.is_empty())
            .map(|s| vec![parts[0].clone(), s[0].clone()]);
        for p in crate_paths(&code).into_iter().chain(siblings) {
            let to = p.join("::");
            if p.len() == 2 && to != me {
                deps.insert(to);
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

/// Inside a layer too, modules import each other without cycles.
#[test]
fn modules_import_each_other_without_cycles() {
    let graph = module_imports();
    assert!(
        graph["engine::judge"].contains("diagnose::explain") || graph["engine::judge"].len() > 3,
        "the parse sees imports: {graph:?}"
    );
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        let found = cycle_from(m, &graph, &mut Vec::new(), &mut done);
        assert!(found.is_none(), "import cycle: {}", found.unwrap().join(" → "));
    }
}

#[test]
fn the_parse_sees_every_import() {
    let c = "use crate::{a::b, c::{d, e}};\nfn f() { crate::g::h(); }\n#[cfg(test)]\nfn t() { crate::x::y(); }\nuse crate::z;";
    let found: BTreeSet<String> = crate_paths(&code(c)).into_iter().map(|p| p[0].clone()).collect();
    assert_eq!(
        found,
        ["a", "c", "g", "z"].iter().map(|s| s.to_string()).collect(),
        "a test item in the middle hides nothing after it"
    );
}

#[test]
fn layers_import_only_downwards() {
    let graph = layer_imports();
    assert!(
        graph["engine"].contains("diagnose"),
        "the parse sees imports: {graph:?}"
    );
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l);
    for (layer, deps) in &graph {
        if BASE.contains(&layer.as_str()) {
            assert!(
                deps.iter().all(|d| BASE.contains(&d.as_str())),
                "{layer} is shared base: {deps:?}"
            );
            continue;
        }
        let me = rank(layer).unwrap_or_else(|| panic!("{layer} is in no layer: add it to LAYERS or BASE"));
        for d in deps {
            let ok = BASE.contains(&d.as_str()) || rank(d).is_some_and(|r| r < me);
            assert!(ok, "{layer} imports {d}, a layer above or beside it");
        }
    }
}

#[test]
fn commands_never_import_each_other() {
    let root = src().join("commands");
    let mut checked = 0;
    for (path, text) in sources(&root) {
        let rel = path.strip_prefix(&root).unwrap();
        let me = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if me == "mod" {
            continue;
        }
        checked += 1;
        for p in crate_paths(&code(&text)) {
            if p[0] == "commands" {
                assert!(
                    p.get(1).is_none_or(|c| *c == me),
                    "{}: imports commands::{}",
                    path.display(),
                    p.get(1).map_or("", String::as_str)
                );
            }
        }
    }
    assert!(checked >= 6, "{checked}");
}

#[test]
fn only_the_firewall_runs_iptables_and_nft() {
    let mut offenders = Vec::new();
    for (path, text) in sources(&src()) {
        if path.components().any(|c| c.as_os_str() == "firewall") {
            continue;
        }
        let code = code(&text);
        let needles = [
            "command(\"nft\")",
            "command(\"iptables",
            "Command::new(\"nft\")",
            "Command::new(\"iptables",
        ];
        if needles.iter().any(|n| code.contains(n)) {
            offenders.push(path.display().to_string());
        }
    }
    assert!(offenders.is_empty(), "outside system/firewall/: {offenders:?}");
}

/// A probe is a packet on a production network: only `system/connect.rs`, where every
/// probe is cleared by the route check first, opens an IP socket (its one other connection,
/// `connect_log_sink`, goes to the operator's log collector). (Netlink sockets and the
/// metrics listener are not IP clients.)
#[test]
fn only_connect_rs_opens_ip_sockets() {
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
    let mut seen_guard = false;
    for (path, text) in sources(&src()) {
        let code = code(&text);
        let hits: Vec<&&str> = needles.iter().filter(|n| code.contains(**n)).collect();
        if path.ends_with("system/connect.rs") {
            seen_guard = hits.iter().any(|n| **n == "libc::connect") && code.contains("fn clear(");
        } else if !hits.is_empty() {
            offenders.push(format!("{}: {hits:?}", path.display()));
        }
    }
    assert!(seen_guard, "connect.rs connects, behind its route check");
    assert!(
        offenders.is_empty(),
        "IP sockets outside connect.rs: {offenders:?}"
    );
}

/// Test hooks never reach the binary operators run: every one sits behind the `test-hooks`
/// feature, which only `cargo xtask test` enables.
#[test]
fn test_hooks_only_behind_their_feature() {
    let mut hooks = 0;
    for (path, text) in sources(&src()) {
        let code = code(&text);
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
    assert!(hooks > 0, "the panic hook of the detach test exists");
}

/// Every source file of every crate of the workspace (the lab and the developer tasks
/// included) stays short enough to read: at most 600 lines before its tests.
#[test]
fn no_source_file_is_over_600_lines_before_its_tests() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crates = [
        "tracer/src",
        "tracer-model/src",
        "tracer-common/src",
        "tracer-ebpf/src",
        "xtask/src",
        "tests/lab/src",
        "tests/lab-vmm/src",
    ];
    let mut long = Vec::new();
    for c in crates {
        for (path, text) in sources(&workspace.join(c)) {
            let n = text.lines().take_while(|l| !l.contains("#[cfg(test)]")).count();
            let rel = path
                .strip_prefix(&workspace)
                .unwrap_or(&path)
                .display()
                .to_string();
            let allowed = STILL_LONG
                .iter()
                .find(|(f, _)| *f == rel)
                .map_or(MAX_LINES, |(_, n)| *n);
            if n > allowed {
                long.push(format!(
                    "{}: {n}",
                    path.strip_prefix(&workspace).unwrap_or(&path).display()
                ));
            }
        }
    }
    long.sort();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines before the tests: {long:#?}"
    );
}
