//! Prometheus metrics (`--metrics ADDR`): what the watcher saw and its own health. Labels are
//! bounded (no sandbox id, no port, no address): one series per outcome, per drop place class
//! and reason, per program. Served over plain HTTP on a thread of its own.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `host` (the orchestrator's side), `sandbox` (a slot's namespace) or `other`.
    pub netns_kind: String,
    /// Netfilter hook, or `none` (not in netfilter) or `unknown` (seen before a zoom-in).
    pub hook: String,
    pub table: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `host_side` (the veth pair changed), `no_route`, `elsewhere` (the route led off the
    /// sandbox's host side).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogDropLabels {
    /// Why records posted by `--log-http` were dropped: `full` (the queue was full: the
    /// oldest go), `too_large` (one record over the queue's byte cap), `rejected` (the
    /// collector answered 4xx: retrying would not help), `exit` (still waiting when the
    /// watcher exited).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

pub struct Metrics {
    registry: Registry,
    pub attempts: Family<OutcomeLabels, Counter>,
    pub drops: Family<DropLabels, Counter>,
    pub incidents: Family<OutcomeLabels, Counter>,
    pub incidents_open: Gauge,
    pub sandboxes: Gauge,
    pub zoom_active: Gauge,
    pub zoom_queued: Gauge,
    pub zooms: Counter,
    pub events_lost: Counter,
    pub decode_errors: Counter,
    pub attach_failures: Counter,
    pub shared_localizations: Counter,
    pub probes_refused: Family<ReasonLabels, Counter>,
    pub host_side_unverified: Counter,
    pub program_runs: Family<ProgramLabels, Counter>,
    pub program_run_seconds: Family<ProgramLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub log_records_sent: Counter,
    pub log_records_dropped: Family<LogDropLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            attempts: Family::default(),
            drops: Family::default(),
            incidents: Family::default(),
            incidents_open: Gauge::default(),
            sandboxes: Gauge::default(),
            zoom_active: Gauge::default(),
            zoom_queued: Gauge::default(),
            zooms: Counter::default(),
            events_lost: Counter::default(),
            decode_errors: Counter::default(),
            attach_failures: Counter::default(),
            shared_localizations: Counter::default(),
            probes_refused: Family::default(),
            host_side_unverified: Counter::default(),
            program_runs: Family::default(),
            program_run_seconds: Family::default(),
            log_records_sent: Counter::default(),
            log_records_dropped: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tracer_envd_attempts",
            "envd connection attempts seen, by how they ended (connected, refused, gave_up, late)",
            m.attempts.clone(),
        );
        registry.register(
            "tracer_drops",
            "envd handshake packets dropped, by namespace kind, netfilter hook, table and kernel reason",
            m.drops.clone(),
        );
        registry.register(
            "tracer_incidents",
            "incidents opened, by verdict",
            m.incidents.clone(),
        );
        registry.register(
            "tracer_incidents_open",
            "incidents open now",
            m.incidents_open.clone(),
        );
        registry.register(
            "tracer_sandboxes_watched",
            "sandboxes followed now",
            m.sandboxes.clone(),
        );
        registry.register(
            "tracer_zoom_active",
            "zoom-ins attached now",
            m.zoom_active.clone(),
        );
        registry.register(
            "tracer_zoom_queued",
            "zoom-ins waiting for a free slot",
            m.zoom_queued.clone(),
        );
        registry.register("tracer_zooms", "zoom-ins started", m.zooms.clone());
        registry.register(
            "tracer_events_lost",
            "kernel events that did not fit in the ring buffer",
            m.events_lost.clone(),
        );
        registry.register(
            "tracer_decode_errors",
            "kernel event records that could not be decoded",
            m.decode_errors.clone(),
        );
        registry.register(
            "tracer_attach_failures",
            "zoom-ins or devices the programs could not attach to",
            m.attach_failures.clone(),
        );
        registry.register(
            "tracer_shared_localizations",
            "incidents localized by another sandbox's host-side verdict, confirmed on their own attempt",
            m.shared_localizations.clone(),
        );
        registry.register(
            "tracer_probes_refused",
            "probes not sent because the route led off the sandbox's verified host side, by reason",
            m.probes_refused.clone(),
        );
        registry.register(
            "tracer_host_side_unverified",
            "zoom-ins on a sandbox whose host side could not be verified (only its namespace was attached)",
            m.host_side_unverified.clone(),
        );
        registry.register(
            "tracer_bpf_program_runs",
            "runs of the tracer's kernel programs (kernel.bpf_stats_enabled=1)",
            m.program_runs.clone(),
        );
        registry.register(
            "tracer_bpf_program_run_seconds",
            "time spent in the tracer's kernel programs (kernel.bpf_stats_enabled=1)",
            m.program_run_seconds.clone(),
        );
        registry.register(
            "tracer_log_records_sent",
            "records the log collector accepted (--log-http)",
            m.log_records_sent.clone(),
        );
        registry.register(
            "tracer_log_records_dropped",
            "records that never reached the log collector (--log-http), by reason (full, too_large, rejected, exit)",
            m.log_records_dropped.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics exposition.
    pub fn render(&self) -> String {
        self.catch_up_refused();
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The probe guard's counts of this process (it keeps them; the metrics mirror them).
    fn catch_up_refused(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for (reason, total) in [
            ("host_side", &crate::system::connect::WITHHELD_HOST_SIDE),
            ("no_route", &crate::system::connect::WITHHELD_NO_ROUTE),
            ("elsewhere", &crate::system::connect::WITHHELD_ELSEWHERE),
        ] {
            let labels = ReasonLabels {
                reason: reason.into(),
            };
            catch_up(&self.probes_refused.get_or_create(&labels), total.load(Relaxed));
        }
    }

    /// The classic Prometheus text format (what `promtool check metrics` and older scrapers
    /// read): counters' HELP and TYPE name the `_total` series, and there is no `# EOF`.
    pub fn render_text(&self) -> String {
        prometheus_text(&self.render())
    }
}

/// OpenMetrics → Prometheus text format 0.0.4.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets a counter that mirrors a cumulative value read elsewhere (the kernel's).
pub fn catch_up(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// Serves `GET /metrics` on `addr` on a thread of its own; the listener is bound before this
/// returns, so a bad address is an error at start.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listen on {addr} for --metrics"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &metrics);
            }
        })?;
    Ok(())
}

/// One request: the first line decides; a slow or silent client is dropped after 2 s.
fn answer(mut conn: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let openmetrics = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("accept:") && l.contains("application/openmetrics-text"));
    let (status, ctype, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        if openmetrics {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        } else {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render_text(),
            )
        }
    } else {
        (
            "404 Not Found",
            "text/plain",
            "tracer watch: metrics are at /metrics\n".into(),
        )
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.attempts
            .get_or_create(&OutcomeLabels {
                outcome: "gave_up".into(),
            })
            .inc();
        m.drops
            .get_or_create(&DropLabels {
                netns_kind: "sandbox".into(),
                hook: "FORWARD".into(),
                table: "filter".into(),
                reason: "NETFILTER_DROP".into(),
            })
            .inc();
        catch_up(&m.events_lost, 7);
        catch_up(&m.events_lost, 5);
        let text = m.render();
        assert!(
            text.contains("tracer_envd_attempts_total{outcome=\"gave_up\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tracer_drops_total{netns_kind=\"sandbox\",hook=\"FORWARD\",table=\"filter\",reason=\"NETFILTER_DROP\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("tracer_events_lost_total 7"), "{text}");
        assert!(text.contains("# TYPE tracer_incidents_open gauge"), "{text}");
        assert!(!text.contains("sandbox_id"), "no unbounded labels");
        let classic = m.render_text();
        assert!(
            classic.contains("# TYPE tracer_envd_attempts_total counter"),
            "{classic}"
        );
        assert!(classic.contains("# HELP tracer_events_lost_total "), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
