//! Connection attempts made like the orchestrator's (a new connection each, `GET /health`,
//! 50 ms timeout, 5 ms apart), from the host side of the path: `trace --probe`, the doctor
//! and `--nft-trace` make them. Each attempt binds its port first, so the journey of a failed
//! attempt is known by its client port.
use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::mpsc::Sender,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::netns::Netns;

pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(50);
pub const RETRY_DELAY: Duration = Duration::from_millis(5);
/// The most of an answer that is read (its status line is all that matters).
pub const MAX_RESPONSE: usize = 4096;

/// How one attempt ended, as the prober saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Status(u16),
    Timeout,
    Refused,
    /// connect() failed at once with this errno: no packet was sent (a prohibit or
    /// blackhole route or rule, no route, a local firewall).
    NotSent(i32),
    Error(String),
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub local_port: u16,
    pub result: AttemptResult,
    pub latency: Duration,
    /// How long it would wait.
    pub timeout: Duration,
}

/// What the prober tells the trace.
#[derive(Debug, Clone)]
pub enum AttemptEvent {
    /// An attempt is about to connect from this local port (sent first, so its journey is
    /// known as ours however fast it ends).
    Bound(u16),
    Done(Attempt),
}

/// Starts `attempts` attempts on a thread inside `ns` (None: this namespace). Stops early when
/// `stop` is set.
pub fn spawn(
    ns: Option<Netns>,
    target: SocketAddrV4,
    attempts: u32,
    timeout: Duration,
    tx: Sender<AttemptEvent>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        // The thread ends in that namespace; nothing else runs on it.
        let _inside = ns.as_ref().map(Netns::enter).transpose()?;
        for i in 0..attempts {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if i > 0 {
                std::thread::sleep(RETRY_DELAY);
            }
            let report = |port| tx.send(AttemptEvent::Bound(port)).is_ok();
            if tx
                .send(AttemptEvent::Done(attempt_reporting(target, timeout, report)))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    })
}

/// One attempt: bind, connect (50 ms), GET /health, read the status line.
pub fn attempt(target: SocketAddrV4) -> Attempt {
    attempt_reporting(target, ATTEMPT_TIMEOUT, |_| true)
}

/// Like [`attempt`], waiting up to `timeout`.
pub fn attempt_waiting(target: SocketAddrV4, timeout: Duration) -> Attempt {
    attempt_reporting(target, timeout, |_| true)
}

/// Like [`attempt`], telling `bound` the local port before connecting.
fn attempt_reporting(target: SocketAddrV4, timeout: Duration, bound: impl FnOnce(u16) -> bool) -> Attempt {
    let mut start = Instant::now();
    let (local_port, result) = match Conn::bind(timeout) {
        Err(e) => (0, AttemptResult::Error(e.to_string())),
        Ok(c) => {
            let port = c.port;
            bound(port);
            // The timeout counts from the connect, as a dialer's does.
            start = Instant::now();
            (port, c.run(target, start))
        }
    };
    Attempt {
        local_port,
        result,
        latency: start.elapsed(),
        timeout,
    }
}

struct Conn {
    fd: OwnedFd,
    port: u16,
    timeout: Duration,
}

impl Conn {
    fn bind(timeout: Duration) -> io::Result<Self> {
        // SAFETY: plain socket calls on an fd we own.
        unsafe {
            let raw = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let any = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            if libc::bind(
                raw,
                (&any as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_in>() as u32;
            libc::getsockname(raw, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len);
            Ok(Self {
                fd,
                port: u16::from_be(sa.sin_port),
                timeout,
            })
        }
    }

    fn run(self, target: SocketAddrV4, start: Instant) -> AttemptResult {
        if let Err(errno) = self.start_connect(target) {
            return AttemptResult::NotSent(errno);
        }
        match self
            .finish_connect(start)
            .and_then(|()| self.request(target, start))
        {
            Ok(status) => AttemptResult::Status(status),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => AttemptResult::Timeout,
            Err(e)
                if e.raw_os_error() == Some(libc::ECONNREFUSED)
                    || e.kind() == io::ErrorKind::ConnectionReset =>
            {
                AttemptResult::Refused
            }
            Err(e) => AttemptResult::Error(e.to_string()),
        }
    }

    /// Starts the non-blocking connect; the errno when it fails at once (nothing was sent).
    fn start_connect(&self, target: SocketAddrV4) -> Result<(), i32> {
        let sa = sockaddr(target);
        // SAFETY: valid fd and sockaddr.
        let r = unsafe {
            libc::connect(
                self.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
            if e != libc::EINPROGRESS {
                return Err(e);
            }
        }
        Ok(())
    }

    fn finish_connect(&self, start: Instant) -> io::Result<()> {
        self.wait(libc::POLLOUT, start)?;
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as u32;
        // SAFETY: valid out pointers.
        unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut i32).cast(),
                &mut len,
            )
        };
        if err != 0 {
            Err(io::Error::from_raw_os_error(err))
        } else {
            Ok(())
        }
    }

    fn request(&self, target: SocketAddrV4, start: Instant) -> io::Result<u16> {
        let req = format!("GET /health HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        // SAFETY: valid fd and buffer.
        if unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                libc::MSG_NOSIGNAL,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // Only the status line matters. A guest may send anything, endlessly: the read is
        // capped and ends at the deadline whatever arrives.
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(2).any(|w| w == b"\r\n") {
            if got.len() >= MAX_RESPONSE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no status line in the first {MAX_RESPONSE} bytes"),
                ));
            }
            self.wait(libc::POLLIN, start)?;
            let room = buf.len().min(MAX_RESPONSE - got.len());
            // SAFETY: valid fd and buffer of at least `room` bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), room, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got.extend_from_slice(&buf[..n as usize]);
        }
        String::from_utf8_lossy(&got)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))
    }

    /// Waits for `events` until the attempt's deadline.
    fn wait(&self, events: i16, start: Instant) -> io::Result<()> {
        let left = self.timeout.saturating_sub(start.elapsed());
        // Past the deadline nothing is waited for, even if data is ready.
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        // Rounded up: poll must not give up before the deadline.
        let ms = left.as_micros().div_ceil(1000).clamp(1, i32::MAX as u128) as i32;
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            0 => Err(io::ErrorKind::TimedOut.into()),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}
