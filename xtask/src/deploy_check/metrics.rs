//! The metrics the watcher registers (read from tracer/src/commands/watch/metrics.rs, with
//! those being added), and the check every query of the deploy files goes through: its metric
//! and label names must be among them. A PromQL scanner finds the names.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::toolchain::workspace_root;

/// Metrics the deploy files use that metrics.rs does not register (yet), with their labels:
/// none now (each one added here leaves again with the commit that registers it).
const PENDING: &[(&str, &[&str])] = &[];
/// Labels a scrape adds: `job` and `instance` (Prometheus), `service_instance_id` (E2B's
/// otel-collector, transform/set-name).
const TARGET_LABELS: &[&str] = &["job", "instance", "service_instance_id"];

/// Metric name (as scraped) → its labels.
pub(super) struct Catalogue {
    pub(super) metrics: BTreeMap<String, BTreeSet<String>>,
}

pub(super) fn catalogue() -> Result<Catalogue> {
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
pub(super) fn check_expr(expr: &str, cat: &Catalogue) -> Result<BTreeSet<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::testing::err;

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
            cat.metrics["tracer_incidents_open"].is_empty(),
            "a plain gauge: no outcome"
        );
        assert_eq!(
            cat.metrics["tracer_log_records_dropped_total"]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["reason"]
        );
        assert!(cat.metrics["tracer_log_records_sent_total"].is_empty());
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
        assert!(err(check_expr("sum by (outcome) (tracer_incidents_open)", &cat)).contains("label outcome"));
    }
}
