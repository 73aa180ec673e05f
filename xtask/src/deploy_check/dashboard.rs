//! deploy/tracer-dashboard.json: an importable shape (schema, ids, grid positions), no
//! hard-coded datasource, every query's names known to the catalogue and accepted by promtool
//! (as recording rules: promtool checks no bare expression), every metric on a panel.
use std::{collections::BTreeSet, fs};

use anyhow::{Context as _, Result, anyhow, ensure};
use serde_json::Value as Json;

use super::{
    TempFile,
    metrics::{Catalogue, catalogue, check_expr},
    promtool::promtool,
    read,
};

pub(super) fn dashboard() -> Result<()> {
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
pub(super) fn check_dashboard(text: &str, cat: &Catalogue) -> Result<Vec<(String, String)>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::testing::{err, file};

    // The file as it is: what `cargo xtask deploy-check` runs.

    #[test]
    fn dashboard_queries_are_valid_and_known() {
        dashboard().unwrap();
    }

    // The checks catch what they are for: the file broken on purpose.

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
}
