//! Shared helpers of the end-to-end tests: namespaces with guards, running code inside a
//! namespace, and driving the tracer binary.
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

#[allow(unused_imports)] // not every test file needs it
pub use lab::testing::require_root;

/// A namespace created for one test, deleted on drop (success or failure).
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs a command inside the namespace, panicking with its stderr on failure.
    pub fn run(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh(&full)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: plain syscall; the thread ends in this namespace.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs a command, panicking with its stderr when it fails.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair: `a` (10.99.0.1/24, va) and `b` (10.99.0.2/24, vb).
pub fn veth_pair(tag: &str) -> (TestNetns, TestNetns) {
    let a = TestNetns::new(&format!("{tag}a"));
    let b = TestNetns::new(&format!("{tag}b"));
    sh(&[
        "ip", "-n", &a.name, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ]);
    sh(&["ip", "-n", &a.name, "addr", "add", "10.99.0.1/24", "dev", "va"]);
    sh(&["ip", "-n", &b.name, "addr", "add", "10.99.0.2/24", "dev", "vb"]);
    sh(&["ip", "-n", &a.name, "link", "set", "va", "up"]);
    sh(&["ip", "-n", &b.name, "link", "set", "vb", "up"]);
    (a, b)
}

/// The tracer under test: cargo's build, or $TRACER_BIN (to run the suite against another
/// build, e.g. an older one, to see a test fail).
pub fn tracer_bin() -> std::path::PathBuf {
    std::env::var_os("TRACER_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tracer").into())
}

/// The tracer binary under test, with its stdout read line by line on a thread.
pub struct Tracer {
    child: Child,
    lines: Receiver<String>,
    pub stderr_path: std::path::PathBuf,
}

impl Tracer {
    /// Starts `tracer <args>` and waits until it says it is attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`Tracer::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(Command::new(tracer_bin()).args(args).envs(env.iter().copied()))
    }

    /// Starts the tracer through another program that execs it (`ip netns exec NS tracer
    /// ...`), so the child's pid is the tracer's.
    pub fn start_program(program: &str, args: &[&str]) -> Self {
        Self::spawn(Command::new(program).args(args))
    }

    fn spawn(cmd: &mut Command) -> Self {
        let stderr_path =
            std::env::temp_dir().join(format!("tracer-e2e-{}-{}.err", std::process::id(), rand_suffix()));
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("start tracer");
        let lines = spawn_reader(child.stdout.take().expect("stdout"));
        let t = Self {
            child,
            lines,
            stderr_path,
        };
        t.wait_stderr("attached", Duration::from_secs(20));
        t
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) {
        let found = lab::testing::wait_for(timeout, Duration::from_millis(10), || {
            std::fs::read_to_string(&self.stderr_path)
                .ok()
                .filter(|s| s.contains(needle))
                .map(|_| ())
        });
        assert!(
            found.is_some(),
            "tracer never printed {needle:?}; stderr: {}",
            self.stderr()
        );
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next JSON line that satisfies `pred`, within `timeout`. Lines before it are
    /// returned too (for "nothing else came first" checks).
    pub fn next_json(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (serde_json::Value, Vec<serde_json::Value>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no matching output within {timeout:?}; before: {before:?}; stderr: {}",
                    self.stderr()
                )
            });
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            if pred(&v) {
                return (v, before);
            }
            before.push(v);
        }
    }

    /// Sends SIGINT and waits for the exit code.
    pub fn stop(mut self) -> i32 {
        // SAFETY: signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait tracer");
        status.code().unwrap_or(-1)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

fn spawn_reader(out: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs `tracer trace --vm ID --probe --json <extra>`: (exit code, the verdict, stderr).
pub fn probe(id: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(tracer_bin())
        .args(["trace", "--vm", id, "--probe", "--json"])
        .args(extra)
        .output()
        .expect("run tracer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "--probe prints exactly one verdict; got {lines:?}; stderr: {stderr}"
    );
    let v = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]));
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// Runs the tracer with arbitrary arguments: (exit code, stdout, stderr).
pub fn tracer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tracer_bin())
        .args(args)
        .output()
        .expect("run tracer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Names of every BPF program loaded on the machine.
pub fn loaded_program_names() -> Vec<String> {
    lab::bpf::loaded().into_iter().map(|p| p.name).collect()
}

/// The tracer's program names, as the kernel keeps them, from the hook table.
pub fn our_programs() -> Vec<&'static str> {
    tracer_common::hooks::kernel_names().collect()
}

impl Tracer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the tracer to exit by itself.
    pub fn wait(mut self) -> i32 {
        self.child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1)
    }

    /// Waits at most `limit` for the tracer to exit by itself: its exit code, or None (and
    /// it is killed) when it did not.
    pub fn wait_at_most(&mut self, limit: Duration) -> Option<i32> {
        let done = lab::testing::wait_for(limit, Duration::from_millis(5), || {
            self.child.try_wait().ok().flatten()
        });
        done.map(|s| s.code().unwrap_or(-1))
    }

    /// SIGINT, then every JSON line printed until exit.
    pub fn stop_and_collect(self) -> Vec<serde_json::Value> {
        self.stop_and_collect_with_stderr().0
    }

    /// Like [`Tracer::stop_and_collect`], with all the tracer wrote to stderr.
    pub fn stop_and_collect_with_stderr(mut self) -> (Vec<serde_json::Value>, String) {
        // SAFETY: signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            if let Ok(v) = serde_json::from_str(&line) {
                out.push(v);
            }
        }
        (out, self.stderr())
    }
}

/// Runs the tracer with `args`, killing it if it runs longer than `limit`: (exit code, or
/// None when it had to be killed; stdout; stderr).
pub fn tracer_bounded(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(tracer_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tracer");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (read(Box::new(out)), read(Box::new(err)));
    let done = lab::testing::wait_for(limit, Duration::from_millis(10), || {
        child.try_wait().ok().flatten()
    });
    let code = match done {
        Some(status) => status.code(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    (
        code,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// Removes a directory tree when dropped (test scratch space).
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every process below `pid` (children, their children ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            break;
        };
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if proc_ppid(child) == Some(p) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out
}

fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(String::from)
            .collect(),
    )
}

/// `/proc/PID/stat`'s state letter.
pub fn proc_state(pid: u32) -> Option<char> {
    proc_stat_fields(pid)?.first()?.chars().next()
}

fn proc_ppid(pid: u32) -> Option<u32> {
    proc_stat_fields(pid)?.get(1)?.parse().ok()
}

/// SIGKILLs a process when dropped (a test's leftover, whatever the test's outcome).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a plain signal.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Kills and reaps a child process when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
