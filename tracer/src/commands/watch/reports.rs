//! `--report-dir`: one Markdown report per incident, for the person on call: the sandbox,
//! when, how many attempts, the journey hop by hop, the verdict, the rule, the fix and the
//! doctor's findings. The directory is bounded by count and bytes: the oldest reports go.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::report::{markdown, record::JourneyRecord};

/// Where reports go, and how much may stay.
pub struct ReportDir {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
}

impl ReportDir {
    /// Creates the directory (0700) if needed.
    pub fn new(dir: &Path, max_files: usize, max_bytes: u64) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("create --report-dir {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        Ok(Self {
            dir: dir.to_path_buf(),
            max_files,
            max_bytes,
        })
    }

    /// Writes the report of one incident (atomically: a reader never sees half of it), then
    /// removes the oldest reports beyond the bounds. Returns its path.
    pub fn write(&self, incident: &Value, record: Option<&JourneyRecord>) -> Result<PathBuf> {
        let name = file_name(incident);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, markdown::incident(incident, record))
            .with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path)?;
        self.prune()?;
        Ok(path)
    }

    /// Oldest first (names start with the time), until both bounds hold.
    fn prune(&self) -> Result<()> {
        let mut reports: Vec<(String, u64)> = fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let len = e.metadata().ok()?.len();
                (name.ends_with(".md") && !name.starts_with('.')).then_some((name, len))
            })
            .collect();
        reports.sort();
        let mut total: u64 = reports.iter().map(|(_, l)| l).sum();
        let mut count = reports.len();
        for (name, len) in reports {
            if count <= self.max_files && total <= self.max_bytes {
                break;
            }
            let _ = fs::remove_file(self.dir.join(&name));
            count -= 1;
            total = total.saturating_sub(len);
        }
        Ok(())
    }
}

/// `<localized time>-<sandbox>-<incident id>.md`, from characters safe in any file name.
fn file_name(incident: &Value) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            .collect()
    };
    let at = clean(&incident["localized_at"].as_str().unwrap_or("").replace(':', ""));
    let sb = clean(incident["sandbox"]["id"].as_str().unwrap_or("unknown"));
    let id = clean(incident["incident_id"].as_str().unwrap_or("0"));
    format!("{at}-{sb}-{id}.md")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn incident(n: u32) -> Value {
        json!({
            "type": "incident", "incident_id": format!("abc-{n}"), "outcome": "dropped",
            "summary": "the SYN was dropped", "fix": "remove the rule",
            "sandbox": {"id": "i../etc", "netns": "ns-1", "tap": "tap0", "guest_ip": "169.254.0.21",
                        "host_ip": "10.11.0.1", "pid": 42},
            "first_failure": "2026-11-30T10:00:00.000Z",
            "localized_at": format!("2026-11-30T10:00:0{n}.000Z"), "attempts_seen": 2,
            "explained_by": ["ns_iptables"], "evidence": ["event: drop"], "drop": {"rule": "-A FORWARD -j DROP"}
        })
    }

    #[test]
    fn a_report_draws_the_path_before_the_hops() {
        let record = crate::report::fixtures::record("reply-drop");
        let md = markdown::incident(&incident(1), Some(&record));
        let path = md
            .find("## The path\n\n```mermaid\nflowchart LR\n")
            .expect("the diagram");
        let hops = md.find("## The attempt, hop by hop").expect("the hops");
        assert!(path < hops, "{md}");
        assert!(
            md.contains("  n4 -.->|\"PRE · ✗ FWD\"| n3\n"),
            "the reply's FORWARD failed: {md}"
        );
        assert!(
            !markdown::incident(&incident(1), None).contains("```mermaid"),
            "no record, no path"
        );
    }

    #[test]
    fn reports_are_named_safely_and_bounded() {
        let dir = std::env::temp_dir().join(format!("tracer-reports-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let rd = ReportDir::new(&dir, 3, 1 << 20).unwrap();
        for n in 0..5 {
            let p = rd.write(&incident(n), None).unwrap();
            assert_eq!(p.parent(), Some(dir.as_path()), "stays in the directory");
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].contains("T100002"), "the oldest went: {names:?}");
        let text = fs::read_to_string(dir.join(&names[2])).unwrap();
        assert!(text.contains("**Rule:** `-A FORWARD -j DROP`"), "{text}");
        assert!(text.contains("| namespace | `ns-1` |"), "{text}");
        // Bounded by bytes too.
        let rd = ReportDir::new(&dir, 100, 1).unwrap();
        rd.write(&incident(9), None).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing fits in one byte");
        fs::remove_dir_all(&dir).unwrap();
    }
}
