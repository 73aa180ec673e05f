//! `xtask kernel-selftest`: the end-to-end subset the kernel matrix runs inside a QEMU VM
//! booted on the kernel under test (see kernel_matrix.rs). It is the VM's only workload:
//! each step prints `KTEST ok <step>` or `KTEST FAIL <step>: <why>` on the serial console,
//! then `KTEST done passed=N failed=M`, which the host reads.
//!
//! The steps use the same lab as the end-to-end tests, with a userspace guest, and the
//! workspace's release tracer. What they expect depends on the kernel:
//! - `full` (6.6+): `trace --vm --probe` names healthy, forward-drop, no-dnat, reply-drop and
//!   guest-no-listener; doctor; `trace --port`; nothing stays loaded afterwards.
//! - `refuse` (before 6.6): `trace --vm` and `watch` exit 2 naming tcx and netfilter links
//!   with the versions that have them; `trace --port` still reports the drop with its reason;
//!   doctor works; nothing stays loaded.
//!
//! With `--root-host` the VM runs the production layout instead (kernel_root_host.rs).
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Args, ValueEnum};
use lab::{Fault, Lab, LabConfig};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Expect {
    /// Everything the tracer does (6.6+: tcx and netfilter links).
    Full,
    /// `trace --vm` refused cleanly; drops still reported.
    Refuse,
}

#[derive(Args)]
pub struct SelftestArgs {
    #[arg(long, value_enum)]
    pub expect: Expect,
    /// The tracer binary.
    #[arg(long)]
    pub tracer: PathBuf,
    /// The lab's VMM binary.
    #[arg(long)]
    pub vmm: PathBuf,
    /// The production layout: the host side in the VM's root namespace (kernel_root_host.rs).
    #[arg(long)]
    pub root_host: bool,
}

/// Probe attempts under emulation: a TCG guest misses a 50 ms attempt now and then.
pub(crate) const PROBE: &[&str] = &["--timeout", "1s"];

pub fn run(args: SelftestArgs) -> Result<()> {
    // SAFETY: nothing else runs yet (no thread has been started).
    unsafe { std::env::set_var("LAB_VMM_BIN", &args.vmm) };
    if args.root_host {
        return crate::kernel_root_host::run(&args.tracer);
    }
    let mut t = Steps::default();
    let tracer = args.tracer.as_path();
    t.step("check", || check(tracer, args.expect));
    // The tap device node appears with its module; the lab opens it by path.
    t.step("modprobe tun", || run_ok(Command::new("modprobe").arg("tun")));
    let mut lab = match Lab::up(LabConfig::default()) {
        Ok(lab) => {
            t.ok("lab up");
            Some(lab)
        }
        Err(e) => {
            t.fail("lab up", &format!("{e:#}"));
            None
        }
    };
    if let Some(lab) = lab.as_mut() {
        let id = lab.sandbox_ids()[0].clone();
        match args.expect {
            Expect::Full => full(&mut t, lab, tracer, &id),
            Expect::Refuse => refuse(&mut t, tracer, &id),
        }
        t.step("trace --port", || drop_log(lab, tracer));
        t.step("doctor", || doctor(lab, tracer, &id));
    }
    if let Some(lab) = lab.take() {
        t.step("lab down", || lab.down());
    }
    t.step("detach", nothing_loaded);
    println!("KTEST done passed={} failed={}", t.passed, t.failed);
    Ok(())
}

#[derive(Default)]
pub(crate) struct Steps {
    pub(crate) passed: u32,
    pub(crate) failed: u32,
}

impl Steps {
    pub(crate) fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) {
        let start = Instant::now();
        match f() {
            Ok(()) => self.ok(&format!("{name} ({} ms)", start.elapsed().as_millis())),
            Err(e) => self.fail(name, &format!("{e:#}")),
        }
    }

    pub(crate) fn ok(&mut self, name: &str) {
        self.passed += 1;
        println!("KTEST ok {name}");
    }

    pub(crate) fn fail(&mut self, name: &str, why: &str) {
        self.failed += 1;
        // One line per failure: the host reads the console line by line.
        println!("KTEST FAIL {name}: {}", why.replace('\n', " | "));
    }
}

/// `tracer check`: the feature table (shown on the host) agrees with what the kernel is
/// expected to have.
fn check(tracer: &Path, expect: Expect) -> Result<()> {
    let (code, text, _) = tracer_out(tracer, &["check"])?;
    for line in text.lines() {
        println!("KTEST| {line}");
    }
    let (_, json, _) = tracer_out(tracer, &["check", "--json"])?;
    let v: Value = serde_json::from_str(&json).context("check --json is not JSON")?;
    let want = expect == Expect::Full;
    ensure!(
        v["path"] == want && (code == 0) == want,
        "path={} exit {code}, expected {expect:?}",
        v["path"]
    );
    // The verifier confirms the table: every program loads, in its older form where the
    // kernel's tracepoint passes fewer arguments; netfilter programs only where they exist.
    let trial = |program: &str| -> Result<(bool, String)> {
        let t = v["programs"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["program"] == program))
            .with_context(|| format!("no load trial of {program}: {v}"))?;
        Ok((
            t["loaded"] == true,
            t["form"].as_str().unwrap_or(program).to_string(),
        ))
    };
    let older = expect == Expect::Refuse;
    // Every tracepoint and tcx hook of the table, in the form this kernel takes: the older
    // form where one exists on the kernels that refuse the path (older than both newer forms).
    let expected: Vec<(&str, &str)> = tracer_common::hooks::HOOKS
        .iter()
        .filter(|h| h.attach != tracer_common::hooks::Attach::Netfilter)
        .map(|h| match h.older {
            Some(o) if older => (h.name, o.program),
            _ => (h.name, h.program()),
        })
        .collect();
    for (program, form) in expected {
        let got = trial(program)?;
        ensure!(
            got == (true, form.to_string()),
            "{program}: loaded/form {got:?}, expected {form}"
        );
    }
    let (nf, _) = trial("netfilter slots")?;
    ensure!(nf == want, "netfilter slots loaded: {nf}, expected {want}");
    Ok(())
}

/// 6.6+: every probe names its fault, as on the development kernel.
fn full(t: &mut Steps, lab: &mut Lab, tracer: &Path, id: &str) {
    t.step("probe healthy", || {
        let (code, v) = probe(tracer, id)?;
        expect_field(&v, "outcome", "connected")?;
        ensure!(code == 0, "exit {code}");
        Ok(())
    });
    let cases: &[(Fault, &[(&str, &str)])] = &[
        (
            Fault::ForwardDrop,
            &[
                ("outcome", "dropped"),
                ("drop.direction", "request"),
                ("drop.hook", "FORWARD"),
                ("drop.table", "filter"),
                ("drop.reason", "NETFILTER_DROP"),
                (
                    "drop.rule",
                    "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP",
                ),
            ],
        ),
        (
            Fault::NoDnat,
            &[
                ("divergence.field", "destination"),
                ("divergence.netns", "ns-1"),
                ("cause_actor.id.kind", "missing_rule"),
                ("cause_actor.id.table", "nat"),
                ("cause_actor.id.chain", "PREROUTING"),
            ],
        ),
        (
            Fault::ReplyDrop,
            &[
                ("outcome", "dropped"),
                ("drop.direction", "reply"),
                ("drop.hook", "FORWARD"),
            ],
        ),
        (
            Fault::GuestNoListener,
            &[("outcome", "reset"), ("reset.by", "guest")],
        ),
    ];
    // Deep mode reads struct fields and takes stacks: its facts must hold on this kernel too.
    t.step("probe --deep forward-drop", || {
        lab.break_fault(0, Fault::ForwardDrop)?;
        let result = probe_with(tracer, id, &["--deep"]).and_then(|(code, v)| {
            ensure!(code == 1, "exit {code}: {v}");
            let hops = v["hops"].as_array().context("hops")?;
            let at = |point: &str| hops.iter().find(|h| h["netns"] == "ns-1" && h["point"] == point);
            let fwd = at("nf/FORWARD").context("no FORWARD hop")?;
            expect_field(fwd, "deep.conntrack.state", "NEW")?;
            let drop = at("drop").context("no drop hop")?;
            ensure!(
                drop["deep"]["stack"].to_string().contains("nf_hook_slow"),
                "stack: {drop}"
            );
            ensure!(fwd["deep"]["ttl"].as_u64().is_some_and(|t| t > 0), "ttl: {fwd}");
            Ok(())
        });
        lab.heal(0)?;
        result
    });
    for (fault, fields) in cases {
        t.step(&format!("probe {}", fault.name()), || {
            lab.break_fault(0, *fault)?;
            let result = probe(tracer, id).and_then(|(code, v)| {
                ensure!(code == 1, "exit {code}: {v}");
                fields.iter().try_for_each(|(k, want)| expect_field(&v, k, want))
            });
            lab.heal(0)?;
            result
        });
    }
}

/// Before 6.6: `trace --vm` and `watch` refuse with the missing features and their versions.
fn refuse(t: &mut Steps, tracer: &Path, id: &str) {
    for (name, args) in [
        ("trace --vm refused", vec!["trace", "--vm", id, "--probe"]),
        ("watch refused", vec!["watch"]),
    ] {
        t.step(name, || {
            let (code, _, err) = tracer_out(tracer, &args)?;
            ensure!(
                code == 4,
                "exit {code}, expected 4 (the kernel lacks what is needed): {err}"
            );
            for want in [
                "tcx (Linux 6.6+)",
                "netfilter links (Linux 6.4+)",
                "tracer trace --port",
            ] {
                ensure!(err.contains(want), "stderr lacks {want:?}: {err}");
            }
            ensure!(err.trim().lines().count() == 1, "one sentence: {err}");
            Ok(())
        });
    }
}

/// `trace --port 49983` reports the FORWARD drop with its reason.
fn drop_log(lab: &mut Lab, tracer: &Path) -> Result<()> {
    lab.break_fault(0, Fault::ForwardDrop)?;
    let result = (|| {
        let mut run = Running::start(tracer, &["trace", "--port", "49983", "--json"])?;
        // Attempts until a drop is reported (bounded): the first may precede the attach.
        let deadline = Instant::now() + Duration::from_secs(60);
        let drop = loop {
            ensure!(
                Instant::now() < deadline,
                "no drop reported in 60 s; stderr: {}",
                run.stderr()
            );
            lab.connect(0, 1)?;
            if let Some(v) = run.next_json(Duration::from_secs(2)) {
                break v;
            }
        };
        expect_field(&drop, "reason", "NETFILTER_DROP")?;
        expect_field(&drop, "netns.name", "ns-1")?;
        let code = run.stop()?;
        ensure!(code == 1, "drops were found: exit 1, not {code}");
        Ok(())
    })();
    lab.heal(0)?;
    result
}

/// `doctor` passes a healthy sandbox and names the FORWARD rule of a broken one.
fn doctor(lab: &mut Lab, tracer: &Path, id: &str) -> Result<()> {
    let (code, out, err) = tracer_out(tracer, &["doctor", "--vm", id, "--json"])?;
    ensure!(code == 0, "healthy: exit {code}: {out} {err}");
    lab.break_fault(0, Fault::ForwardDrop)?;
    let result = tracer_out(tracer, &["doctor", "--vm", id, "--json"]).and_then(|(code, out, _)| {
        let v: Value = serde_json::from_str(&out).context("doctor --json")?;
        let problems: Vec<&str> = v["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "problem")
            .filter_map(|c| c["id"].as_str())
            .collect();
        ensure!(
            code == 1 && problems.contains(&"ns_iptables"),
            "exit {code}, problems {problems:?}"
        );
        Ok(())
    });
    lab.heal(0)?;
    result
}

/// No BPF program is left loaded (nothing else loads any in this VM).
pub(crate) fn nothing_loaded() -> Result<()> {
    let left = crate::bpfstats::read(|_| true);
    ensure!(
        left.is_empty(),
        "still loaded: {:?}",
        left.keys().collect::<Vec<_>>()
    );
    Ok(())
}

fn probe(tracer: &Path, id: &str) -> Result<(i32, Value)> {
    probe_with(tracer, id, &[])
}

pub(crate) fn probe_with(tracer: &Path, id: &str, extra: &[&str]) -> Result<(i32, Value)> {
    let mut args = vec!["trace", "--vm", id, "--probe", "--json"];
    args.extend_from_slice(PROBE);
    args.extend_from_slice(extra);
    let (code, out, err) = tracer_out(tracer, &args)?;
    let v = serde_json::from_str(out.trim()).with_context(|| format!("not one JSON verdict: {out} {err}"))?;
    Ok((code, v))
}

/// `path` is dotted (`drop.hook`); `cause_actor` is the actor whose role is `cause`.
pub(crate) fn expect_field(v: &Value, path: &str, want: &str) -> Result<()> {
    let got = field(v, path);
    ensure!(got == want, "{path} = {got}, expected {want:?}; verdict: {v}");
    Ok(())
}

/// A dotted path into a record (Null when absent); `cause_actor` is the actor whose role is
/// `cause`.
pub(crate) fn field<'v>(v: &'v Value, path: &str) -> &'v Value {
    path.split('.').fold(v, |v, k| match k {
        "cause_actor" => v["actors"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["role"] == "cause"))
            .unwrap_or(&Value::Null),
        _ => &v[k],
    })
}

/// Runs the tracer to completion (bounded): (exit code, stdout, stderr).
pub(crate) fn tracer_out(tracer: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let mut child = Command::new(tracer)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", tracer.display()))?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let out = std::thread::spawn(move || read_all(out));
    let err = std::thread::spawn(move || read_all(err));
    let code =
        wait_bounded(&mut child, Duration::from_secs(120)).with_context(|| format!("tracer {args:?}"))?;
    Ok((
        code,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    ))
}

fn read_all(r: Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Result<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    ensure!(
        out.status.success(),
        "{:?}: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A tracer left running: its stdout lines on a channel, its stderr in a file.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Running {
    /// Starts it and waits (bounded) until it says it is attached.
    pub(crate) fn start(tracer: &Path, args: &[&str]) -> Result<Self> {
        let stderr = std::env::temp_dir().join(format!("ktest-{}.err", std::process::id()));
        let mut child = Command::new(tracer)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let run = Self { child, lines, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !run.stderr().contains("attached") {
            ensure!(Instant::now() < deadline, "never attached: {}", run.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(run)
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub(crate) fn next_json(&self, within: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(within).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// SIGINT, then its exit code (bounded).
    pub(crate) fn stop(&mut self) -> Result<i32> {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        wait_bounded(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr);
    }
}
