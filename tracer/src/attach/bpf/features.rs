//! What the running kernel offers the tracer, probed from its BTF rather than assumed from a
//! version number: the tracepoints and how many arguments each passes, tcx, BPF netfilter
//! links. What is missing either degrades the trace (said on stderr and by `tracer check`)
//! or, for what following a sandbox's path cannot do without, refuses it with the feature and
//! the first Linux version that has it.
use serde::Serialize;

use super::btf::KernelBtf;
use crate::error::EnvError;

/// What one feature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// `trace --vm` and `watch` refuse to start without it.
    Path,
    /// Every mode that reports drops needs it (`trace --port` too).
    Drops,
    /// Without it a detail is lost; the trace runs.
    Detail,
}

/// One row of the feature table.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub present: bool,
    pub need: Need,
    /// The first Linux version that has it.
    pub since: &'static str,
    /// What it gives, or what is lost without it.
    pub what: &'static str,
}

/// The probed features.
#[derive(Debug, Clone)]
pub struct Features {
    pub rows: Vec<Feature>,
}

impl From<tracer_common::hooks::Need> for Need {
    fn from(n: tracer_common::hooks::Need) -> Self {
        match n {
            tracer_common::hooks::Need::Path => Self::Path,
            tracer_common::hooks::Need::Drops => Self::Drops,
            tracer_common::hooks::Need::Detail => Self::Detail,
        }
    }
}

impl Features {
    pub fn probe(btf: &KernelBtf) -> Self {
        use tracer_common::hooks::{Attach, HOOKS};
        // One row per tracepoint of the hook table, probed by the arguments it reads.
        let mut rows: Vec<Feature> = HOOKS
            .iter()
            .filter(|h| h.attach == Attach::TpBtf)
            .map(|h| Feature {
                name: h.name,
                present: btf.tracepoint_args(h.name).is_some_and(|n| n >= h.args),
                need: h.need.into(),
                since: h.since,
                what: h.what,
            })
            .collect();
        // The older forms of tracepoints whose last argument is optional: what the path
        // falls back to when the newer form is missing.
        for h in HOOKS {
            let Some(o) = h.older else { continue };
            rows.push(Feature {
                name: o.label,
                present: btf.tracepoint_args(h.name).is_some_and(|n| n >= o.args),
                need: Need::Path,
                since: o.since,
                what: "the older form of the tracepoint, used when the newer is missing",
            });
        }
        rows.push(Feature {
            name: "struct fields",
            present: btf.offsets().is_ok(),
            need: Need::Path,
            since: "5.4",
            what: "the sk_buff, sock, net_device, flowi4, neighbour and nf_hook_state fields the programs read",
        });
        // The link types of the other hooks, once per kind (tcx has two hooks).
        for (name, attach_type) in [("tcx", "BPF_TCX_INGRESS"), ("netfilter links", "BPF_NETFILTER")] {
            let of_kind = |h: &&tracer_common::hooks::Hook| match h.attach {
                Attach::Tcx { .. } => name == "tcx",
                Attach::Netfilter => name == "netfilter links",
                Attach::TpBtf => false,
            };
            let Some(h) = HOOKS.iter().find(of_kind) else {
                continue;
            };
            rows.push(Feature {
                name,
                present: btf.enum_has("bpf_attach_type", attach_type),
                need: h.need.into(),
                since: h.since,
                what: h.what,
            });
        }
        rows.push(Feature {
            name: "drop reasons",
            present: btf.enum_has("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP"),
            need: Need::Drops,
            since: "6.0",
            what: "why the kernel dropped a packet (NETFILTER_DROP, ...)",
        });
        rows.push(Feature {
            name: "RST reasons",
            present: btf.enum_has("sk_rst_reason", "SK_RST_REASON_NOT_SPECIFIED"),
            need: Need::Detail,
            since: "6.10",
            what: "the names of RST reasons",
        });
        Self { rows }
    }

    fn has(&self, name: &str) -> bool {
        self.rows.iter().any(|r| r.name == name && r.present)
    }

    /// consume_skb passes where the packet was freed.
    pub fn consume_location(&self) -> bool {
        self.has("consume_skb")
    }

    /// tcp_send_reset passes its reason.
    pub fn rst_reason(&self) -> bool {
        self.has("tcp_send_reset")
    }

    /// What is missing for `need`, ignoring optional forms that have a fallback.
    fn missing(&self, need: Need) -> Vec<&Feature> {
        self.rows
            .iter()
            .filter(|r| r.need == need && !r.present)
            .collect()
    }

    /// Following a sandbox's path (`trace --vm`, `watch`): everything essential, or an error
    /// naming what is missing and since when Linux has it.
    pub fn require_path(&self, kernel: &str) -> Result<(), EnvError> {
        let mut missing = self.missing(Need::Path);
        missing.extend(self.missing(Need::Drops));
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = missing
            .iter()
            .map(|f| format!("{} (Linux {}+)", f.name, f.since))
            .collect();
        let drops_only = self.missing(Need::Drops).is_empty();
        Err(EnvError::KernelLacks(format!(
            "this kernel ({kernel}) lacks {}, which following a sandbox's path needs{}; `tracer check` lists what it has",
            names.join(" and "),
            if drops_only {
                "; `tracer trace --port 49983` (every dropped envd packet, with its reason) works here"
            } else {
                ""
            }
        )))
    }

    /// Reporting drops (`trace --port`): kfree_skb with its reason.
    pub fn require_drops(&self, kernel: &str) -> Result<(), EnvError> {
        match self.missing(Need::Drops).first() {
            None => Ok(()),
            Some(f) => Err(EnvError::KernelLacks(format!(
                "this kernel ({kernel}) lacks {} (Linux {}+), which reporting drops needs",
                f.name, f.since
            ))),
        }
    }

    /// What the trace loses here, one sentence each (said on stderr).
    pub fn degraded(&self) -> Vec<String> {
        self.missing(Need::Detail)
            .iter()
            .map(|f| {
                format!(
                    "{} (Linux {}+) is missing: traces go without {}",
                    f.name, f.since, f.what
                )
            })
            .collect()
    }
}

/// One program's load trial: the form the verifier took, or its refusal.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub program: &'static str,
    pub loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Loads (never attaches) every program, as root: what BTF says is confirmed by the verifier.
pub fn load_trial(btf: &KernelBtf) -> Result<(Vec<Trial>, Vec<String>), String> {
    if !crate::error::is_root() {
        return Err("not tried: loading programs needs root".into());
    }
    let offsets = btf.offsets().map_err(|e| format!("not tried: {e:#}"))?;
    let filter = super::Filter {
        ports: vec![49983],
        ..Default::default()
    };
    let mut programs = super::Programs::load(offsets, &filter).map_err(|e| format!("not tried: {e:#}"))?;
    let trials = programs
        .try_load_all()
        .into_iter()
        .map(|(program, r)| match r {
            Ok(form) => Trial {
                program,
                loaded: true,
                form: (form != program).then_some(form),
                error: None,
            },
            Err(e) => Trial {
                program,
                loaded: false,
                form: None,
                error: Some(e),
            },
        })
        .collect();
    Ok((trials, programs.degraded.clone()))
}

pub fn render(
    kernel: &str,
    f: &Features,
    verdict: &Result<(), EnvError>,
    trial: &Result<(Vec<Trial>, Vec<String>), String>,
) -> String {
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    let mut text = format!("kernel {kernel}\nfeatures (from its BTF):\n");
    for r in &f.rows {
        text += &format!(
            "  {} {:<28} Linux {:<5} {:<7} {}\n",
            mark(r.present),
            r.name,
            r.since,
            match r.need {
                Need::Path => "path",
                Need::Drops => "drops",
                Need::Detail => "detail",
            },
            r.what
        );
    }
    match trial {
        Ok((trials, _)) => {
            text += "programs (loaded by its verifier, not attached):\n";
            for t in trials {
                let how = match (&t.form, &t.error) {
                    (_, Some(e)) => format!("refused: {}", crate::output::escape(e)),
                    (Some(form), _) => format!("loaded as {form} (the older form)"),
                    (None, None) => "loaded".into(),
                };
                text += &format!("  {} {:<28} {how}\n", mark(t.loaded), t.program);
            }
        }
        Err(note) => text += &format!("programs: {note}\n"),
    }
    text += &match verdict {
        Ok(()) => "`tracer trace --vm` and `tracer watch` can run here\n".to_string(),
        Err(e) => format!("{e}\n"),
    };
    for d in f.degraded() {
        text += &format!("degraded: {d}\n");
    }
    text
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_everything_the_path_needs() {
        if !std::path::Path::new(super::super::btf::VMLINUX_BTF).exists() {
            return;
        }
        let f = Features::probe(&KernelBtf::load().unwrap());
        assert!(f.require_path("this").is_ok(), "{:#?}", f.rows);
        assert!(f.consume_location() && f.rst_reason(), "6.18 has both");
    }

    #[test]
    fn a_kernel_without_tcx_and_netfilter_links_is_refused_with_versions() {
        let f = Features {
            rows: vec![
                Feature {
                    name: "tcx",
                    present: false,
                    need: Need::Path,
                    since: "6.6",
                    what: "",
                },
                Feature {
                    name: "netfilter links",
                    present: false,
                    need: Need::Path,
                    since: "6.4",
                    what: "",
                },
                Feature {
                    name: "kfree_skb",
                    present: true,
                    need: Need::Drops,
                    since: "5.17",
                    what: "",
                },
            ],
        };
        let e = f.require_path("6.1.0-44-amd64").unwrap_err().to_string();
        assert!(
            e.contains("tcx (Linux 6.6+) and netfilter links (Linux 6.4+)"),
            "{e}"
        );
        assert!(e.contains("tracer trace --port 49983"), "{e}");
        assert!(f.require_drops("6.1").is_ok());
    }
}
