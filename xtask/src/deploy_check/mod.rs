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
//!   added, `metrics::PENDING`), with their labels.
//!
//! promtool comes with Debian's prometheus package (`cargo xtask setup`). Without it the
//! promtool steps are skipped with a one-line notice, except in CI (CI=true), where that fails.
//!
//! One module per file checked (`alerts`, `dashboard`, `vector`, `otel`), `metrics` for the
//! catalogue of what the watcher registers and the PromQL checks against it, `promtool` for
//! running it; this module runs the checks and holds the file helpers they share.
mod alerts;
mod dashboard;
mod metrics;
mod otel;
mod promtool;
mod vector;

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context as _, Result, ensure};
use yaml_rust2::{Yaml, YamlLoader};

use crate::toolchain::workspace_root;

type Check = fn() -> Result<()>;

pub fn run() -> Result<()> {
    let checks: [(&str, Check); 4] = [
        ("tracer-alerts.yml", alerts::alerts),
        ("tracer-dashboard.json", dashboard::dashboard),
        ("vector-tracer.toml", vector::vector),
        ("otel-collector-tracer.yaml", otel::otel),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        if let Err(e) = check() {
            failed.push(format!("deploy/{name}: {e:#}"));
        }
    }
    ensure!(failed.is_empty(), "deploy-check failed:\n{}", failed.join("\n"));
    if promtool::PROMTOOL_MISSING.load(Ordering::Relaxed) {
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

/// What the tests of every check share.
#[cfg(test)]
mod testing {
    use anyhow::Result;

    use super::read;

    pub(super) fn file(name: &str) -> String {
        read(name).unwrap()
    }

    pub(super) fn err<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.expect_err("the broken file passed"))
    }
}
