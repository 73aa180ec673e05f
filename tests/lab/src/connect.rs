//! The orchestrator stand-in: what E2B's orchestrator does to reach envd, from the lab's host
//! side (`e2b-host`, or the root namespace: [`crate::topology::HostNs`]).
//! Each attempt is a new TCP connection to host IP:49983 with `POST /init`, a 50 ms
//! per-attempt timeout and 5 ms between attempts.
use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;

pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(50);
pub const RETRY_DELAY: Duration = Duration::from_millis(5);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum AttemptResult {
    /// envd answered with this HTTP status.
    Ok { status: u16 },
    /// No answer within the timeout (SYN lost, or no SYN-ACK).
    Timeout,
    /// The connection was refused (RST).
    Refused,
    /// The kernel had no route or the neighbour was unreachable (ICMP or local error).
    Unreachable { error: String },
    /// connect() itself was refused by the local stack (a prohibit rule: EACCES, a blackhole
    /// route: EINVAL, a local firewall: EPERM).
    Rejected { error: String },
    /// Anything else.
    Error { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub result: AttemptResult,
    pub latency_us: u64,
    /// Local port used (0 when the connect failed before one was bound).
    pub local_port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub target: String,
    pub attempts: Vec<Attempt>,
}

impl ConnectReport {
    pub fn succeeded(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| matches!(a.result, AttemptResult::Ok { status: 200..=299 }))
    }

    /// The result of the last attempt (the failure mode when nothing succeeded).
    pub fn last(&self) -> Option<&AttemptResult> {
        self.attempts.last().map(|a| &a.result)
    }

    /// One human line per distinct result, with counts and latencies.
    pub fn summary(&self) -> String {
        let ok = self
            .attempts
            .iter()
            .filter(|a| matches!(a.result, AttemptResult::Ok { .. }))
            .count();
        let mut lat: Vec<u64> = self.attempts.iter().map(|a| a.latency_us).collect();
        lat.sort_unstable();
        let median = lat.get(lat.len() / 2).copied().unwrap_or(0);
        let verdict = if self.succeeded() { "success" } else { "FAILED" };
        let last = self.last().map(|r| format!("{r:?}")).unwrap_or_default();
        format!(
            "{verdict}: {ok}/{} attempts to {} answered; median latency {median} µs; last result: {last}",
            self.attempts.len(),
            self.target
        )
    }
}

/// Makes `attempts` attempts from the namespace named `host_ns` (under /var/run/netns),
/// stopping at the first success when `stop_on_success`.
pub fn connect(
    host_ns: &str,
    host_ip: Ipv4Addr,
    port: u16,
    attempts: u32,
    stop_on_success: bool,
) -> Result<ConnectReport> {
    let ns_path = Path::new("/var/run/netns").join(host_ns);
    connect_in(&ns_path, host_ip, port, attempts, stop_on_success)
}

/// Like [`connect`], from the namespace of a namespace file (`/proc/1/ns/net` for the root
/// namespace: [`crate::topology::HostNs::path`]).
pub fn connect_in(
    ns_path: &Path,
    host_ip: Ipv4Addr,
    port: u16,
    attempts: u32,
    stop_on_success: bool,
) -> Result<ConnectReport> {
    let ns_path = ns_path.to_path_buf();
    let target = SocketAddr::from((host_ip, port));
    // Attempts run on a thread of their own, moved into the orchestrator's namespace.
    let worker = std::thread::spawn(move || -> Result<Vec<Attempt>> {
        enter_netns(&ns_path)?;
        let mut done = Vec::new();
        for i in 0..attempts {
            if i > 0 {
                std::thread::sleep(RETRY_DELAY);
            }
            let a = attempt(target);
            let ok = matches!(a.result, AttemptResult::Ok { .. });
            done.push(a);
            if ok && stop_on_success {
                break;
            }
        }
        Ok(done)
    });
    let attempts = worker.join().map_err(|_| anyhow!("connect thread panicked"))??;
    Ok(ConnectReport {
        target: target.to_string(),
        attempts,
    })
}

/// The orchestrator stand-in over many sandboxes, on a thread: round after round, one attempt
/// per sandbox (50 ms timeout, 5 ms apart), until stopped. A production node's orchestrator
/// does the same across the sandboxes it is starting.
pub struct Loop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Result<u64>>,
}

impl Loop {
    /// From the namespace named `host_ns` (under /var/run/netns).
    pub fn start(host_ns: &str, targets: Vec<Ipv4Addr>, port: u16) -> Self {
        Self::start_in(&Path::new("/var/run/netns").join(host_ns), targets, port)
    }

    /// From the namespace of a namespace file (`/proc/1/ns/net` for the root namespace).
    pub fn start_in(ns_path: &Path, targets: Vec<Ipv4Addr>, port: u16) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns_path = ns_path.to_path_buf();
        let handle = std::thread::spawn(move || -> Result<u64> {
            enter_netns(&ns_path)?;
            let mut rounds = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for ip in &targets {
                    attempt(SocketAddr::from((*ip, port)));
                    std::thread::sleep(RETRY_DELAY);
                }
                rounds += 1;
            }
            Ok(rounds)
        });
        Self { stop, handle }
    }

    /// Stops after the current attempt; returns how many rounds were made.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow!("loop thread panicked"))?
    }
}

fn enter_netns(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: plain syscall; this thread stays in that namespace until it ends.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// One attempt: connect, `POST /init`, read the status line, all within the timeout.
pub fn attempt(target: SocketAddr) -> Attempt {
    let start = Instant::now();
    let mut local_port = 0;
    let result = match TcpStream::connect_timeout(&target, ATTEMPT_TIMEOUT) {
        Err(e) => classify(&e),
        Ok(mut s) => {
            local_port = s.local_addr().map(|a| a.port()).unwrap_or(0);
            match request(&mut s, target, start) {
                Ok(status) => AttemptResult::Ok { status },
                Err(e) => classify(&e),
            }
        }
    };
    Attempt {
        result,
        latency_us: start.elapsed().as_micros() as u64,
        local_port,
    }
}

fn request(s: &mut TcpStream, target: SocketAddr, start: Instant) -> io::Result<u16> {
    let left = ATTEMPT_TIMEOUT
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left))?;
    s.set_write_timeout(Some(left))?;
    let body = "{}";
    write!(
        s,
        "POST /init HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a status line",
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))
}

fn classify(e: &io::Error) -> AttemptResult {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => AttemptResult::Timeout,
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => AttemptResult::Refused,
        _ if matches!(e.raw_os_error(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => {
            AttemptResult::Unreachable { error: e.to_string() }
        }
        _ if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EINVAL | libc::EPERM)) => {
            AttemptResult::Rejected { error: e.to_string() }
        }
        _ => AttemptResult::Error { error: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_like_the_orchestrator_sees_them() {
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::TimedOut)),
            AttemptResult::Timeout
        );
        assert_eq!(
            classify(&io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            AttemptResult::Refused
        );
        assert!(matches!(
            classify(&io::Error::from_raw_os_error(libc::ENETUNREACH)),
            AttemptResult::Unreachable { .. }
        ));
    }

    #[test]
    fn success_needs_a_2xx() {
        let r = ConnectReport {
            target: "x".into(),
            attempts: vec![Attempt {
                result: AttemptResult::Ok { status: 404 },
                latency_us: 1,
                local_port: 1,
            }],
        };
        assert!(!r.succeeded());
    }
}
