//! deploy/otel-collector-tracer.yaml: the otel-collector snippet that scrapes the watcher,
//! wired to the Nomad job and the systemd unit (the metrics address), to the alert on `up`
//! (the job name) and to the processors and exporter of E2B's own collector file.
use anyhow::{Result, anyhow, ensure};
use yaml_rust2::Yaml;

use super::{alerts::watched_job, list, read, yaml};

/// Processors and the exporter of E2B's otel-collector.yaml that the snippet's pipeline uses.
const E2B_PROCESSORS: &[&str] = &["resourcedetection", "transform/set-name", "batch"];
const E2B_EXPORTER: &str = "otlp_http/grafana_cloud";

pub(super) fn otel() -> Result<()> {
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

pub(super) fn check_otel(text: &str, metrics_addr: &str, job: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::testing::{err, file};

    // The file as it is: what `cargo xtask deploy-check` runs.

    #[test]
    fn otel_snippet_scrapes_the_watcher() {
        otel().unwrap();
    }

    // The checks catch what they are for: the file broken on purpose.

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
}
