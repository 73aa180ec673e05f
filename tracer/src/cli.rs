//! Command-line interface.
use std::{net::Ipv4Addr, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand};

/// Follows the orchestrator's connections to envd (TCP 49983) between a host and its
/// Firecracker microVMs, through every device, namespace and netfilter hook, and names where
/// and why packets die.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, propagate_version = true)]
#[command(after_help = "Examples:
  tracer list                                     sandboxes on this host
  tracer trace --vm ix7hj8hustuvlxiqc0g0u --probe probe a sandbox now, verdict in ~1 s
  tracer trace --vm ix7hj8 --probe                the same, by a unique prefix of the id
  tracer trace --vm ix7hj8hustuvlxiqc0g0u         watch the orchestrator's own attempts
  tracer trace --vm ix7hj8 --probe --deep --pcapng t.pcapng   every hop in detail, packets for Wireshark
  tracer report t.json --format md                a saved --json trace as Markdown, for a ticket
  tracer report t.json --format html > t.html     the same as one page, with the path drawn
  tracer trace --port 49983                       every dropped envd packet, any namespace
  tracer doctor --vm ix7hj8hustuvlxiqc0g0u        read-only check of the sandbox's network

Exit codes: 0 = path works, 1 = a failure was found and named, 2 = usage (or unexpected), 3 = no privileges, 4 = the kernel lacks what is needed, 5 = no such sandbox.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow envd connection attempts and name where they die.
    Trace(TraceArgs),
    /// List the Firecracker sandboxes on this host.
    List(ListArgs),
    /// Check a sandbox's network configuration, without changing anything.
    Doctor(DoctorArgs),
    /// Follow every sandbox of this node and report each failing one as an incident (JSON
    /// lines on stdout), for days.
    Watch(WatchArgs),
    /// What the running kernel offers the tracer: the feature table (tracepoints and their
    /// arguments, tcx, netfilter links, drop and RST reasons), read from its BTF. Exit 0 when
    /// `trace --vm` and `watch` can run here, 4 when something they need is missing.
    Check(CheckArgs),
    /// Render saved output (`trace --json`, `watch`'s incidents, one JSON object per line) as
    /// text or Markdown, the same rendering as live output: a capture taken at 3 a.m. reads
    /// the same on another machine, or in a ticket.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The saved JSON lines (`-` reads standard input).
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,
    /// `text` (as a live trace prints it), `md` (Markdown, for a ticket) or `html` (one
    /// self-contained page with a diagram of each attempt's path; redirect it to a file).
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
}

/// `--pcapng-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureOrder {
    Time,
    Packet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Md,
    Html,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("target").args(["vm", "netns", "pid"]).multiple(true))]
pub struct TraceArgs {
    /// Sandbox id as in the orchestrator's logs (E2B: `i` + 20 lowercase alphanumerics, e.g.
    /// ix7hj8hustuvlxiqc0g0u), or a unique prefix of one. Finds its namespace, tap, addresses
    /// and host side, and attaches to that path only.
    #[arg(long, value_name = "SANDBOX_ID")]
    pub vm: Option<String>,

    /// Like --vm, for VMMs without E2B naming: the namespace (name under /var/run/netns) that
    /// holds the tap.
    #[arg(long = "netns", value_name = "NAME", conflicts_with = "vm")]
    pub netns: Option<String>,

    /// Like --vm, for VMMs without E2B naming: the VMM's process id.
    #[arg(long, value_name = "PID", conflicts_with_all = ["vm", "netns"])]
    pub pid: Option<u32>,

    /// The orchestrator's namespace: `root` (the node's init namespace), /proc/PID/ns/net, or a
    /// name under /var/run/netns. The sandbox's host side must be there (probes are sent from
    /// it); default: wherever the peer of the sandbox's veth is (the root namespace in
    /// production).
    #[arg(long, value_name = "NETNS", requires = "target")]
    pub host_netns: Option<String>,

    /// TCP port(s) to follow (source or destination), up to 4.
    #[arg(long = "port", value_name = "PORT", default_value = "49983",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only packets to or from these addresses (any namespace). Default with --vm: the
    /// sandbox's host IP, guest IP and veth addresses.
    #[arg(long = "dst", value_name = "IP")]
    pub addrs: Vec<Ipv4Addr>,

    /// Make our own connection attempts from the host side, like the orchestrator (a new
    /// connection each, GET /health, 50 ms timeout), and stop at the first verdict.
    #[arg(long, requires = "target")]
    pub probe: bool,

    /// Number of attempts with --probe (1 to 1000).
    #[arg(long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub attempts: u32,

    /// Per-attempt timeout with --probe, at most 60s (the orchestrator's is 50 ms; a slow
    /// guest, e.g. under emulation, may need more to tell "slow" from "silent").
    #[arg(long, value_parser = parse_attempt_timeout, default_value = "50ms", value_name = "DURATION")]
    pub timeout: Duration,

    /// Stop after this long (e.g. 10s, 500ms). Default: until Ctrl-C (with --probe: at the
    /// verdict).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Machine-readable output: one JSON object per line (schema in the README).
    #[arg(long)]
    pub json: bool,

    /// Print every hop of every journey, not only the aggregated verdicts.
    #[arg(long)]
    pub all_hops: bool,

    /// How long an attempt is still followed after its client gave up: a SYN-ACK (or RST) in
    /// that time makes the verdict `late` (a slow guest, not a broken path) instead of
    /// `no_reply`. 0 turns it off. Verdicts of attempts that got no answer come this much
    /// later; drops, resets and refusals are reported at once. The default, 1s, is 20 times
    /// the orchestrator's 50 ms attempt: it catches a busy, booting or CPU-starved guest's
    /// reply and keeps a one-shot trace near a second; a guest slower than that is `no_reply`.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub late_window: Duration,

    /// Size of the kernel's event ring buffer (a power of two, 4096 to 1 GiB). The default,
    /// 4 MiB, holds seconds of a failing orchestrator's retries; events that do not fit are
    /// counted, shown on stderr, and on every verdict they may have touched (`lost_events`).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,

    /// To name an nft rule that has no counter: in the namespace where the drop happens, add a
    /// table `inet tracer-nftrace-<pid>` that traces this sandbox's envd packets only, SEND
    /// ONE MORE connection attempt like the orchestrator's, read which rule dropped it, and
    /// remove the table again (also on Ctrl-C, SIGTERM, SIGHUP, SIGQUIT; tables of killed runs
    /// are removed by the next). This CHANGES the ruleset while it runs; without this flag the
    /// tracer never does.
    #[arg(long)]
    pub nft_trace: bool,

    /// Deep mode: every hop gets its packet's length, skb mark, L2 addresses (where it has an
    /// Ethernet header), conntrack state, status and zone, TTL, IP id, TCP sequence, ack and
    /// window; a drop gets the kernel stack; the verdict gets the flow's conntrack entry and
    /// the route and neighbour of each routing point (read over netlink). Implies --all-hops.
    /// Each event of a followed packet then carries 192 bytes of it (packets not followed cost
    /// the same as without --deep).
    #[arg(long)]
    pub deep: bool,

    /// Write the packets at every hop to FILE as pcapng (Wireshark, tshark): one interface
    /// per namespace/device/point, each packet with a comment naming its hop, a journey's
    /// last with the verdict. The kernel copies at most 192 bytes per packet and hop; the file
    /// keeps at most 64 copies per journey and --pcapng-max-packets / --pcapng-max-bytes in
    /// all (copies over a cap are counted in the verdict). Implies --deep.
    #[arg(long, value_name = "FILE")]
    pub pcapng: Option<std::path::PathBuf>,

    /// Order in the --pcapng file: `time` (as it happened) or `packet` (all copies of one
    /// packet together: the SYN at every hop, then the SYN-ACK at every hop).
    #[arg(long, value_enum, default_value = "time", value_name = "ORDER")]
    pub pcapng_order: CaptureOrder,

    /// Packet copies written to --pcapng at most.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub pcapng_max_packets: usize,

    /// Bytes of packet data written to --pcapng at most.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    pub pcapng_max_bytes: u64,
}

impl TraceArgs {
    /// Deep mode, asked for or implied by a capture.
    pub fn deep(&self) -> bool {
        self.deep || self.pcapng.is_some()
    }
}

/// `tracer watch`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "How it works: detection stays attached node-wide (socket state changes, resets \
and drops of envd packets, filtered in the kernel). A sandbox's first failed attempt opens an \
incident and a zoom-in: the full path programs on that sandbox, so the orchestrator's next attempt \
(~55 ms later) is followed hop by hop and judged like `tracer trace`. Then the zoom-in detaches.

Output, one JSON object per line on stdout (schema in the README):
  incident  the verdict of a failing sandbox (the `trace --json` record plus incident_id,
            first_failure, localized_at, attempts_seen)
  repeat    more failures of an open incident, at most one per --repeat-every
  resolved  the sandbox's attempts connect again (with the duration)
  closed    the sandbox ended with its incident open

Bounds (memory stays flat for days): 8192 sandboxes remembered (ended ones for 60 s), 4096 open
incidents, 16384 attempts in flight and 16384 given-up attempts awaiting a late reply, 1024
queued zoom-ins, 4096 attempts awaiting attribution (2 s), --max-zoom zoom-ins at once; reports
bounded by --report-max-files and --report-max-bytes. Every external command has a timeout."
)]
pub struct WatchArgs {
    /// The orchestrator's namespace: `root` (the node's init namespace), /proc/PID/ns/net, or a
    /// name under /var/run/netns. Sandboxes' host sides are looked for there only. Default: the
    /// namespaces that hold the sandboxes' veth peers (the root namespace in production).
    #[arg(long, value_name = "NETNS")]
    pub host_netns: Option<String>,

    /// envd's TCP port.
    #[arg(long, default_value = "49983", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// Zoom-ins attached at once; more failing sandboxes wait in a queue (their incidents say
    /// so). Each costs a few program runs per packet on that sandbox's path while it lasts.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub max_zoom: usize,

    /// How long a zoom-in waits for the orchestrator's next attempt to be judged.
    #[arg(long, value_parser = parse_duration, default_value = "3s", value_name = "DURATION")]
    pub zoom_window: Duration,

    /// How long an attempt is still followed after its client gave up (a reply in that time
    /// makes the verdict `late`: a slow guest). As for `trace`.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub late_window: Duration,

    /// At most one `repeat` record per incident per this period.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub repeat_every: Duration,

    /// How often VMMs are looked for (new ones are found within this; a failure for a slot
    /// whose sandbox is unknown triggers a scan at once).
    #[arg(long, value_parser = parse_duration, default_value = "500ms", value_name = "DURATION")]
    pub scan_every: Duration,

    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Write one Markdown report per incident into this directory (created 0700).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<std::path::PathBuf>,

    /// Reports kept at most in --report-dir (the oldest go first).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub report_max_files: usize,

    /// Bytes of reports kept at most in --report-dir.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    pub report_max_bytes: u64,

    /// Size of the kernel's event ring buffer (a power of two, 4096 to 1 GiB; default 4 MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_size: Option<u32>,

    /// Also post every record to this HTTP endpoint, e.g. the node's Vector (an http_server
    /// source, deploy/vector-tracer.toml: http://127.0.0.1:30007/), as NDJSON batches
    /// (Content-Type: application/x-ndjson) of up to 500 records or 1 MiB, sent within 1 s.
    /// Plain http:// only, no TLS: it is meant for a collector on the node itself. A thread of
    /// its own posts them, so a slow or absent collector never delays the watcher: records wait
    /// in memory, at most 10000 records and 8 MiB (beyond that the oldest are dropped), failed
    /// posts are retried with exponential backoff (0.5 s doubling up to 30 s; connect timeout
    /// 2 s, 5 s for a whole post), and drops are counted (tracer_log_records_dropped_total).
    /// At exit, what waits is posted for at most 3 s. Records still go to stdout.
    #[arg(long, value_name = "URL", value_parser = parse_http_url)]
    pub log_http: Option<HttpUrl>,

    /// The node's name, in every record (`node`). E2B's Nomad job passes
    /// ${node.unique.name}. Default: the host name.
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    pub node: Option<String>,
}

/// An `http://host[:port][/path]` endpoint (`--log-http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// A name or an address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
    /// The request target: the path and query, `/` at least.
    pub path: String,
}

impl HttpUrl {
    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// `http://host[:port][/path]`: plain HTTP, a host (a name, an IPv4 address or a bracketed IPv6
/// one), no user info, no fragment.
pub fn parse_http_url(s: &str) -> Result<HttpUrl, String> {
    let Some(rest) = s
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("http://"))
        .map(|_| &s[7..])
    else {
        return Err(if s.to_ascii_lowercase().starts_with("https://") {
            format!("{s:?}: https is not supported (plain http:// to a collector on the node)")
        } else {
            format!("{s:?} is not an http:// URL (e.g. http://127.0.0.1:30007/)")
        });
    };
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) || s.contains('#') {
        return Err(format!(
            "{s:?}: no spaces, control characters or #fragment in the URL"
        ));
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    if authority.contains('@') {
        return Err(format!("{s:?}: no user info in the URL"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: an IPv6 address needs its closing ]"))?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {host:?} is not an IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':')
    };
    if !name_ok(host) {
        return Err(format!("{s:?}: {host:?} is not a host name or address"));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port"))?,
    };
    Ok(HttpUrl {
        host: host.to_string(),
        port,
        path,
    })
}

/// A node name: 1 to 253 printable characters, no spaces.
pub fn parse_node_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{s:?} is not a node name (1 to 253 characters, no spaces)"
        ));
    }
    Ok(s.to_string())
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Also list processes that carry `--api-sock` but were not taken for VMMs, and why (a
    /// VMM runs as root, in this user namespace, from a root-owned executable, and holds a
    /// tap or sits in E2B's sandbox cgroup).
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Sandbox id to check (or a unique prefix of one).
    #[arg(long, value_name = "SANDBOX_ID", required_unless_present = "all")]
    pub vm: Option<String>,
    /// Check every sandbox on this host.
    #[arg(long, conflicts_with = "vm")]
    pub all: bool,
    /// Skip the one short connection attempt to envd.
    #[arg(long)]
    pub no_connect: bool,
    /// The orchestrator's namespace: `root` (the node's init namespace), /proc/PID/ns/net, or a
    /// name under /var/run/netns. The host side must be there; default: wherever the peer of
    /// the sandbox's veth is (the root namespace in production).
    #[arg(long, value_name = "NETNS")]
    pub host_netns: Option<String>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// A ring buffer size: a power of two from one page to 1 GiB.
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !v.is_power_of_two() || !(4096..=1 << 30).contains(&v) {
        return Err(format!(
            "{s:?}: the ring size is a power of two from 4096 to 1073741824"
        ));
    }
    Ok(v)
}

/// The longest per-attempt timeout: an attempt is one connection, not a wait for a guest to
/// boot.
pub const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A per-attempt timeout: a duration from 1 ms to [`MAX_ATTEMPT_TIMEOUT`].
pub fn parse_attempt_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) || d > MAX_ATTEMPT_TIMEOUT {
        return Err(format!("{s:?} is not a timeout between 1ms and 60s"));
    }
    Ok(d)
}

/// `10s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1000.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 10s or 500ms)"))?;
    // Up to a year: longer is not a duration anyone means, and would overflow timers.
    if !v.is_finite() || v < 0.0 || v * mult_ms > 365.0 * 86_400_000.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_micros((v * mult_ms * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The deployment files start a command this CLI accepts (they cannot drift from it).
    #[test]
    fn the_deployment_files_run_a_watch_this_cli_accepts() {
        use clap::Parser as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let unit = std::fs::read_to_string(dir.join("tracer-watch.service")).unwrap();
        let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
        let systemd: Vec<String> = exec.split_whitespace().map(String::from).collect();
        let job = std::fs::read_to_string(dir.join("tracer-watch.nomad.hcl")).unwrap();
        // Commented-out examples are not part of the command.
        let job: String = job
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        let quoted =
            |text: &str| -> Vec<String> { text.split('"').skip(1).step_by(2).map(String::from).collect() };
        let command = job
            .lines()
            .find_map(|l| l.trim().strip_prefix("command = "))
            .unwrap();
        let args = job.split("args = [").nth(1).unwrap().split(']').next().unwrap();
        let nomad = [quoted(command), quoted(args)].concat();
        for (which, argv) in [("systemd", systemd), ("nomad", nomad)] {
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let Command::Watch(w) = cli.command else {
                panic!("{argv:?} is not `tracer watch`")
            };
            assert_eq!(
                w.metrics.map(|a| a.to_string()).as_deref(),
                Some("127.0.0.1:9464")
            );
            assert!(w.report_dir.is_some());
            if which == "nomad" {
                // The Nomad job: records to the node's Vector, named as Nomad names the node.
                assert_eq!(
                    w.log_http.map(|u| u.to_string()).as_deref(),
                    Some("http://127.0.0.1:30007/")
                );
                assert_eq!(w.node.as_deref(), Some("${node.unique.name}"));
            }
        }
    }

    #[test]
    fn log_http_urls() {
        let ok = |s: &str| parse_http_url(s).unwrap_or_else(|e| panic!("{e}"));
        let u = ok("http://127.0.0.1:30007/");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 30007, "/")
        );
        assert_eq!(u.to_string(), "http://127.0.0.1:30007/");
        let u = ok("HTTP://vector.local");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("vector.local", 80, "/")
        );
        assert_eq!(u.authority(), "vector.local");
        let u = ok("http://[::1]:8080/in?tenant=a");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/in?tenant=a")
        );
        assert_eq!(u.authority(), "[::1]:8080");
        assert_eq!(ok("http://h?x").path, "/?x");
        for bad in [
            "https://127.0.0.1/",
            "127.0.0.1:30007",
            "http://",
            "http://:80/",
            "http://a:0/",
            "http://a:99999/",
            "http://user@a/",
            "http://a/x y",
            "http://a/x\r\nX-Evil: 1",
            "http://a/#frag",
            "http://[::1/",
            "http://[zz]:1/",
            "http://a_b/",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_http_url("https://x/")
                .unwrap_err()
                .contains("https is not supported")
        );
    }

    #[test]
    fn node_names() {
        assert!(parse_node_name("node-a.eu").is_ok());
        assert!(parse_node_name("${node.unique.name}").is_ok());
        for bad in ["", "a b", "a\nb"] {
            assert!(parse_node_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_node_name(&"n".repeat(254)).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn impossible_values_are_refused() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["tracer", "trace", "--vm", "x"][..], args].concat());
        assert!(parse(&["--probe", "--attempts", "0"]).is_err());
        assert!(parse(&["--port", "0"]).is_err());
        assert!(parse(&["--timeout", "99999999999s"]).is_err());
        assert!(parse(&["--timeout", "0ms"]).is_err());
        assert!(parse(&["--timeout", "61s"]).is_err());
        assert!(parse(&["--timeout", "1s", "--attempts", "1000"]).is_ok());
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("inf").is_err());
        let two = Cli::try_parse_from(["tracer", "trace", "--netns", "a", "--netns", "b"]);
        assert!(two.is_err(), "one --netns");
    }

    #[test]
    fn host_netns_goes_with_a_sandbox() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["tracer"][..], args].concat());
        assert!(
            parse(&["trace", "--host-netns", "root"]).is_err(),
            "no sandbox: no host side"
        );
        for ns in ["root", "/proc/1/ns/net", "e2b-host"] {
            assert!(parse(&["trace", "--vm", "x", "--probe", "--host-netns", ns]).is_ok());
            assert!(parse(&["doctor", "--vm", "x", "--host-netns", ns]).is_ok());
            assert!(parse(&["doctor", "--all", "--host-netns", ns]).is_ok());
            assert!(parse(&["watch", "--host-netns", ns]).is_ok());
        }
    }

    #[test]
    fn probe_needs_a_target() {
        assert!(Cli::try_parse_from(["tracer", "trace", "--probe"]).is_err());
        assert!(Cli::try_parse_from(["tracer", "trace", "--vm", "x", "--probe"]).is_ok());
    }
}
