//! Errors that are the operator's to fix, each one clear sentence, and the exit codes.
//!
//! Exit codes (all commands): 0 = the path works / nothing wrong, 1 = a failure was found and
//! named; an error that kept the command from its job has a code per kind, so that a script
//! can tell them apart: 2 = usage (a flag, an id that is not one, an ambiguous prefix, anything
//! unexpected), 3 = no privileges, 4 = the kernel lacks what is needed (BTF, a program type or
//! attach point), 5 = no such sandbox (unknown, or gone). The message says what to do.
use std::fmt;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FOUND: i32 = 1;
/// Usage, and any error that is not one of the kinds below.
pub const EXIT_ENV: i32 = 2;
pub const EXIT_PRIVILEGES: i32 = 3;
pub const EXIT_KERNEL: i32 = 4;
pub const EXIT_NO_SANDBOX: i32 = 5;

/// A usage or environment error: printed as one sentence, exit code 2.
#[derive(Debug)]
pub enum EnvError {
    /// Not root and missing the capabilities to load and attach programs.
    NoPrivileges,
    /// The kernel exposes no BTF.
    NoBtf(String),
    /// The kernel refused a program type or attach point we need.
    KernelFeature { program: String, detail: String },
    /// No sandbox with that id on this host.
    UnknownSandbox { id: String, known: Vec<String> },
    /// The sandbox id is not lowercase letters and digits (1 to 64 of them).
    MalformedSandboxId(String),
    /// The sandbox ended; what is in its place now.
    SandboxGone { id: String, detail: String },
    /// A prefix that more than one sandbox id starts with.
    AmbiguousSandboxId { prefix: String, candidates: Vec<String> },
    /// The kernel lacks features a command needs (the sentence names them and their versions).
    KernelLacks(String),
    /// Anything else the operator must fix (bad flag combination, missing namespace, ...).
    Usage(String),
}

impl EnvError {
    /// Classifies an aya load error of the whole object.
    pub fn from_load(detail: &str) -> Self {
        if is_permission(detail) {
            Self::NoPrivileges
        } else {
            Self::KernelFeature {
                program: "maps".into(),
                detail: detail.into(),
            }
        }
    }

    /// Classifies a program load/attach error.
    pub fn from_program(program: &str, detail: &str) -> Self {
        if is_permission(detail) && !is_root() {
            Self::NoPrivileges
        } else if detail.contains("Device or resource busy") || detail.contains("EBUSY") {
            // Taken by another program (another tracer): not a missing kernel feature.
            Self::Usage(format!(
                "the kernel refused the {program} program because its attach point is taken ({detail}); another tracer may hold it: retry, or stop the other one"
            ))
        } else {
            Self::KernelFeature {
                program: program.into(),
                detail: detail.into(),
            }
        }
    }
}

fn is_permission(detail: &str) -> bool {
    detail.contains("Operation not permitted") || detail.contains("EPERM") || detail.contains("os error 1)")
}

pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPrivileges => write!(
                f,
                "the tracer needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN) to load eBPF programs and enter namespaces; run it with sudo"
            ),
            Self::NoBtf(d) => write!(
                f,
                "cannot read the kernel's BTF ({d}); the tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (or TRACER_BTF pointing at its vmlinux BTF)"
            ),
            Self::KernelFeature { program, detail } => write!(
                f,
                "the kernel refused the {program} program ({detail}); it needs Linux 6.6+ with tp_btf, tcx and BPF netfilter links enabled"
            ),
            Self::UnknownSandbox { id, known } if known.is_empty() => write!(
                f,
                "no sandbox {id} on this host, and no Firecracker sandbox was found at all; check the id, or use --netns/--pid for other setups"
            ),
            Self::UnknownSandbox { id, known } => write!(
                f,
                "no sandbox {id} on this host; known sandboxes: {}",
                known.join(", ")
            ),
            Self::MalformedSandboxId(id) => write!(
                f,
                "{id:?} is not a sandbox id (expected lowercase letters and digits as in the orchestrator's logs, e.g. ix7hj8hustuvlxiqc0g0u, or a unique prefix of one)"
            ),
            Self::SandboxGone { id, detail } => write!(
                f,
                "sandbox {id} is gone: {detail}; trace the sandbox that holds the slot now by its id"
            ),
            Self::AmbiguousSandboxId { prefix, candidates } => write!(
                f,
                "{prefix:?} is the start of several sandbox ids: {}; give more characters",
                candidates.join(", ")
            ),
            Self::Usage(msg) | Self::KernelLacks(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for EnvError {}

/// The exit code for an error that ended a command, by its kind. Unexpected failures count
/// as usage/environment errors: either way the command could not do its job.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match err.chain().find_map(|e| e.downcast_ref::<EnvError>()) {
        Some(EnvError::NoPrivileges) => EXIT_PRIVILEGES,
        Some(EnvError::NoBtf(_) | EnvError::KernelFeature { .. } | EnvError::KernelLacks(_)) => EXIT_KERNEL,
        Some(EnvError::UnknownSandbox { .. } | EnvError::SandboxGone { .. }) => EXIT_NO_SANDBOX,
        _ => EXIT_ENV,
    }
}

/// The sentence to print for an error: the EnvError's own words when there is one.
pub fn describe(err: &anyhow::Error) -> String {
    match err.chain().find_map(|e| e.downcast_ref::<EnvError>()) {
        Some(env) => env.to_string(),
        None => format!("{err:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind an operator must act on differently has its own code, wrapped in context or
    /// not; anything else is a usage/environment error.
    #[test]
    fn each_kind_of_error_has_its_exit_code() {
        let code = |e: EnvError| exit_code(&anyhow::Error::new(e).context("while doing it"));
        assert_eq!(code(EnvError::Usage("x".into())), EXIT_ENV);
        assert_eq!(code(EnvError::MalformedSandboxId("X".into())), EXIT_ENV);
        assert_eq!(code(EnvError::NoPrivileges), EXIT_PRIVILEGES);
        assert_eq!(code(EnvError::NoBtf("gone".into())), EXIT_KERNEL);
        assert_eq!(code(EnvError::KernelLacks("no tcx".into())), EXIT_KERNEL);
        assert_eq!(
            code(EnvError::KernelFeature {
                program: "tcx".into(),
                detail: "EINVAL".into()
            }),
            EXIT_KERNEL
        );
        assert_eq!(
            code(EnvError::UnknownSandbox {
                id: "z".into(),
                known: vec![]
            }),
            EXIT_NO_SANDBOX
        );
        assert_eq!(
            code(EnvError::SandboxGone {
                id: "z".into(),
                detail: "ended".into()
            }),
            EXIT_NO_SANDBOX
        );
        assert_eq!(exit_code(&anyhow::anyhow!("unexpected")), EXIT_ENV);
        let all = [
            EXIT_OK,
            EXIT_FOUND,
            EXIT_ENV,
            EXIT_PRIVILEGES,
            EXIT_KERNEL,
            EXIT_NO_SANDBOX,
        ];
        let distinct: std::collections::BTreeSet<i32> = all.into_iter().collect();
        assert_eq!(distinct.len(), all.len());
    }
}
