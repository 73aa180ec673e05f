//! deploy/vector-tracer.toml: the Vector snippet that takes the watcher's records to Loki,
//! checked for what E2B's templating would take, its wiring, the fields and record types it
//! handles, the VRL functions it calls, and Loki labels with few values; its port matches the
//! Nomad job's `--log-http`.
use std::collections::BTreeSet;

use anyhow::{Context as _, Result, anyhow, ensure};

use super::read;

/// What every record posted by `--log-http` carries at the top level (the watcher's side of the
/// contract with vector-tracer.toml).
const WATCHER_FIELDS: &[&str] = &["sandboxID", "timestamp", "service", "node", "type"];
/// The record kinds (`type`): the only values of the `type` label.
const RECORD_TYPES: &[&str] = &["incident", "repeat", "resolved", "closed"];
/// Loki labels the Vector sink may set: each has few values (a label value is a stream).
const BOUNDED_LOKI_LABELS: &[&str] = &["source", "service", "type", "node"];
/// VRL functions the snippet may call: the ones E2B's own remap uses and a few of the same
/// standard library. A typo would stop Vector, and with it every log of the node; no VRL
/// compiler is at hand here (the `vrl` crate is far too heavy for xtask).
const VRL_FUNCTIONS: &[&str] = &[
    "del",
    "exists",
    "parse_timestamp",
    "now",
    "is_string",
    "includes",
    "get_hostname",
    "string",
    "to_string",
];

pub(super) fn vector() -> Result<()> {
    let port = check_vector(&read("vector-tracer.toml")?)?;
    let nomad = read("tracer-watch.nomad.hcl")?;
    let url = format!("--log-http\", \"http://127.0.0.1:{port}/\"");
    ensure!(
        nomad.contains(&url),
        "tracer-watch.nomad.hcl does not show `{url}` (the snippet listens on 127.0.0.1:{port})"
    );
    Ok(())
}

/// Checks the snippet; returns the port its source listens on.
pub(super) fn check_vector(text: &str) -> Result<u16> {
    // Terraform's templatefile() renders the file E2B merges it into, then a Nomad template
    // with [[ ]] delimiters: anything they would take must not be here.
    ensure!(!text.contains("%{"), "`%{{` would be a templatefile() directive");
    ensure!(
        text.replace("${loki_endpoint}", "").find("${").is_none(),
        "`${{` other than ${{loki_endpoint}} would be a templatefile() variable E2B does not define"
    );
    ensure!(
        !text.contains("[[") && !text.contains("]]"),
        "`[[`/`]]` are the delimiters of E2B's Nomad template (jobs/logs-collector.hcl)"
    );
    let doc: toml::Table = text.parse().context("not valid TOML")?;
    let table = |key: &str| {
        doc.get(key)
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default()
    };
    let (sources, transforms, sinks) = (table("sources"), table("transforms"), table("sinks"));
    let s = |v: &toml::Value, key: &str| {
        v.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };

    let mut port = None;
    for (name, src) in &sources {
        ensure!(
            s(src, "type") == "http_server",
            "source {name}: not an http_server"
        );
        ensure!(
            s(src, "encoding") == "ndjson",
            "source {name}: the watcher posts NDJSON"
        );
        let addr = s(src, "address");
        let p = addr
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("source {name}: address {addr:?} is not 127.0.0.1:<port>"))?;
        port = Some(p);
    }
    let port = port.ok_or_else(|| anyhow!("no source"))?;

    let defined: BTreeSet<&String> = sources.keys().chain(transforms.keys()).collect();
    let inputs_ok = |name: &str, c: &toml::Value| -> Result<()> {
        let inputs = c
            .get("inputs")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        ensure!(!inputs.is_empty(), "{name}: no inputs");
        for i in inputs {
            let i = i.as_str().unwrap_or_default().to_string();
            ensure!(
                defined.contains(&i),
                "{name}: input {i:?} is not defined in the snippet"
            );
        }
        Ok(())
    };

    let mut vrl = String::new();
    for (name, t) in &transforms {
        ensure!(s(t, "type") == "remap", "transform {name}: not a remap");
        inputs_ok(name, t)?;
        vrl.push_str(&s(t, "source"));
    }
    for field in WATCHER_FIELDS {
        ensure!(
            vrl.contains(&format!(".{field}")),
            "the remap does not handle .{field}, a field every watcher record carries"
        );
    }
    for kind in RECORD_TYPES {
        ensure!(
            vrl.contains(&format!("\"{kind}\"")),
            "the remap does not list record type {kind:?}"
        );
    }
    for f in vrl_calls(&vrl) {
        ensure!(
            VRL_FUNCTIONS.contains(&f.as_str()),
            "the remap calls {f}(), not among the VRL functions checked to exist ({VRL_FUNCTIONS:?})"
        );
    }

    ensure!(!sinks.is_empty(), "no sink");
    for (name, sink) in &sinks {
        ensure!(s(sink, "type") == "loki", "sink {name}: not a loki sink");
        inputs_ok(name, sink)?;
        ensure!(
            s(sink, "endpoint") == "${loki_endpoint}",
            "sink {name}: endpoint must be E2B's ${{loki_endpoint}}"
        );
        let labels = sink
            .get("labels")
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        for (k, v) in &labels {
            ensure!(
                BOUNDED_LOKI_LABELS.contains(&k.as_str()),
                "sink {name}: label {k:?} is not one of the bounded ones {BOUNDED_LOKI_LABELS:?}"
            );
            ensure!(
                !v.as_str().unwrap_or_default().contains("sandboxID"),
                "sink {name}: label {k} carries the sandbox id (a stream per sandbox)"
            );
        }
        for k in ["service", "type", "node"] {
            let want = format!("{{{{ {k} }}}}");
            ensure!(
                labels.get(k).and_then(|v| v.as_str()) == Some(want.as_str()),
                "sink {name}: label {k} must be {want}"
            );
        }
    }
    Ok(port)
}

/// Names called in a VRL program (`name(` or `name!(`), outside strings and comments.
fn vrl_calls(vrl: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in vrl.lines() {
        let code = strip_strings(line);
        let code = code.split('#').next().unwrap_or_default();
        let chars: Vec<char> = code.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i].is_ascii_alphabetic() || chars[i] == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let preceded_by_dot = start > 0 && chars[start - 1] == '.';
                let mut j = i;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if !preceded_by_dot && chars.get(j) == Some(&'(') {
                    out.insert(chars[start..i].iter().collect());
                }
            } else {
                i += 1;
            }
        }
    }
    out
}

/// A line with its string literals emptied (VRL's `"..."` and `'...'`).
fn strip_strings(line: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in line.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(_) => {}
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::testing::{err, file};

    // The file as it is: what `cargo xtask deploy-check` runs.

    #[test]
    fn vector_snippet_takes_the_watcher_records() {
        vector().unwrap();
    }

    // The checks catch what they are for: the file broken on purpose.

    #[test]
    fn broken_vector_snippet_fails() {
        let v = file("vector-tracer.toml");
        check_vector(&v).unwrap();
        assert!(
            err(check_vector(&v.replacen(
                "[sinks.tracer_loki]",
                "[sinks.tracer_loki",
                1
            )))
            .contains("TOML")
        );
        let labelled = v.replace(
            "node = \"{{ node }}\"",
            "node = \"{{ node }}\"\nsandboxID = \"{{ sandboxID }}\"",
        );
        assert!(err(check_vector(&labelled)).contains("sandboxID"));
        let forgot = v.replace(".node", ".host");
        assert!(err(check_vector(&forgot)).contains(".node"));
        let typo = v.replace("get_hostname()", "get_host_name()");
        assert!(err(check_vector(&typo)).contains("get_host_name"));
        let tf = v.replace("127.0.0.1:30007", "127.0.0.1:${tracer_port}");
        assert!(err(check_vector(&tf)).contains("templatefile"));
        let wired = v.replace(
            "inputs = [\"add_source_tracer\"]",
            "inputs = [\"add_source_tracr\"]",
        );
        assert!(err(check_vector(&wired)).contains("add_source_tracr"));
    }
}
