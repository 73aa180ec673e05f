//! Connection attempts made like the orchestrator's (a new connection each, `GET /health`,
//! 50 ms timeout, 5 ms apart), from the host side of the path: `trace --probe`, the doctor
//! and `--nft-trace` make them. Each attempt binds its port first, so the journey of a failed
//! attempt is known by its client port.
//!
//! This is the one place the tracer opens sockets toward a sandbox (a test holds it), and a
//! probe is a packet on a production network: before every connect, [`ProbeSite`] checks in
//! the very thread and namespace that will connect that the sandbox's veth pair is still what
//! discovery found, and asks the kernel where this connection would go (a route get with the
//! socket's uid, mark and ports). Only a route out of the sandbox's own host-side veth (or
//! the bridge that holds it) is taken, and the socket is then bound to that device, so nothing
//! it sends can leave by another one. Anything else is [`Withheld`], with what was read.
//!
//! The one other connection, [`connect_log_sink`], is not a probe: `watch --log-http` posting
//! the tracer's records to the operator's own log collector.
use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, TcpStream, ToSocketAddrs as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
    sync::mpsc::Sender,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    system::netns::Netns,
    system::netstate::{Link, RouteGot, RouteQuery, Rtnl},
};

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
    /// The next attempt was not made, and none after it: what the check read.
    Withheld(Withheld),
}

/// The verified host side of a sandbox: the namespace probes are sent from, and the one
/// device they may leave by (the peer of the sandbox namespace's veth, found by its link
/// namespace and peer index, never by name).
#[derive(Debug, Clone)]
pub struct ProbeSite {
    pub host_ns: Netns,
    pub sandbox_ns: Netns,
    pub host_veth: String,
    pub host_veth_ifindex: u32,
    pub ns_veth: String,
    pub ns_veth_ifindex: u32,
    pub target: SocketAddrV4,
}

/// Why a probe was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withheld {
    /// The veth pair is not what discovery found any more (plain words).
    HostSide(String),
    /// The kernel's route lookup failed with this errno: nothing could be sent.
    NoRoute { netns: String, errno: i32 },
    /// The route leads elsewhere than the sandbox's veth.
    Elsewhere(Box<Elsewhere>),
}

/// A route off the sandbox's veth, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    pub netns: String,
    pub route: RouteGot,
    /// The route's device, by name.
    pub device: Option<String>,
    /// Where that device leads when it is a veth into another namespace: (its namespace, the
    /// peer's name there).
    pub leads_to: Option<(Netns, Option<String>)>,
}

impl std::fmt::Display for Withheld {
    /// One plain sentence: what was read, and that nothing was sent.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HostSide(why) => write!(f, "{why}; nothing was sent"),
            Self::NoRoute { netns, errno } => write!(
                f,
                "in {netns} the kernel has no usable route ({}); nothing was sent",
                io::Error::from_raw_os_error(*errno)
            ),
            Self::Elsewhere(e) => {
                let Elsewhere {
                    netns,
                    route,
                    device,
                    leads_to,
                } = e.as_ref();
                write!(f, "in {netns} the route is {}", route.kind)?;
                if let Some(via) = route.gateway {
                    write!(f, " via {via}")?;
                }
                if let Some(d) = device {
                    write!(f, " dev {d}")?;
                }
                if let Some((ns, peer)) = leads_to {
                    write!(f, ", which leads into {}", ns.label())?;
                    if let Some(p) = peer {
                        write!(f, " ({p})")?;
                    }
                }
                write!(f, ", not the sandbox's veth; nothing was sent")
            }
        }
    }
}

/// Probes withheld by this process, by why (`host_side`, `no_route`, `elsewhere`): the
/// watcher's metrics show them.
pub static WITHHELD_HOST_SIDE: AtomicU64 = AtomicU64::new(0);
pub static WITHHELD_NO_ROUTE: AtomicU64 = AtomicU64::new(0);
pub static WITHHELD_ELSEWHERE: AtomicU64 = AtomicU64::new(0);

impl Withheld {
    fn count(&self) {
        let counter = match self {
            Self::HostSide(_) => &WITHHELD_HOST_SIDE,
            Self::NoRoute { .. } => &WITHHELD_NO_ROUTE,
            Self::Elsewhere(_) => &WITHHELD_ELSEWHERE,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A route's device checked against the probe site: the host veth, or the bridge it is a
/// port of.
fn allowed_device(site: &ProbeSite, host_veth: &Link, oif: u32) -> bool {
    oif == site.host_veth_ifindex || host_veth.master == Some(oif)
}

impl ProbeSite {
    /// Checks, in this thread's namespace (which must be `host_ns`), that a connection from
    /// local port `sport` may be made: the veth pair is intact and the kernel routes the
    /// target out of it. Returns the device to bind the socket to.
    fn clear(&self, rtnl: &mut Rtnl, sport: u16) -> Result<u32, Withheld> {
        let veth = self.verify_pair(rtnl)?;
        let query = RouteQuery {
            dst: *self.target.ip(),
            sport,
            dport: self.target.port(),
            // SAFETY: trivial syscall.
            uid: unsafe { libc::geteuid() },
            mark: 0,
        };
        let host = self.host_ns.label();
        let got = match rtnl.route_get(&query) {
            Ok(Ok(got)) => got,
            Ok(Err(errno)) => return Err(Withheld::NoRoute { netns: host, errno }),
            Err(e) => {
                return Err(Withheld::HostSide(format!(
                    "cannot ask {host} for its route: {e:#}"
                )));
            }
        };
        match got.oif {
            Some(oif) if got.kind == "unicast" && allowed_device(self, &veth, oif) => Ok(oif),
            oif => Err(self.elsewhere(rtnl, got, oif)),
        }
    }

    /// The host veth as it is now, if it is still the peer of the sandbox's veth.
    fn verify_pair(&self, rtnl: &mut Rtnl) -> Result<Link, Withheld> {
        let host = self.host_ns.label();
        let gone = |what: String| Withheld::HostSide(what);
        let link = rtnl
            .link(self.host_veth_ifindex)
            .map_err(|e| gone(format!("cannot read {} in {host}: {e:#}", self.host_veth)))?
            .ok_or_else(|| {
                gone(format!(
                    "{} (ifindex {}) is gone from {host}",
                    self.host_veth, self.host_veth_ifindex
                ))
            })?;
        let nsid = rtnl.nsid_of(&self.sandbox_ns).ok().flatten();
        let paired = link.kind.as_deref() == Some("veth")
            && link.peer_ifindex == Some(self.ns_veth_ifindex)
            && nsid.is_some()
            && link.link_netnsid == nsid;
        if !paired {
            return Err(gone(format!(
                "{} (ifindex {}) in {host} is no longer the peer of {} in {}",
                link.name,
                link.ifindex,
                self.ns_veth,
                self.sandbox_ns.label()
            )));
        }
        Ok(link)
    }

    /// What a route off the host veth leads to: its device, and where that device's peer is.
    fn elsewhere(&self, rtnl: &mut Rtnl, route: RouteGot, oif: Option<u32>) -> Withheld {
        let link = oif.and_then(|i| rtnl.link(i).ok().flatten());
        let leads_to = link.as_ref().and_then(|l| peer_of(rtnl, l));
        Withheld::Elsewhere(Box::new(Elsewhere {
            netns: self.host_ns.label(),
            device: link.map(|l| l.name),
            route,
            leads_to,
        }))
    }

    /// Makes `attempts` attempts on a thread inside the host side, each cleared first; the
    /// first that is withheld ends them. Stops early when `stop` is set.
    pub fn spawn(
        self,
        attempts: u32,
        timeout: Duration,
        tx: Sender<AttemptEvent>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> JoinHandle<Result<()>> {
        std::thread::spawn(move || {
            // The thread ends in that namespace; nothing else runs on it.
            let _inside = self.host_ns.enter()?;
            let mut rtnl = Rtnl::open(&self.host_ns)?;
            for i in 0..attempts {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if i > 0 {
                    std::thread::sleep(RETRY_DELAY);
                }
                let report = |port| tx.send(AttemptEvent::Bound(port)).is_ok();
                let event = match self.attempt_in(&mut rtnl, timeout, report) {
                    Ok(a) => AttemptEvent::Done(a),
                    Err(w) => AttemptEvent::Withheld(w),
                };
                let last = matches!(event, AttemptEvent::Withheld(_));
                if tx.send(event).is_err() || last {
                    break;
                }
            }
            Ok(())
        })
    }

    /// One attempt from the host side (this thread is moved there for it and back).
    pub fn attempt(&self, timeout: Duration) -> Result<Attempt, Withheld> {
        let _inside = self
            .host_ns
            .enter()
            .map_err(|e| Withheld::HostSide(format!("cannot enter {}: {e:#}", self.host_ns.label())))?;
        let mut rtnl = Rtnl::open(&self.host_ns)
            .map_err(|e| Withheld::HostSide(format!("cannot ask {}: {e:#}", self.host_ns.label())))?;
        self.attempt_in(&mut rtnl, timeout, |_| true)
    }

    /// An attempt from this thread (inside the host side): bind, clear, bind to the cleared
    /// device, connect.
    fn attempt_in(
        &self,
        rtnl: &mut Rtnl,
        timeout: Duration,
        bound: impl FnOnce(u16) -> bool,
    ) -> Result<Attempt, Withheld> {
        let conn = match Conn::bind(timeout) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Attempt {
                    local_port: 0,
                    result: AttemptResult::Error(e.to_string()),
                    latency: Duration::ZERO,
                    timeout,
                });
            }
        };
        let dev = self.clear(rtnl, conn.port).inspect_err(Withheld::count)?;
        let port = conn.port;
        let result = match conn.bind_device(dev) {
            Ok(()) => {
                bound(port);
                // The timeout counts from the connect, as a dialer's does.
                let start = Instant::now();
                let result = conn.run(self.target, start);
                return Ok(Attempt {
                    local_port: port,
                    result,
                    latency: start.elapsed(),
                    timeout,
                });
            }
            Err(e) => AttemptResult::Error(format!("bind to the cleared device: {e}")),
        };
        Ok(Attempt {
            local_port: port,
            result,
            latency: Duration::ZERO,
            timeout,
        })
    }
}

/// The namespace a veth's peer is in (one named under /var/run/netns, or the root one), and
/// the peer's name there.
fn peer_of(rtnl: &mut Rtnl, link: &Link) -> Option<(Netns, Option<String>)> {
    let nsid = link.link_netnsid?;
    let candidates = crate::system::netns::all_named()
        .into_iter()
        .chain(crate::system::netns::root());
    for ns in candidates {
        if rtnl.nsid_of(&ns).ok().flatten() == Some(nsid) {
            let name = link
                .peer_ifindex
                .and_then(|i| Rtnl::open(&ns).ok()?.link(i).ok().flatten())
                .map(|l| l.name);
            return Some((ns, name));
        }
    }
    None
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

    /// Binds the socket to one device (SO_BINDTOIFINDEX): whatever the routes do after the
    /// check, nothing this socket sends leaves by another device.
    fn bind_device(&self, ifindex: u32) -> io::Result<()> {
        let index = ifindex as libc::c_int;
        // SAFETY: setsockopt on a valid fd with a pointer to a live int of the right size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTOIFINDEX,
                (&index as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
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

/// The one connection the tracer makes that is not a probe: `tracer watch --log-http` posting
/// its records to the log collector the operator named (E2B: the node's Vector on 127.0.0.1).
/// It needs no probe guard: it goes where the operator pointed it, to a collector of theirs,
/// never toward a sandbox (no sandbox address or port comes into it), and carries only the
/// tracer's own records. `host` is resolved here (a name or an address); each address is
/// tried with `timeout`.
pub fn connect_log_sink(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}
