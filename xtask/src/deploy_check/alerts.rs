//! deploy/tracer-alerts.yml: promtool's checks and unit tests (tracer-alerts.test.yml), and
//! what promtool does not check: a severity, the Loki query and the next step on every alert,
//! a test where each fires and one where it must not, only metrics the watcher exports.
use std::collections::BTreeSet;

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use super::{
    list,
    metrics::{Catalogue, catalogue, check_expr},
    promtool::promtool,
    read, yaml,
};

pub(super) fn alerts() -> Result<()> {
    let text = read("tracer-alerts.yml")?;
    check_alert_rules(&text, &read("tracer-alerts.test.yml")?, &catalogue()?)?;
    promtool(&["check", "rules", "tracer-alerts.yml"])?;
    promtool(&["test", "rules", "tracer-alerts.test.yml"])?;
    Ok(())
}

/// What promtool does not check: each alert says how bad, which sandboxes (the Loki query by
/// sandboxID) and what next (`tracer trace --probe`); each has a test that fires and one that
/// must not; each uses only metrics the watcher exports.
pub(super) fn check_alert_rules(rules: &str, tests: &str, cat: &Catalogue) -> Result<()> {
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
pub(super) fn watched_job(rules: &str) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::deploy_check::{
        TempFile,
        promtool::promtool_in,
        testing::{err, file},
    };

    // The file as it is: what `cargo xtask deploy-check` runs.

    #[test]
    fn alert_rules_check_and_pass_their_tests() {
        alerts().unwrap();
    }

    // The checks catch what they are for: the file broken on purpose.

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
}
