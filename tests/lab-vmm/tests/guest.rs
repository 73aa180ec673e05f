//! lab-vmm end to end, as root: each test makes its own network namespace with a persistent
//! tap0 (as the lab does), runs lab-vmm inside it with `ip netns exec`, and talks to the
//! guest from inside that namespace only. Nothing is added to the root namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lab-vmm");
const GUEST: &str = "169.254.0.21:49983";
/// E2B's orchestrator gives each envd attempt 50 ms.
const ATTEMPT: Duration = Duration::from_millis(50);

#[test]
fn userspace_guest_answers_like_envd() {
    if !lab::testing::require_root("userspace_guest_answers_like_envd") {
        return;
    }
    let _lock = lab::state::LabLock::acquire().unwrap();
    let ns = Netns::with_tap();
    let mut vmm = Vmm::start(&ns, &["--guest", "userspace"]);
    let boot = vmm.wait_ready(Duration::from_secs(10));
    eprintln!("userspace guest READY after {boot:?}");
    check_envd(&ns, Duration::from_secs(2));
    ns.run(|| {
        for i in 0..300 {
            let status = http("GET", "/health", ATTEMPT)
                .unwrap_or_else(|e| panic!("connection {i} of 300 failed: {e}"));
            assert_eq!(status, 204, "connection {i}");
        }
    });
    check_listener_toggle(&ns, &vmm, Duration::from_secs(2));
    assert_eq!(
        vmm.control("status"),
        "ok listener=on guest=userspace ready=yes tap=attached"
    );
    assert!(vmm.control("bogus").starts_with("err "));
    check_off_subnet_client(&ns, Duration::from_secs(2));
    // Like Firecracker, lab-vmm outlives its tap: discovery must still find the process.
    ns.ip(&["link", "del", "tap0"]);
    assert!(vmm.control("status").ends_with("tap=gone"));
    let api = vmm.api.clone();
    let status = vmm.stop();
    assert!(status.success(), "lab-vmm exited with {status} on SIGTERM");
    assert!(!api.exists(), "the api socket was left behind");
}

#[test]
fn qemu_guest_answers_like_envd() {
    if !lab::testing::require_root("qemu_guest_answers_like_envd") {
        return;
    }
    let _lock = lab::state::LabLock::acquire().unwrap();
    let guest = GuestImage::get();
    let ns = Netns::with_tap();
    let kernel = guest.dir().join("vmlinuz");
    let initrd = guest.dir().join("initramfs.cpio.gz");
    let mut vmm = Vmm::start(
        &ns,
        &[
            "--guest",
            "qemu",
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&initrd),
        ],
    );
    let boot = vmm.wait_ready(Duration::from_secs(90));
    eprintln!("qemu guest READY after {boot:?}");
    // TCG is slow: a forked shell per connection, so a generous timeout here.
    check_envd(&ns, Duration::from_secs(5));
    check_listener_toggle(&ns, &vmm, Duration::from_secs(5));
    assert!(vmm.control("status").starts_with("ok listener=on guest=qemu"));
    check_off_subnet_client(&ns, Duration::from_secs(5));
    // QEMU would spin on a deleted tap: lab-vmm notices (within ~1 s) and freezes it.
    ns.ip(&["link", "del", "tap0"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !vmm.control("status").ends_with("tap=gone") {
        assert!(Instant::now() < deadline, "tap deletion not noticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(vmm.control("listener off").starts_with("err "));
    let status = vmm.stop();
    assert!(status.success(), "lab-vmm exited with {status} on SIGTERM");
}

#[test]
fn missing_tap_is_a_clear_error() {
    if !lab::testing::require_root("missing_tap_is_a_clear_error") {
        return;
    }
    let _lock = lab::state::LabLock::acquire().unwrap();
    let ns = Netns::new();
    let api = api_sock_path();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN, "--api-sock"])
        .arg(&api)
        .args(["--tap", "tap0"])
        .output()
        .expect("run lab-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lab-vmm started without a tap");
    assert!(stderr.contains("tap0 does not exist"), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    // And it must not have created one.
    let links = run_ok(Command::new("ip").args(["-n", &ns.name, "-o", "link"]));
    assert!(!links.contains("tap0"), "lab-vmm created tap0: {links}");
    assert!(!api.exists());
}

/// The three answers envd gives the orchestrator.
fn check_envd(ns: &Netns, timeout: Duration) {
    ns.run(|| {
        assert_eq!(http("GET", "/health", timeout).expect("GET /health"), 204);
        assert_eq!(http("POST", "/init", timeout).expect("POST /init"), 204);
        assert_eq!(http("GET", "/nope", timeout).expect("GET /nope"), 404);
    });
}

/// `listener off` makes the guest refuse the port (RST), `listener on` brings it back.
fn check_listener_toggle(ns: &Netns, vmm: &Vmm, timeout: Duration) {
    assert_eq!(vmm.control("listener off"), "ok listener=off");
    ns.run(|| {
        let err = connect(Duration::from_secs(2)).expect_err("connect with the listener off");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    });
    assert_eq!(vmm.control("listener on"), "ok listener=on");
    ns.run(|| assert_eq!(http("GET", "/health", timeout).expect("GET /health"), 204));
}

/// A client whose address is outside the tap subnet, as the orchestrator's is: the guest
/// must answer ARP from it and route its replies through the gateway.
fn check_off_subnet_client(ns: &Netns, timeout: Duration) {
    ns.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    ns.ip(&[
        "route",
        "replace",
        "169.254.0.21/32",
        "dev",
        "tap0",
        "src",
        "10.99.0.1",
    ]);
    ns.ip(&["neigh", "flush", "dev", "tap0"]);
    ns.run(|| assert_eq!(http("GET", "/health", timeout).expect("GET /health"), 204));
}

fn connect(timeout: Duration) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = GUEST.parse().expect("guest address");
    TcpStream::connect_timeout(&addr, timeout)
}

/// One request on a fresh connection, like the orchestrator's; returns the status code.
fn http(method: &str, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut stream = connect(timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = if method == "POST" { "{}" } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 169.254.0.21\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))
}

/// A network namespace of our own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("lvt-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A namespace with tap0 set up the way the lab (and E2B) does.
    fn with_tap() -> Netns {
        let ns = Netns::new();
        ns.ip(&["tuntap", "add", "tap0", "mode", "tap"]);
        ns.ip(&["link", "set", "tap0", "address", "02:fc:00:00:00:06"]);
        ns.ip(&["addr", "add", "169.254.0.22/30", "dev", "tap0"]);
        ns.ip(&["link", "set", "tap0", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open the netns file");
                // SAFETY: setns on this thread only; the fd is valid for the call.
                let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A running lab-vmm; killed on drop, with its stderr shown if the test failed.
struct Vmm {
    child: Child,
    api: PathBuf,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Vmm {
    fn start(ns: &Netns, args: &[&str]) -> Vmm {
        let api = api_sock_path();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, BIN, "--api-sock"])
            .arg(&api)
            .args(["--tap", "tap0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lab-vmm");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout pipe");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Vmm {
            child,
            api,
            stdout,
            stderr,
        }
    }

    /// Waits for stdout's first line, which must be READY; panics at the deadline or if
    /// lab-vmm exits first.
    fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        match self.stdout.recv_timeout(timeout) {
            Ok(line) if line == "READY" => start.elapsed(),
            Ok(line) => panic!("unexpected stdout line {line:?}"),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no READY within {timeout:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().expect("wait for lab-vmm");
                panic!("lab-vmm exited ({status}) before READY");
            }
        }
    }

    /// One command on the api socket; returns the reply line.
    fn control(&self, command: &str) -> String {
        let mut stream = UnixStream::connect(&self.api).expect("connect to the api socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(70)))
            .expect("set_read_timeout");
        stream
            .write_all(format!("{command}\n").as_bytes())
            .expect("send a command");
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .expect("read a reply");
        reply.trim_end().to_string()
    }

    /// SIGTERM, then the exit status (SIGKILL after 10 s).
    fn stop(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("lab-vmm did not exit within 10 s of SIGTERM");
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking()
            && let Ok(s) = self.stderr.lock()
        {
            eprintln!("--- lab-vmm stderr ---\n{s}--- end ---");
        }
    }
}

/// The QEMU guest: the developer's cache if it has one, else a fresh build in a temp dir.
enum GuestImage {
    Cached(PathBuf),
    Temp(PathBuf),
}

impl GuestImage {
    fn get() -> GuestImage {
        let cache = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/tracer/guest"))
            .filter(|d| d.join("vmlinuz").is_file() && d.join("initramfs.cpio.gz").is_file());
        let image = match cache {
            Some(dir) => GuestImage::Cached(dir),
            None => {
                let dir = std::env::temp_dir().join(format!("lvt-guest-{}", std::process::id()));
                GuestImage::Temp(dir)
            }
        };
        // Idempotent: a no-op for an up-to-date cache.
        let started = Instant::now();
        run_ok(Command::new(BIN).arg("build-guest").arg("--out").arg(image.dir()));
        eprintln!("build-guest took {:?}", started.elapsed());
        image
    }

    fn dir(&self) -> &Path {
        match self {
            GuestImage::Cached(d) | GuestImage::Temp(d) => d,
        }
    }
}

impl Drop for GuestImage {
    fn drop(&mut self) {
        if let GuestImage::Temp(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `/tmp/fc-<sandboxID>-<rand>.sock`, with a 20-character id like E2B's.
fn api_sock_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id = format!("lvt{:08x}{:05}{n:04}", nanos, std::process::id() % 100_000);
    PathBuf::from(format!("/tmp/fc-{}-{n:x}.sock", &id[..20.min(id.len())]))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
