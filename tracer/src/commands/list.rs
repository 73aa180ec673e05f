//! `tracer list`: the Firecracker sandboxes on this host, one row each.

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    cli::ListArgs,
    discovery::sandbox::{self, Sandbox},
    error::{EXIT_OK, EnvError, is_root},
    output::{Format, Output},
};

/// One sandbox in `--json` output. Unknown values are null, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub id: Option<String>,
    pub pid: Option<u32>,
    /// Name under /var/run/netns, else `netns:<inode>`.
    pub netns: String,
    pub netns_inode: u32,
    pub tap: Option<String>,
    pub tap_held: bool,
    pub guest_ip: Option<String>,
    pub host_ip: Option<String>,
    /// The namespace holding the host end of the veth (same naming as `netns`).
    pub host_ns: Option<String>,
    pub host_veth: Option<String>,
    pub ns_veth: Option<String>,
    pub slot: Option<u32>,
    /// E2B's datapath: `v1` (iptables NAT) or `v2` (nft NAT in `inet slot-firewall`).
    pub datapath: Option<String>,
    pub warnings: Vec<String>,
}

impl From<&Sandbox> for Row {
    fn from(sb: &Sandbox) -> Self {
        Self {
            id: sb.id.clone(),
            pid: sb.pid,
            netns: sb.netns.label(),
            netns_inode: sb.netns.inode,
            tap: sb.tap.clone(),
            tap_held: sb.tap_held,
            guest_ip: sb.guest_ip.map(|ip| ip.to_string()),
            host_ip: sb.host_ip.map(|ip| ip.to_string()),
            host_ns: sb.host_ns.as_ref().map(|ns| ns.label()),
            host_veth: sb.host_veth.clone(),
            ns_veth: sb.ns_veth.clone(),
            slot: sb.slot,
            datapath: sb.datapath.map(|d| d.name().to_string()),
            warnings: sb.warnings.clone(),
        }
    }
}

pub fn run(args: ListArgs) -> Result<i32> {
    // Reading other processes' fds and entering their namespaces needs root.
    if !is_root() {
        return Err(EnvError::NoPrivileges.into());
    }
    let discovery = sandbox::discover()?;
    let found = discovery.sandboxes;
    crate::discovery::cache::remember(&found.iter().collect::<Vec<_>>());
    let rows: Vec<Row> = found.iter().map(Row::from).collect();
    let mut out = Output::stdout(Format::from_json_flag(args.json));
    match out.format {
        Format::Json => out.json_pretty(&rows).context("write to stdout")?,
        Format::Text => {
            let text = out.plain(&table(&rows)).into_owned();
            out.text(&text).context("write to stdout")?;
            warn_all(&rows);
        }
    }
    if args.verbose {
        for s in &discovery.skipped {
            eprintln!(
                "tracer: skipped pid {} ({}): {}",
                s.pid,
                crate::output::escape(s.api_sock.as_deref().unwrap_or("-")),
                s.reason
            );
        }
    }
    Ok(EXIT_OK)
}

const HEADERS: [&str; 9] = [
    "ID",
    "PID",
    "NETNS",
    "TAP",
    "READER",
    "GUEST IP",
    "HOST IP",
    "HOST SIDE",
    "DATAPATH",
];

/// The rows as an aligned text table (`-` for unknown).
pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no Firecracker sandboxes on this host\n".into();
    }
    let cells: Vec<[String; 9]> = rows.iter().map(cells).collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([HEADERS[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: &[String]| {
        let padded: Vec<String> = c.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    std::iter::once(line(&headers))
        .chain(cells.iter().map(|c| line(c)))
        .collect()
}

fn cells(r: &Row) -> [String; 9] {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let host_side = match (&r.host_ns, &r.host_veth) {
        (Some(ns), Some(veth)) => format!("{ns}/{veth}"),
        (Some(ns), None) => ns.clone(),
        _ => "-".into(),
    };
    [
        or_dash(&r.id),
        r.pid.map_or_else(|| "-".into(), |p| p.to_string()),
        r.netns.clone(),
        or_dash(&r.tap),
        if r.tap.is_none() {
            "-".into()
        } else if r.tap_held {
            "yes".into()
        } else {
            "NO".into()
        },
        or_dash(&r.guest_ip),
        or_dash(&r.host_ip),
        host_side,
        or_dash(&r.datapath),
    ]
}

/// Warnings go to stderr, so the table stays clean for scripts.
fn warn_all(rows: &[Row]) {
    for r in rows {
        let who = r.id.clone().unwrap_or_else(|| r.netns.clone());
        for w in &r.warnings {
            eprintln!(
                "tracer: warning: {}",
                crate::output::escape(&format!("{who}: {w}"))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            id: Some("ix7hj8hustuvlxiqc0g0u".into()),
            pid: Some(4242),
            netns: "ns-1".into(),
            netns_inode: 4026532,
            tap: Some("tap0".into()),
            tap_held: true,
            guest_ip: Some("169.254.0.21".into()),
            host_ip: Some("10.11.0.1".into()),
            host_ns: Some("e2b-host".into()),
            host_veth: Some("veth-1".into()),
            ns_veth: Some("eth0".into()),
            slot: Some(1),
            datapath: Some("v1".into()),
            warnings: vec![],
        }
    }

    #[test]
    fn table_aligns_and_dashes_unknowns() {
        let mut unknown = row();
        unknown.id = None;
        unknown.host_ip = None;
        unknown.host_ns = None;
        unknown.tap_held = false;
        let t = table(&[row(), unknown]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID "), "{t}");
        assert!(
            lines[1].contains("e2b-host/veth-1") && lines[1].contains(" yes ") && lines[1].ends_with("v1"),
            "{t}"
        );
        assert!(lines[2].starts_with("- ") && lines[2].contains(" NO "), "{t}");
        let col = |l: &str| l.find("ns-1");
        assert_eq!(col(lines[1]), col(lines[2]), "columns line up:\n{t}");
    }

    #[test]
    fn json_uses_null_for_unknowns() {
        let mut r = row();
        r.host_ip = None;
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["host_ip"].is_null());
        assert_eq!(v["tap_held"], true);
        assert_eq!(v["netns_inode"], 4026532);
        for key in [
            "id",
            "pid",
            "netns",
            "tap",
            "guest_ip",
            "host_ns",
            "host_veth",
            "ns_veth",
            "slot",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn no_sandboxes_says_so() {
        assert!(table(&[]).contains("no Firecracker sandboxes"));
    }
}
