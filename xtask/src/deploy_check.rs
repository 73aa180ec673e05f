//! `cargo xtask deploy-check` (also run by `cargo xtask lint`, and as this module's tests): the
//! operator files in deploy/ checked against each other and against the metrics the watcher
//! registers, so that a renamed metric, a typo in a query or a port changed on one side only
//! fails here rather than in production, silently (an alert that never fires, an empty panel).
//!
//! - tracer-alerts.yml: `promtool check rules`, `promtool test rules` on tracer-alerts.test.yml,
//!   every alert with a severity, the Loki query and the next step, and tested firing and not;
//! - tracer-dashboard.json: importable shape, no hard-coded datasource, every query accepted by
//!   promtool (as recording rules: promtool checks no bare expression), every metric on a panel;
//! - vector-tracer.toml and otel-collector-tracer.yaml: parsed, wired to each other, to the
//!   Nomad job and the systemd unit (ports, addresses, job name), with bounded Loki labels;
//! - in every query: only metrics tracer/src/commands/watch/metrics.rs registers (or that are being
//!   added, [`PENDING`]), with their labels.
//!
//! promtool comes with Debian's prometheus package (`cargo xtask setup`). Without it the
//! promtool steps are skipped with a one-line notice, except in CI (CI=true), where that fails.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{ErrorKind, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value as Json;
use yaml_rust2::{Yaml, YamlLoader};

use crate::toolchain::workspace_root;

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
/// Processors and the exporter of E2B's otel-collector.yaml that the snippet's pipeline uses.
const E2B_PROCESSORS: &[&str] = &["resourcedetection", "transform/set-name", "batch"];
const E2B_EXPORTER: &str = "otlp_http/grafana_cloud";
/// Metrics the deploy files use that metrics.rs does not register (yet), with their labels.
const PENDING: &[(&str, &[&str])] = &[
    // The probe guard (being added): probes refused because the route led off the sandbox's
    // verified host side, and sandboxes whose host side could not be verified.
    ("tracer_probes_refused_total", &["reason"]),
    ("tracer_host_side_unverified_total", &[]),
    // The README documents `outcome` on it; metrics.rs registers a plain gauge. The alert and
    // the panel work either way.
    ("tracer_incidents_open", &["outcome"]),
];
/// Labels a scrape adds: `job` and `instance` (Prometheus), `service_instance_id` (E2B's
/// otel-collector, transform/set-name).
const TARGET_LABELS: &[&str] = &["job", "instance", "service_instance_id"];
/// Every external command gets this long.
const TIMEOUT: Duration = Duration::from_secs(60);

type Check = fn() -> Result<()>;

pub fn run() -> Result<()> {
    let checks: [(&str, Check); 4] = [
        ("tracer-alerts.yml", alerts),
        ("tracer-dashboard.json", dashboard),
        ("vector-tracer.toml", vector),
        ("otel-collector-tracer.yaml", otel),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        if let Err(e) = check() {
            failed.push(format!("deploy/{name}: {e:#}"));
        }
    }
    ensure!(failed.is_empty(), "deploy-check failed:\n{}", failed.join("\n"));
    if PROMTOOL_MISSING.load(Ordering::Relaxed) {
        eprintln!("deploy-check: deploy/ is consistent, except for what promtool checks");
    } else {
        eprintln!("deploy-check: deploy/ is consistent");
    }
    Ok(())
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn read(name: &str) -> Result<String> {
    let path = deploy_dir().join(name);
    fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The alert rules

fn alerts() -> Result<()> {
    let text = read("tracer-alerts.yml")?;
    check_alert_rules(&text, &read("tracer-alerts.test.yml")?, &catalogue()?)?;
    promtool(&["check", "rules", "tracer-alerts.yml"])?;
    promtool(&["test", "rules", "tracer-alerts.test.yml"])?;
    Ok(())
}

/// What promtool does not check: each alert says how bad, which sandboxes (the Loki query by
/// sandboxID) and what next (`tracer trace --probe`); each has a test that fires and one that
/// must not; each uses only metrics the watcher exports.
fn check_alert_rules(rules: &str, tests: &str, cat: &Catalogue) -> Result<()> {
    let doc = yaml(rules)?;
    let test_doc = yaml(tests)?;
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in list(&test_doc["tests"])
        .iter()
        .flat_map(|t| list(&t["alert_rule_test"]))
    {
        let name = case["alertname"].as_str().unwrap_or_default().to_string();
        if list(&case["exp_alerts"]).is_empty() {
            silent.insert(name);
        } else {
            fired.insert(name);
        }
    }
    let mut names = BTreeSet::new();
    for rule in list(&doc["groups"]).iter().flat_map(|g| list(&g["rules"])) {
        let Some(name) = rule["alert"].as_str() else {
            continue;
        };
        ensure!(names.insert(name), "alert {name} is defined twice");
        let expr = rule["expr"]
            .as_str()
            .ok_or_else(|| anyhow!("alert {name}: no expr"))?;
        check_expr(expr, cat).with_context(|| format!("alert {name}"))?;
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        ensure!(
            ["info", "warning", "critical"].contains(&severity),
            "alert {name}: severity label {severity:?} is not info, warning or critical"
        );
        let note = |key: &str| rule["annotations"][key].as_str().unwrap_or_default();
        for key in ["summary", "description"] {
            ensure!(!note(key).is_empty(), "alert {name}: no {key} annotation");
        }
        ensure!(
            note("logql").contains("service=\"tracer\"") && note("logql").contains("sandboxID"),
            "alert {name}: the logql annotation must query the tracer's records by sandboxID"
        );
        ensure!(
            note("next_step").contains("tracer trace --vm <sandboxID> --probe"),
            "alert {name}: the next_step annotation must name `tracer trace --vm <sandboxID> --probe`"
        );
        ensure!(
            fired.contains(name),
            "alert {name}: tracer-alerts.test.yml has no case where it fires"
        );
        ensure!(
            silent.contains(name),
            "alert {name}: tracer-alerts.test.yml has no case where it must not fire"
        );
    }
    ensure!(!names.is_empty(), "no alerting rule found");
    if let Some(stray) = fired.union(&silent).find(|n| !names.contains(n.as_str())) {
        bail!("tracer-alerts.test.yml tests alert {stray}, which is not defined");
    }
    Ok(())
}

/// The `job` that TracerWatcherDown watches: the otel-collector's scrape job must be named so.
fn watched_job(rules: &str) -> Result<String> {
    let doc = yaml(rules)?;
    list(&doc["groups"])
        .iter()
        .flat_map(|g| list(&g["rules"]))
        .filter_map(|r| r["expr"].as_str())
        .find_map(|e| {
            let rest = &e[e.find("up{")?..];
            let job = &rest[rest.find("job=\"")? + 5..];
            Some(job[..job.find('"')?].to_string())
        })
        .ok_or_else(|| anyhow!("no alert on up{{job=\"...\"}} in tracer-alerts.yml"))
}

// ---------------------------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Result<()> {
    let exprs = check_dashboard(&read("tracer-dashboard.json")?, &catalogue()?)?;
    // promtool checks rule files, not expressions: each query becomes a recording rule. JSON is
    // YAML, so serde_json writes the file.
    let rules: Vec<Json> = exprs
        .iter()
        .map(|(panel, expr)| {
            serde_json::json!({
                "record": format!("dashboard:{panel}"),
                "expr": grafana_to_promql(expr),
            })
        })
        .collect();
    let file = TempFile::new("dashboard-rules.yml")?;
    fs::write(
        &file.0,
        serde_json::to_string_pretty(&serde_json::json!({
            "groups": [{"name": "tracer-dashboard", "rules": rules}]
        }))?,
    )?;
    promtool(&["check", "rules", &file.0.to_string_lossy()])?;
    Ok(())
}

/// Checks the dashboard's shape and queries; returns (a name per query, the query).
fn check_dashboard(text: &str, cat: &Catalogue) -> Result<Vec<(String, String)>> {
    let d: Json = serde_json::from_str(text).context("not valid JSON")?;
    let schema = d["schemaVersion"].as_u64().unwrap_or(0);
    ensure!(
        schema >= 36,
        "schemaVersion {schema}: Grafana 9+ dashboards are 36 or later"
    );
    ensure!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "no title");
    let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
    ensure!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "no `datasource` template variable of type datasource for Prometheus"
    );
    check_datasources(&d, "$")?;
    let mut panels = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut used = BTreeSet::new();
    for p in panels {
        let id = p["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("a panel without an id: {}", p["title"]))?;
        let title = p["title"].as_str().unwrap_or_default();
        ensure!(ids.insert(id), "panel id {id} ({title}) is used twice");
        ensure!(p["gridPos"].is_object(), "panel {title:?}: no gridPos");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .ok_or_else(|| anyhow!("panel {title:?}: a target without expr"))?;
            used.extend(check_expr(expr, cat).with_context(|| format!("panel {title:?}"))?);
            let refid = t["refId"].as_str().unwrap_or("A");
            exprs.push((format!("panel_{id}_{refid}"), expr.to_string()));
        }
    }
    ensure!(!exprs.is_empty(), "no query in any panel");
    let missing: Vec<&String> = cat.metrics.keys().filter(|m| !used.contains(*m)).collect();
    ensure!(
        missing.is_empty(),
        "no panel shows {missing:?}: add one (the dashboard is meant to cover every metric)"
    );
    Ok(exprs)
}

/// Every datasource reference is the `datasource` variable (or Grafana's built-in one for
/// annotations): a uid from one Grafana means nothing in another.
fn check_datasources(v: &Json, at: &str) -> Result<()> {
    match v {
        Json::Object(map) => {
            for (k, child) in map {
                if k == "datasource" {
                    let uid = child["uid"].as_str().unwrap_or_default();
                    ensure!(
                        matches!(uid, "${datasource}" | "$datasource" | "-- Grafana --"),
                        "{at}.datasource is {child}: use {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}}"
                    );
                }
                check_datasources(child, &format!("{at}.{k}"))?;
            }
        }
        Json::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                check_datasources(child, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Grafana's variables → values PromQL accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "6h")
}

// ---------------------------------------------------------------------------------------------
// The Vector snippet

fn vector() -> Result<()> {
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
fn check_vector(text: &str) -> Result<u16> {
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

// ---------------------------------------------------------------------------------------------
// The otel-collector snippet

fn otel() -> Result<()> {
    let metrics_addr = watcher_metrics_addr()?;
    let job = watched_job(&read("tracer-alerts.yml")?)?;
    check_otel(&read("otel-collector-tracer.yaml")?, &metrics_addr, &job)
}

/// The `--metrics` address of the Nomad job, which the systemd unit must share.
fn watcher_metrics_addr() -> Result<String> {
    let nomad = read("tracer-watch.nomad.hcl")?;
    let addr = nomad
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let rest = &l[l.find("\"--metrics\"")? + "\"--metrics\"".len()..];
            let rest = &rest[rest.find('"')? + 1..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .ok_or_else(|| anyhow!("no \"--metrics\", \"<addr>\" in tracer-watch.nomad.hcl"))?;
    let unit = read("tracer-watch.service")?;
    ensure!(
        unit.contains(&format!("--metrics {addr}")),
        "tracer-watch.service does not serve metrics on {addr} like the Nomad job"
    );
    Ok(addr)
}

fn check_otel(text: &str, metrics_addr: &str, job: &str) -> Result<()> {
    let doc = yaml(text)?;
    let receiver = &doc["receivers"]["prometheus/tracer"];
    ensure!(!receiver.is_badvalue(), "no receivers.prometheus/tracer");
    let scrapes = list(&receiver["config"]["scrape_configs"]);
    ensure!(
        scrapes.len() == 1,
        "prometheus/tracer: one scrape config expected"
    );
    let scrape = &scrapes[0];
    ensure!(
        scrape["job_name"].as_str() == Some(job),
        "prometheus/tracer: job_name must be {job:?} (TracerWatcherDown watches up{{job=\"{job}\"}})"
    );
    let targets: Vec<&str> = list(&scrape["static_configs"])
        .iter()
        .flat_map(|c| list(&c["targets"]))
        .filter_map(Yaml::as_str)
        .collect();
    ensure!(
        targets == [metrics_addr],
        "prometheus/tracer: targets {targets:?}, but the watcher serves metrics on {metrics_addr}"
    );

    let filter: Vec<&str> = list(&doc["processors"]["filter/tracer"]["metrics"]["include"]["metric_names"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    ensure!(
        filter.contains(&"^tracer_.*") && filter.contains(&"^up$"),
        "filter/tracer must keep ^tracer_.* and ^up$ (the metrics and the alert on up)"
    );

    let pipeline = &doc["service"]["pipelines"]["metrics/tracer"];
    ensure!(!pipeline.is_badvalue(), "no service.pipelines.metrics/tracer");
    let names = |key: &str| -> Vec<String> {
        list(&pipeline[key])
            .iter()
            .filter_map(Yaml::as_str)
            .map(str::to_string)
            .collect()
    };
    ensure!(
        names("receivers") == ["prometheus/tracer"],
        "metrics/tracer: its receiver must be prometheus/tracer alone"
    );
    let own = doc["processors"].as_hash().cloned().unwrap_or_default();
    for p in names("processors") {
        ensure!(
            p != "filter/only_client_allocs",
            "metrics/tracer: filter/only_client_allocs keeps nomad_client_* only"
        );
        ensure!(
            own.contains_key(&Yaml::String(p.clone())) || E2B_PROCESSORS.contains(&p.as_str()),
            "metrics/tracer: processor {p} is defined neither here nor in E2B's file"
        );
    }
    ensure!(
        names("processors").contains(&"filter/tracer".to_string()),
        "metrics/tracer: filter/tracer missing"
    );
    ensure!(
        names("exporters") == [E2B_EXPORTER],
        "metrics/tracer: the exporter must be E2B's {E2B_EXPORTER}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The metrics the watcher registers

/// Metric name (as scraped) → its labels.
struct Catalogue {
    metrics: BTreeMap<String, BTreeSet<String>>,
}

fn catalogue() -> Result<Catalogue> {
    let path = workspace_root().join("tracer/src/commands/watch/metrics.rs");
    let src = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut cat = parse_metrics_rs(&src).with_context(|| format!("reading {}", path.display()))?;
    for (name, labels) in PENDING {
        cat.metrics
            .entry(name.to_string())
            .or_default()
            .extend(labels.iter().map(|l| l.to_string()));
    }
    Ok(cat)
}

/// Reads the registrations in metrics.rs: `registry.register("name", "help", m.field...)`, each
/// field's type in `pub struct Metrics` (Counter → `name_total`, as prometheus-client exports
/// it), and a Family's labels from its label struct's fields.
fn parse_metrics_rs(src: &str) -> Result<Catalogue> {
    let structs = struct_fields(src);
    let fields = structs
        .get("Metrics")
        .ok_or_else(|| anyhow!("no `pub struct Metrics`"))?;
    let mut metrics = BTreeMap::new();
    for call in src.split(".register(").skip(1) {
        let name = call
            .split('"')
            .nth(1)
            .ok_or_else(|| anyhow!("a register() call without a name"))?;
        // After the name's and the help's quotes.
        let field = call
            .splitn(5, '"')
            .nth(4)
            .and_then(|rest| rest.split("m.").nth(1))
            .map(|r| {
                r.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .ok_or_else(|| anyhow!("register({name:?}): no `m.<field>`"))?;
        let ty = fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, t)| t.as_str())
            .ok_or_else(|| anyhow!("register({name:?}): field {field} not in struct Metrics"))?;
        let counter = if ty.contains("Counter") {
            true
        } else if ty.contains("Gauge") {
            false
        } else {
            bail!("register({name:?}): type {ty} is neither a Counter nor a Gauge");
        };
        let labels = match ty.strip_prefix("Family<") {
            Some(rest) => {
                let label_ty = rest.split(',').next().unwrap_or_default().trim();
                structs
                    .get(label_ty)
                    .ok_or_else(|| anyhow!("register({name:?}): label struct {label_ty} not found"))?
                    .iter()
                    .map(|(f, _)| f.clone())
                    .collect()
            }
            None => BTreeSet::new(),
        };
        let exported = if counter {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        metrics.insert(exported, labels);
    }
    ensure!(metrics.len() >= 10, "only {} registrations found", metrics.len());
    Ok(Catalogue { metrics })
}

/// `pub struct Name { pub field: Type, ... }` → Name → [(field, Type)].
fn struct_fields(src: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for chunk in src.split("pub struct ").skip(1) {
        let Some((name, body)) = chunk.split_once('{') else {
            continue;
        };
        let body = body.split("\n}").next().unwrap_or_default();
        let fields = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .filter_map(|l| l.split_once(':'))
            .map(|(f, t)| (f.trim().to_string(), t.trim().trim_end_matches(',').to_string()))
            .collect();
        out.insert(name.trim().to_string(), fields);
    }
    out
}

/// Checks a query's metric and label names against the catalogue; returns its metrics.
fn check_expr(expr: &str, cat: &Catalogue) -> Result<BTreeSet<String>> {
    let (metrics, labels) = promql_refs(expr);
    ensure!(!metrics.is_empty(), "{expr:?} reads no metric");
    let mut allowed: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for m in &metrics {
        if m == "up" {
            continue;
        }
        let labels = cat.metrics.get(m).ok_or_else(|| {
            anyhow!(
                "{expr:?}: no metric {m} (tracer/src/commands/watch/metrics.rs registers {:?})",
                cat.metrics.keys()
            )
        })?;
        allowed.extend(labels.iter().cloned());
    }
    if let Some(l) = labels.iter().find(|l| !allowed.contains(*l)) {
        bail!("{expr:?}: label {l} is not one of {metrics:?}'s ({allowed:?})");
    }
    Ok(metrics.into_iter().filter(|m| m != "up").collect())
}

/// The metric names and label names a PromQL query mentions. A scanner, not a parser (promtool
/// parses): it skips strings, ranges and Grafana variables, takes names in `{...}` and in
/// `by/without/on/ignoring/group_*(...)` as labels, a name followed by `(` as a function, and
/// any other name that is neither a keyword nor an aggregation as a metric.
fn promql_refs(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Operators and numbers, then aggregations (`sum by (l) (...)`: no `(` right after the name).
    const KEYWORDS: &str = "and or unless bool offset atan2 inf nan \
        sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio";
    let c: Vec<char> = expr.chars().collect();
    let is_start = |ch: char| ch.is_ascii_alphabetic() || ch == '_' || ch == ':';
    let is_part = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < c.len() && is_part(c[*i]) {
            *i += 1;
        }
        c[start..*i].iter().collect()
    };
    let skip_string = |i: &mut usize| {
        let q = c[*i];
        *i += 1;
        while *i < c.len() && c[*i] != q {
            if c[*i] == '\\' && q != '`' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    let next_non_space = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            skip_string(&mut i);
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
        } else if ch == '{' {
            // Matchers: a label name, an operator, a string; the names are labels.
            i += 1;
            while i < c.len() && c[i] != '}' {
                if c[i] == '"' || c[i] == '\'' || c[i] == '`' {
                    skip_string(&mut i);
                } else if is_start(c[i]) {
                    labels.insert(ident(&mut i));
                } else {
                    i += 1;
                }
            }
        } else if ch == '$' {
            i += 1;
            ident(&mut i);
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if is_start(ch) {
            let name = ident(&mut i);
            let after = next_non_space(i);
            let call = c.get(after) == Some(&'(');
            if LABEL_LISTS.contains(&name.as_str()) {
                if call {
                    i = after + 1;
                    while i < c.len() && c[i] != ')' {
                        if is_start(c[i]) {
                            labels.insert(ident(&mut i));
                        } else {
                            i += 1;
                        }
                    }
                }
            } else if !call && !KEYWORDS.split_whitespace().any(|k| k == name) {
                metrics.insert(name);
            }
        } else {
            i += 1;
        }
    }
    (metrics, labels)
}

// ---------------------------------------------------------------------------------------------
// promtool, YAML, temporary files

/// Set once promtool was found missing (and said so).
static PROMTOOL_MISSING: AtomicBool = AtomicBool::new(false);

/// Runs promtool in deploy/ (where the rule files name each other). Ok(false): not installed,
/// outside CI, and said so.
fn promtool(args: &[&str]) -> Result<bool> {
    promtool_in(&deploy_dir(), args)
}

fn promtool_in(dir: &Path, args: &[&str]) -> Result<bool> {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(dir);
    match run_with_timeout(&mut cmd, TIMEOUT) {
        Ok(_) => Ok(true),
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == ErrorKind::NotFound) =>
        {
            let msg =
                "promtool is not installed: run `cargo xtask setup` (Debian's prometheus package has it)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("{msg}");
            }
            if !PROMTOOL_MISSING.swap(true, Ordering::Relaxed) {
                eprintln!("deploy-check: {msg}; its checks are skipped.");
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Runs a command to completion within `limit` (killed after it); fails with its output when it
/// fails. A spawn error is returned as the io::Error it is.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(anyhow::Error::new)?;
    // Drained on threads: a child blocked on a full pipe would look like a hang.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    ensure!(status.success(), "{cmd:?} failed ({status}):\n{out}{err}");
    Ok(out)
}

fn yaml(text: &str) -> Result<Yaml> {
    let mut docs = YamlLoader::load_from_str(text).context("not valid YAML")?;
    ensure!(docs.len() == 1, "{} YAML documents, one expected", docs.len());
    Ok(docs.remove(0))
}

/// A YAML sequence, or nothing.
fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or_default()
}

/// A file in the temporary directory, removed on drop; unique per process and call (the tests
/// run in parallel).
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xtask-deploy-check-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        Ok(Self(dir.join(name)))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The files as they are: what `cargo xtask deploy-check` runs.

    #[test]
    fn alert_rules_check_and_pass_their_tests() {
        alerts().unwrap();
    }

    #[test]
    fn dashboard_queries_are_valid_and_known() {
        dashboard().unwrap();
    }

    #[test]
    fn vector_snippet_takes_the_watcher_records() {
        vector().unwrap();
    }

    #[test]
    fn otel_snippet_scrapes_the_watcher() {
        otel().unwrap();
    }

    // The checks catch what they are for: each file broken on purpose.

    fn file(name: &str) -> String {
        read(name).unwrap()
    }

    fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.expect_err("the broken file passed"))
    }

    #[test]
    fn catalogue_reads_metrics_rs() {
        let cat = catalogue().unwrap();
        let drops = &cat.metrics["tracer_drops_total"];
        assert_eq!(
            drops.iter().map(String::as_str).collect::<Vec<_>>(),
            ["hook", "netns_kind", "reason", "table"]
        );
        assert!(cat.metrics["tracer_zoom_queued"].is_empty());
        assert!(cat.metrics.contains_key("tracer_bpf_program_run_seconds_total"));
        assert!(cat.metrics.contains_key("tracer_probes_refused_total"));
        assert!(
            cat.metrics.keys().all(|m| m.starts_with("tracer_")),
            "filter/tracer keeps tracer_*"
        );
    }

    #[test]
    fn promql_scanner() {
        let (m, l) = promql_refs(
            r#"sum without (netns_kind, table) (rate(tracer_drops_total{hook!="unknown"}[$__rate_interval])) > 0.05 or up{job="tracer-watch"} == 0 unless x offset 30m"#,
        );
        assert_eq!(m, ["tracer_drops_total", "up", "x"].map(String::from).into());
        assert_eq!(l, ["hook", "job", "netns_kind", "table"].map(String::from).into());
    }

    #[test]
    fn unknown_metric_or_label_fails() {
        let cat = catalogue().unwrap();
        assert!(err(check_expr("rate(tracer_drop_total[5m])", &cat)).contains("no metric tracer_drop_total"));
        assert!(err(check_expr("sum by (reasn) (tracer_drops_total)", &cat)).contains("label reasn"));
        assert!(check_expr("sum by (reason, instance) (tracer_drops_total)", &cat).is_ok());
    }

    #[test]
    fn broken_alert_rules_fail() {
        let (rules, tests, cat) = (
            file("tracer-alerts.yml"),
            file("tracer-alerts.test.yml"),
            catalogue().unwrap(),
        );
        let broken = rules.replace("tracer_zoom_queued > 0", "tracer_zoom_queue > 0");
        assert!(err(check_alert_rules(&broken, &tests, &cat)).contains("no metric tracer_zoom_queue"));
        let broken = rules.replacen("tracer trace --vm <sandboxID> --probe", "tracer trace", 1);
        assert!(err(check_alert_rules(&broken, &tests, &cat)).contains("next_step"));
        let broken = rules.replacen("severity: warning", "severity: page", 1);
        assert!(err(check_alert_rules(&broken, &tests, &cat)).contains("severity"));
        let untested = tests.replace("alertname: TracerDecodeErrors", "alertname: TracerDecodeErrorz");
        assert!(err(check_alert_rules(&rules, &untested, &cat)).contains("TracerDecodeErrors"));
        assert!(err(check_alert_rules("groups: [", &tests, &cat)).contains("YAML"));
    }

    #[test]
    fn promtool_catches_a_wrong_alert() {
        // promtool's own unit tests, on a copy whose rules no longer meet them.
        let rules = TempFile::new("tracer-alerts.yml").unwrap();
        fs::write(&rules.0, file("tracer-alerts.yml").replace("for: 5m", "for: 50m")).unwrap();
        let dir = rules.0.parent().unwrap();
        fs::write(dir.join("tracer-alerts.test.yml"), file("tracer-alerts.test.yml")).unwrap();
        match promtool_in(dir, &["test", "rules", "tracer-alerts.test.yml"]) {
            Ok(false) => {} // not installed, outside CI: said so
            r => assert!(err(r).contains("FAILED")),
        }
    }

    #[test]
    fn broken_dashboard_fails() {
        let (d, cat) = (file("tracer-dashboard.json"), catalogue().unwrap());
        assert!(err(check_dashboard(&d[..d.find("\"panels\"").unwrap()], &cat)).contains("JSON"));
        let typo = d.replacen("tracer_zoom_active", "tracer_zoom_actve", 1);
        assert!(err(check_dashboard(&typo, &cat)).contains("tracer_zoom_actve"));
        let uid = d.replacen("\"uid\": \"${datasource}\"", "\"uid\": \"P1809F7CD0C75ACF3\"", 1);
        assert!(err(check_dashboard(&uid, &cat)).contains("datasource"));
        let old = d.replace("\"schemaVersion\": 39", "\"schemaVersion\": 27");
        assert!(err(check_dashboard(&old, &cat)).contains("schemaVersion"));
        let no_var = d.replace("\"name\": \"datasource\"", "\"name\": \"ds\"");
        assert!(err(check_dashboard(&no_var, &cat)).contains("template variable"));
        let mut fewer = cat.metrics.clone();
        fewer.insert("tracer_new_total".into(), BTreeSet::new());
        assert!(err(check_dashboard(&d, &Catalogue { metrics: fewer })).contains("tracer_new_total"));
    }

    #[test]
    fn promtool_rejects_a_bad_dashboard_query() {
        // Passes the scanner (names are right), fails the parser.
        let file = TempFile::new("rules.yml").unwrap();
        fs::write(
            &file.0,
            r#"{"groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum by (reason) (rate(tracer_drops_total[5m])"}]}]}"#,
        )
        .unwrap();
        match promtool(&["check", "rules", &file.0.to_string_lossy()]) {
            Ok(false) => {}
            r => assert!(err(r).contains("failed")),
        }
    }

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

    #[test]
    fn broken_otel_snippet_fails() {
        let o = file("otel-collector-tracer.yaml");
        check_otel(&o, "127.0.0.1:9464", "tracer-watch").unwrap();
        assert!(err(check_otel(&o, "127.0.0.1:9465", "tracer-watch")).contains("9465"));
        assert!(err(check_otel(&o, "127.0.0.1:9464", "tracer")).contains("job_name"));
        let filtered = o.replace("- filter/tracer\n", "- filter/only_client_allocs\n");
        assert!(err(check_otel(&filtered, "127.0.0.1:9464", "tracer-watch")).contains("only_client_allocs"));
        let bad = o.replace("  filter/tracer:\n", "  filter/tracer\n");
        assert!(err(check_otel(&bad, "127.0.0.1:9464", "tracer-watch")).contains("YAML"));
    }

    #[test]
    fn a_hanging_command_is_stopped() {
        let start = Instant::now();
        let r = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300));
        assert!(err(r).contains("did not finish"));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
