//! Another agent's BPF programs, as Cilium or a security agent would load them next to the
//! tracer: XDP, tcx and classic tc on a device, connect4 on a cgroup. Each kind has a "drop"
//! variant (TCP port P dropped, or its connect() refused) and an "inert" one (everything
//! passes). The tracer under test must find and name them.
//!
//! The programs are assembled by hand ([`asm`]) and loaded with the raw bpf(2) syscall: the
//! lab stays free of compilers, object files and loader libraries, and the programs look like
//! any other loader's. A separate process, `lab-agent`, loads and holds them, so the tracer
//! sees a foreign pid holding the links; [`Agent`] starts and stops it.
//!
//! ```no_run
//! use lab::agent::{Agent, Kind, Spec, Target};
//! let spec = Spec {
//!     kind: Kind::TcxIngress,
//!     target: Target::Device { netns: Some("ns-1".into()), dev: "eth0".into() },
//!     port: 49983,
//!     inert: false,
//! };
//! let agent = Agent::start(&spec)?; // envd's port is dropped from here on
//! println!("{} id {} tag {} held by pid {}", agent.name(), agent.prog_id(), agent.tag(), agent.pid());
//! agent.stop()?; // detached, and the program is gone
//! # anyhow::Ok(())
//! ```
pub mod asm;
pub mod run;
mod scratch;
pub mod sys;
mod tc;

use std::{
    fs,
    io::{self, BufRead as _, BufReader},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

pub use scratch::{ScratchCgroup, ScratchNetns, cgroup2_mount};
pub use tc::TcFilter;

/// How long the agent may take to load and attach before [`Agent::start`] gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it may take to detach and exit after being told to, before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// XDP on a device (native if the driver has it, else generic).
    Xdp,
    /// tcx (BPF_TCX_INGRESS/EGRESS links, kernel 6.6+).
    TcxIngress,
    TcxEgress,
    /// A cls_bpf filter in direct-action mode on a clsact qdisc, added with tc.
    TcIngress,
    TcEgress,
    /// BPF_CGROUP_INET4_CONNECT on a cgroup: connect() to the port gets EPERM.
    CgroupConnect4,
}

impl Kind {
    pub const ALL: &[Kind] = &[
        Kind::Xdp,
        Kind::TcxIngress,
        Kind::TcxEgress,
        Kind::TcIngress,
        Kind::TcEgress,
        Kind::CgroupConnect4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::TcxIngress => "tcx-ingress",
            Self::TcxEgress => "tcx-egress",
            Self::TcIngress => "tc-ingress",
            Self::TcEgress => "tc-egress",
            Self::CgroupConnect4 => "cgroup-connect4",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Attached to a network device (else to a cgroup).
    pub fn on_device(self) -> bool {
        self != Self::CgroupConnect4
    }

    /// The attach point as bpftool names it (what the tracer should report).
    pub fn attach_type(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::TcxIngress => "tcx_ingress",
            Self::TcxEgress => "tcx_egress",
            Self::TcIngress => "tc_ingress",
            Self::TcEgress => "tc_egress",
            Self::CgroupConnect4 => "cgroup_inet4_connect",
        }
    }

    /// The program's name in the kernel (at most 15 characters), by kind and variant.
    pub fn prog_name(self, inert: bool) -> &'static str {
        match (self, inert) {
            (Self::Xdp, false) => "agent_xdp_drop",
            (Self::Xdp, true) => "agent_xdp_pass",
            (Self::TcxIngress, false) => "agent_tcxi_drop",
            (Self::TcxIngress, true) => "agent_tcxi_pass",
            (Self::TcxEgress, false) => "agent_tcxe_drop",
            (Self::TcxEgress, true) => "agent_tcxe_pass",
            (Self::TcIngress, false) => "agent_tci_drop",
            (Self::TcIngress, true) => "agent_tci_pass",
            (Self::TcEgress, false) => "agent_tce_drop",
            (Self::TcEgress, true) => "agent_tce_pass",
            (Self::CgroupConnect4, false) => "agent_cg4_deny",
            (Self::CgroupConnect4, true) => "agent_cg4_allow",
        }
    }
}

/// What the program is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A device in a named namespace (/var/run/netns/NAME), or in the caller's (None).
    Device { netns: Option<String>, dev: String },
    /// A cgroup2 directory.
    Cgroup(PathBuf),
}

/// One foreign program: what `lab-agent` is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub kind: Kind,
    pub target: Target,
    /// The TCP port the drop variant drops (source or destination) or refuses.
    pub port: u16,
    /// Passes everything instead.
    pub inert: bool,
}

pub const USAGE: &str = "usage: lab-agent --kind xdp|tcx-ingress|tcx-egress|tc-ingress|tc-egress|cgroup-connect4 \
     [--netns NAME] --dev DEV | --cgroup PATH --port P [--inert]\n\
     Device kinds act in namespace NAME (/var/run/netns/NAME), or in the caller's.\n\
     Loads and attaches one program, prints one JSON line ({\"ready\":true,...}), then holds it \
     until SIGTERM/SIGINT/SIGHUP, stdin closing or its parent dying, and detaches on the way out.";

impl Spec {
    /// The program's name in the kernel.
    pub fn prog_name(&self) -> &'static str {
        self.kind.prog_name(self.inert)
    }

    /// The command line `lab-agent` takes.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--kind".to_string(), self.kind.name().to_string()];
        match &self.target {
            Target::Device { netns, dev } => {
                if let Some(ns) = netns {
                    a.extend(["--netns".to_string(), ns.clone()]);
                }
                a.extend(["--dev".to_string(), dev.clone()]);
            }
            Target::Cgroup(p) => a.extend(["--cgroup".to_string(), p.display().to_string()]),
        }
        a.extend(["--port".to_string(), self.port.to_string()]);
        if self.inert {
            a.push("--inert".to_string());
        }
        a
    }

    /// Parses [`Spec::args`]' form.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let (mut kind, mut netns, mut dev, mut cgroup, mut port, mut inert) =
            (None, None, None, None, None, false);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
            match flag.as_str() {
                "--kind" => {
                    let v = value()?;
                    kind = Some(Kind::parse(&v).ok_or_else(|| anyhow!("unknown kind {v}"))?);
                }
                "--netns" => netns = Some(value()?),
                "--dev" => dev = Some(value()?),
                "--cgroup" => cgroup = Some(PathBuf::from(value()?)),
                "--port" => port = Some(value()?.parse().context("--port")?),
                "--inert" => inert = true,
                other => bail!("unknown argument {other}"),
            }
        }
        let kind = kind.context("--kind is required")?;
        let target = match (kind.on_device(), dev, cgroup) {
            (true, Some(dev), None) => Target::Device { netns, dev },
            // A cgroup is no namespace's: --netns is ignored.
            (false, None, Some(path)) => Target::Cgroup(path),
            (true, ..) => bail!("{} needs --dev (and no --cgroup)", kind.name()),
            (false, ..) => bail!("{} needs --cgroup (and no --dev)", kind.name()),
        };
        let port = port.context("--port is required")?;
        Ok(Self {
            kind,
            target,
            port,
            inert,
        })
    }
}

/// The line `lab-agent` prints once attached: what the tracer is expected to find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub ready: bool,
    pub prog_id: u32,
    /// None for classic tc: the filter holds the program, not a link.
    pub link_id: Option<u32>,
    pub name: String,
    /// The kernel's tag of the program (hex of its 8 bytes).
    pub tag: String,
    pub kind: Kind,
    /// As bpftool names it (see [`Kind::attach_type`]).
    pub attach_type: String,
    /// The device's index in its namespace (device kinds).
    pub ifindex: Option<u32>,
    /// XDP only: the flags the link was created with (0: the driver's mode if it has one,
    /// else generic; 2: XDP_FLAGS_SKB_MODE, generic, the fallback).
    pub xdp_flags: Option<u32>,
    /// Classic tc only: the filter to delete on the way out.
    pub tc: Option<TcFilter>,
}

/// A running `lab-agent`. Dropping it stops it (SIGTERM, stdin closed) and waits; one that
/// does not exit within [`STOP_TIMEOUT`] is killed, and a tc filter it added is deleted for
/// it. The agent also exits when the thread that started it ends (PR_SET_PDEATHSIG follows
/// the parent thread), so keep the handle on the thread that made it, or in the main thread.
pub struct Agent {
    proc: Proc,
    ready: Ready,
    spec: Spec,
}

impl Agent {
    /// Starts `lab-agent` (see [`binary`]) and waits for its "ready" line.
    pub fn start(spec: &Spec) -> Result<Self> {
        Self::start_with(&binary()?, spec)
    }

    /// Same, with the binary given.
    pub fn start_with(bin: &Path, spec: &Spec) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(spec.args())
            .env("LAB_AGENT_PARENT", std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = child.stdin.take();
        let mut proc = Proc {
            child,
            stdin,
            exited: None,
        };
        let what = format!("lab-agent {}", spec.args().join(" "));
        let line = match read_line_within(stdout, READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                // A slow agent still attaches, then sees the signal and detaches.
                let status = proc.stop(STOP_TIMEOUT);
                return Err(e.context(format!("{what} (exit: {status:?})")));
            }
        };
        let ready = parse_ready(&line).with_context(|| what.clone())?;
        Ok(Self {
            proc,
            ready,
            spec: spec.clone(),
        })
    }

    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn prog_id(&self) -> u32 {
        self.ready.prog_id
    }

    pub fn link_id(&self) -> Option<u32> {
        self.ready.link_id
    }

    pub fn name(&self) -> &str {
        &self.ready.name
    }

    pub fn tag(&self) -> &str {
        &self.ready.tag
    }

    /// The process holding the program and its link.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Stops it and checks it detached everything itself (exit status 0).
    pub fn stop(mut self) -> Result<()> {
        let status = self.proc.stop(STOP_TIMEOUT)?;
        if !status.success() {
            bail!("lab-agent {} exited with {status}", self.spec.prog_name());
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let clean = matches!(self.proc.stop(STOP_TIMEOUT), Ok(s) if s.success());
        // Killed before it could delete its tc filter: the filter would outlive it.
        if let (false, Some(tc), Target::Device { netns, .. }) = (clean, &self.ready.tc, &self.spec.target)
            && let Err(e) = tc.remove(netns.as_deref())
        {
            eprintln!("lab-agent: removing its tc filter for it: {e:#}");
        }
    }
}

/// The child process, stopped once.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// SIGTERM and stdin closed, then up to `grace` for it to exit, then SIGKILL.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.exited {
            return Ok(s);
        }
        self.stdin.take();
        // SAFETY: our own child, not yet reaped, so the pid is still its.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = match wait_timeout(&mut self.child, grace)? {
            Some(s) => s,
            None => {
                self.child.kill()?;
                self.child.wait()?
            }
        };
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(STOP_TIMEOUT);
    }
}

/// Waits for the child to exit, at most `timeout`, without polling in a loop: a pidfd becomes
/// readable when the process exits.
fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    if let Some(s) = child.try_wait()? {
        return Ok(Some(s));
    }
    // SAFETY: plain syscall; the fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the new pidfd, owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    poll_readable(&pidfd, timeout)?;
    child.try_wait()
}

/// poll(2) for one fd, retried on EINTR.
fn poll_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
        match r {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// The first line of the child's stdout, or an error after `timeout` or at EOF.
fn read_line_within(stdout: std::process::ChildStdout, timeout: Duration) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    // The thread ends at the line or at EOF (the child killed after a timeout closes it).
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(line)) if line.is_empty() => bail!("exited before it was ready"),
        Ok(Ok(line)) => Ok(line),
        Ok(Err(e)) => Err(e).context("reading its stdout"),
        Err(_) => bail!("not ready within {timeout:?}"),
    }
}

/// `{"ready":true,...}`, or the error `{"ready":false,"error":"..."}` carries.
fn parse_ready(line: &str) -> Result<Ready> {
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("bad line {line:?}"))?;
    if v["ready"] != serde_json::Value::Bool(true) {
        bail!("{}", v["error"].as_str().unwrap_or(line.trim()));
    }
    Ok(serde_json::from_value(v)?)
}

/// The `lab-agent` binary: $LAB_AGENT_BIN, else next to the current executable or one
/// directory up (a test runs from target/*/deps, the binaries are in target/*).
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LAB_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("lab-agent"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "lab-agent not found next to {}: build it (`cargo build -p lab --bin lab-agent`) or set LAB_AGENT_BIN",
                exe.display()
            )
        })
}

/// Held by whoever checks that an agent's program name is gone: the names are fixed by kind
/// and variant, so two users of one kind on this machine (tests of this crate, a campaign)
/// would see each other's. A file lock: it serializes threads and processes alike.
pub struct NamesLock {
    _file: fs::File,
}

/// Waits for [`NamesLock`].
pub fn lock_names() -> Result<NamesLock> {
    let path = std::env::temp_dir().join("lab-agent-names.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a valid fd; blocks until granted, released when the file closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error()).context("flock");
    }
    Ok(NamesLock { _file: file })
}

/// A TCP port no test traffic uses, for the probes' inert programs.
const PROBE_PORT: u16 = 9;

/// Whether this kernel (and this machine's tc) can load and attach `kind`: tries it, inert,
/// on the loopback of a throwaway namespace or on a throwaway cgroup, then releases it.
pub fn available(kind: Kind) -> Result<(), String> {
    probe(kind).map_err(|e| format!("{}: {e:#}", kind.name()))
}

fn probe(kind: Kind) -> Result<()> {
    if kind.on_device() {
        let ns = ScratchNetns::new("lab-agent-probe")?;
        let dev = "lo".to_string();
        probe_on(
            kind,
            Target::Device {
                netns: Some(ns.name().to_string()),
                dev,
            },
        )
    } else {
        let cg = ScratchCgroup::new("lab-agent-probe")?;
        probe_on(kind, Target::Cgroup(cg.path().to_path_buf()))
    }
}

/// Start and stop, inert: the namespace or cgroup outlives the agent.
fn probe_on(kind: Kind, target: Target) -> Result<()> {
    let spec = Spec {
        kind,
        target,
        port: PROBE_PORT,
        inert: true,
    };
    Agent::start(&spec)?.stop()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn spec_round_trips_through_the_command_line() {
        let specs = [
            Spec {
                kind: Kind::TcEgress,
                target: Target::Device {
                    netns: Some("ns-1".into()),
                    dev: "eth0".into(),
                },
                port: 49983,
                inert: true,
            },
            Spec {
                kind: Kind::CgroupConnect4,
                target: Target::Cgroup("/sys/fs/cgroup/x".into()),
                port: 80,
                inert: false,
            },
        ];
        for s in specs {
            assert_eq!(Spec::parse(s.args()).unwrap(), s);
        }
    }

    #[test]
    fn spec_refuses_a_target_of_the_wrong_kind() {
        assert!(Spec::parse(args("--kind xdp --cgroup /x --port 1")).is_err());
        assert!(Spec::parse(args("--kind cgroup-connect4 --dev eth0 --port 1")).is_err());
        let cg = Spec::parse(args("--netns ns-1 --kind cgroup-connect4 --cgroup /x --port 1")).unwrap();
        assert_eq!(cg.target, Target::Cgroup("/x".into()));
        assert!(Spec::parse(args("--kind xdp --dev eth0")).is_err());
        assert!(Spec::parse(args("--kind xdp --dev eth0 --port 70000")).is_err());
        assert!(Spec::parse(args("--kind nope --dev eth0 --port 1")).is_err());
    }

    #[test]
    fn names_are_unique_and_fit_the_kernel() {
        let mut seen = std::collections::HashSet::new();
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(*k));
            for inert in [false, true] {
                let n = k.prog_name(inert);
                assert!(n.len() <= 15, "{n}");
                assert!(seen.insert(n), "{n} twice");
            }
        }
    }

    #[test]
    fn ready_lines_parse_and_errors_carry_their_text() {
        let line = r#"{"ready":true,"prog_id":7,"link_id":null,"name":"agent_tci_drop","tag":"00ff","kind":"tc-ingress","attach_type":"tc_ingress","ifindex":2,"xdp_flags":null,"tc":null}"#;
        let r = parse_ready(line).unwrap();
        assert_eq!((r.prog_id, r.link_id, r.kind), (7, None, Kind::TcIngress));
        let e = parse_ready(r#"{"ready":false,"error":"verifier says no"}"#).unwrap_err();
        assert_eq!(e.to_string(), "verifier says no");
    }
}
