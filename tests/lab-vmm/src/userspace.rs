//! `--guest userspace`: a smoltcp TCP/IP stack on the tap plays the guest. It answers ARP
//! for the guest address, and serves the envd stand-in from a pool of listening sockets so
//! back-to-back short connections (one every ~5 ms from E2B's orchestrator) never find the
//! port closed.

use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Cidr};

use std::collections::VecDeque;

use crate::arp::OffSubnetArp;
use crate::control::{Command, Control, Respond};
use crate::http::{self, Parse};
use crate::sys::{SignalFd, wait_readable};
use crate::tap::Tap;
use crate::{GuestNet, announce_ready, format_mac};

/// Listening sockets kept on the port: more than the connections E2B has in flight at once.
const POOL: usize = 16;
const SOCKET_BUFFER: usize = 8 * 1024;
/// A connection that makes no progress for this long is dropped, so its slot comes back.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the userspace guest until SIGTERM/SIGINT.
pub fn run(tap: Tap, net: &GuestNet, control: &Control, signals: &SignalFd) -> Result<()> {
    let arp = OffSubnetArp {
        mac: EthernetAddress(net.mac),
        cidr: Ipv4Cidr::new(net.ip, net.prefix),
    };
    let mut dev = TapDevice::new(tap, arp, net.port);
    let mut iface = interface(&mut dev, net)?;
    let mut sockets = SocketSet::new(Vec::new());
    let mut server = Server::new(&mut sockets, net.port);
    eprintln!(
        "lab-vmm: userspace guest {}/{} ({}) on {}, envd port {}",
        net.ip,
        net.prefix,
        format_mac(&net.mac),
        dev.tap.name(),
        net.port
    );
    let mut ready = false;
    loop {
        iface.poll(Instant::now(), &mut dev, &mut sockets);
        if server.service(&mut sockets) {
            // New replies or re-listened sockets: push them out before sleeping.
            continue;
        }
        if !ready {
            announce_ready();
            ready = true;
        }
        let delay = earliest(iface.poll_delay(Instant::now(), &sockets), dev.next_due());
        // poll(2) skips negative fds: a deleted tap would otherwise report POLLERR forever.
        let tap_fd = if dev.gone { -1 } else { dev.tap.as_raw_fd() };
        let fds = [tap_fd, control.wake_fd().as_raw_fd(), signals.as_raw_fd()];
        let events = wait_readable(&fds, delay.map(|d| d.into()))?;
        if events[0].broken {
            dev.mark_gone();
        }
        if events[2].readable
            && let Some(sig) = signals.take()
        {
            eprintln!("lab-vmm: signal {sig}, shutting down");
            return Ok(());
        }
        if events[1].readable {
            for request in control.take() {
                let reply = match request.command {
                    Command::Delay(ms) => dev.set_syn_delay(ms),
                    other => server.apply(other, &mut sockets, dev.gone),
                };
                request.answer(reply);
            }
        }
    }
}

/// The sooner of two optional waits.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn interface(dev: &mut TapDevice, net: &GuestNet) -> Result<Interface> {
    let mut config = Config::new(EthernetAddress(net.mac).into());
    config.random_seed = random_seed();
    let mut iface = Interface::new(config, dev, Instant::now());
    let cidr = IpCidr::new(net.ip.into(), net.prefix);
    let mut pushed = Ok(());
    iface.update_ip_addrs(|addrs| pushed = addrs.push(cidr));
    pushed.map_err(|_| anyhow::anyhow!("cannot add {cidr} to the interface"))?;
    iface
        .routes_mut()
        .add_default_ipv4_route(net.gateway)
        .context("cannot add the default route")?;
    Ok(iface)
}

/// TCP initial sequence numbers must differ between runs, or a restarted guest's SYN-ACKs
/// could be taken for an old connection's.
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: the buffer is valid for 8 bytes; on failure we fall back to the clock.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(seed);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The envd stand-in: a pool of sockets on one port and each one's request so far.
struct Server {
    port: u16,
    listening: bool,
    respond: Respond,
    slots: Vec<Slot>,
}

struct Slot {
    handle: SocketHandle,
    request: Vec<u8>,
    answered: bool,
    /// What is still to be sent after the response head.
    outgoing: Outgoing,
}

/// A response that does not fit the send buffer at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    Nothing,
    /// `/stream`: this many body bytes are still to go.
    Body(u64),
    /// `respond garbage`: bytes without a line end until the peer leaves.
    Garbage,
}

impl Server {
    fn new(sockets: &mut SocketSet<'static>, port: u16) -> Server {
        let slots = (0..POOL)
            .map(|_| {
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
                );
                socket.set_timeout(Some(CONNECTION_TIMEOUT));
                Slot {
                    handle: sockets.add(socket),
                    request: Vec::new(),
                    answered: false,
                    outgoing: Outgoing::Nothing,
                }
            })
            .collect();
        Server {
            port,
            listening: true,
            respond: Respond::Normal,
            slots,
        }
    }

    /// Moves every connection along; true if anything changed that needs another poll.
    fn service(&mut self, sockets: &mut SocketSet) -> bool {
        let mut changed = false;
        for slot in &mut self.slots {
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            changed |= slot.service(socket, self.listening, self.port, self.respond);
        }
        changed
    }

    fn apply(&mut self, command: Command, sockets: &mut SocketSet, tap_gone: bool) -> String {
        match command {
            Command::Listener(on) => {
                self.listening = on;
                if !on {
                    self.stop_listening(sockets);
                }
                // Turning it on: the next service() re-listens every free socket.
                self.service(sockets);
                eprintln!("lab-vmm: listener {}", on_off(on));
                format!("ok listener={}", on_off(on))
            }
            Command::Status => format!(
                "ok listener={} guest=userspace ready=yes tap={}",
                on_off(self.listening),
                if tap_gone { "gone" } else { "attached" }
            ),
            Command::Respond(r) => {
                self.respond = r;
                eprintln!("lab-vmm: respond {r:?}");
                format!("ok respond={r:?}")
            }
            // Handled by the device (it holds the frames).
            Command::Delay(_) => "err delay is applied by the device".into(),
        }
    }

    /// Closes the idle listeners, so SYNs to the port get smoltcp's RST like a guest
    /// whose envd is down. Half-open connections go with them, as Linux drops a listener's
    /// pending requests when it closes; established ones are let finish.
    fn stop_listening(&mut self, sockets: &mut SocketSet) {
        for slot in &self.slots {
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            match socket.state() {
                tcp::State::Listen => socket.close(),
                tcp::State::SynReceived => socket.abort(),
                _ => {}
            }
        }
    }
}

impl Slot {
    fn service(&mut self, socket: &mut tcp::Socket, listening: bool, port: u16, respond: Respond) -> bool {
        match socket.state() {
            // TIME-WAIT is done with as far as we care: the peer has all our data and our
            // FIN, so the socket goes straight back to listening instead of idling 10 s.
            tcp::State::Closed | tcp::State::TimeWait => {
                return self.relisten(socket, listening, port);
            }
            // A half-open connection reset by its peer goes back to LISTEN (RFC 793): with
            // the listener off, that socket must not answer the next SYN.
            tcp::State::Listen if !listening => {
                socket.close();
                return true;
            }
            tcp::State::Listen | tcp::State::SynReceived => return false,
            _ => {}
        }
        if self.answered {
            return self.send_more(socket);
        }
        if socket.can_recv() {
            let request = &mut self.request;
            let _ = socket.recv(|data| {
                request.extend_from_slice(data);
                (data.len(), ())
            });
        }
        if respond == Respond::Garbage && !self.request.is_empty() {
            self.answered = true;
            self.outgoing = Outgoing::Garbage;
            return self.send_more(socket);
        }
        match http::parse(&self.request) {
            Parse::Respond(response) => self.respond(socket, response),
            Parse::Stream(n) => {
                let head = http::stream_head(n);
                if socket.send_slice(&head).is_err() {
                    socket.abort();
                }
                self.answered = true;
                self.outgoing = Outgoing::Body(n);
                self.send_more(socket)
            }
            // The peer closed before sending a whole request: nothing to answer.
            Parse::Incomplete if !socket.may_recv() => {
                socket.close();
                self.answered = true;
                true
            }
            Parse::Incomplete => false,
        }
    }

    fn respond(&mut self, socket: &mut tcp::Socket, response: &[u8]) -> bool {
        // The response always fits: it is tiny and the send buffer is empty.
        if let Err(e) = socket.send_slice(response) {
            eprintln!("lab-vmm: cannot send a response: {e}");
            socket.abort();
        } else {
            socket.close();
        }
        self.answered = true;
        true
    }

    /// Fills the send buffer from what is still to go; closes when a body is complete.
    fn send_more(&mut self, socket: &mut tcp::Socket) -> bool {
        const FILL: [u8; 1024] = [b'x'; 1024];
        if self.outgoing == Outgoing::Nothing || !socket.can_send() {
            return false;
        }
        let mut sent_any = false;
        while socket.can_send() {
            let want = match self.outgoing {
                Outgoing::Body(0) => {
                    socket.close();
                    self.outgoing = Outgoing::Nothing;
                    return true;
                }
                Outgoing::Body(left) => left.min(FILL.len() as u64) as usize,
                Outgoing::Garbage => FILL.len(),
                Outgoing::Nothing => return sent_any,
            };
            match socket.send_slice(&FILL[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent_any = true;
                    if let Outgoing::Body(left) = &mut self.outgoing {
                        *left -= n as u64;
                    }
                }
            }
        }
        sent_any
    }

    fn relisten(&mut self, socket: &mut tcp::Socket, listening: bool, port: u16) -> bool {
        self.request.clear();
        self.answered = false;
        self.outgoing = Outgoing::Nothing;
        if !listening {
            return false;
        }
        match socket.listen(port) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("lab-vmm: cannot listen on port {port}: {e}");
                false
            }
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// smoltcp's view of the tap: frames in and out through reusable buffers.
struct TapDevice {
    tap: Tap,
    arp: OffSubnetArp,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// The tap was deleted under us. Like Firecracker, we keep running (the process is
    /// what sandbox discovery looks for); the guest is just unreachable.
    gone: bool,
    /// The errno of the last failed write, so a down tap logs once, not per retransmit.
    tx_error: Option<i32>,
    /// The envd port, and how long SYNs to it are held back (a slow guest).
    port: u16,
    syn_delay: std::time::Duration,
    /// Held SYN frames and when each is due.
    held: VecDeque<(std::time::Instant, Vec<u8>)>,
}

impl TapDevice {
    fn new(tap: Tap, arp: OffSubnetArp, port: u16) -> TapDevice {
        // IFF_NO_PI without vnet headers: frames are at most MTU + the Ethernet header.
        let frame = tap.mtu() + 14;
        TapDevice {
            tap,
            arp,
            rx: vec![0; frame],
            tx: vec![0; frame],
            gone: false,
            tx_error: None,
            port,
            syn_delay: std::time::Duration::ZERO,
            held: VecDeque::new(),
        }
    }

    fn set_syn_delay(&mut self, ms: u64) -> String {
        self.syn_delay = std::time::Duration::from_millis(ms);
        eprintln!("lab-vmm: SYNs to port {} wait {ms} ms", self.port);
        format!("ok delay={ms}ms")
    }

    /// How long until the next held SYN is due.
    fn next_due(&self) -> Option<Duration> {
        let (due, _) = self.held.front()?;
        let left = due.saturating_duration_since(std::time::Instant::now());
        Some(Duration::from_micros(left.as_micros() as u64))
    }

    /// A TCP SYN (without ACK) to the envd port, in an Ethernet frame.
    fn is_syn_to_port(&self, frame: &[u8]) -> bool {
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
            return false;
        }
        let l4 = 14 + ((frame[14] & 0x0f) as usize) * 4;
        frame.len() >= l4 + 14
            && u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]) == self.port
            && frame[l4 + 13] & 0x12 == 0x02
    }

    /// The next frame for the stack: a held SYN that is due, else one from the tap (holding
    /// SYNs to the port while a delay is set).
    fn next_frame(&mut self) -> Option<usize> {
        if self
            .held
            .front()
            .is_some_and(|(due, _)| *due <= std::time::Instant::now())
        {
            let (_, frame) = self.held.pop_front()?;
            self.rx[..frame.len()].copy_from_slice(&frame);
            return Some(frame.len());
        }
        loop {
            let len = match self.tap.recv(&mut self.rx) {
                Ok(Some(len)) => len,
                Ok(None) => return None,
                Err(e) => {
                    // Reported here only; a vanished tap shows up as POLLERR in the loop.
                    eprintln!("lab-vmm: read from {} failed: {e}", self.tap.name());
                    return None;
                }
            };
            if self.syn_delay.is_zero() || !self.is_syn_to_port(&self.rx[..len]) {
                return Some(len);
            }
            let due = std::time::Instant::now() + self.syn_delay;
            self.held.push_back((due, self.rx[..len].to_vec()));
        }
    }

    fn mark_gone(&mut self) {
        if !self.gone {
            self.gone = true;
            eprintln!(
                "lab-vmm: tap device {} went away; the guest is unreachable until lab-vmm restarts",
                self.tap.name()
            );
        }
    }
}

impl Device for TapDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.gone {
            return None;
        }
        let len = self.next_frame()?;
        let frame = &self.rx[..len];
        if let Some(reply) = self.arp.reply(frame)
            && let Err(e) = self.tap.send(&reply)
        {
            eprintln!("lab-vmm: cannot send an ARP reply: {e}");
        }
        // smoltcp still sees every frame (it ignores the ARP requests answered above).
        let rx = RxToken { frame };
        let tx = TxToken {
            tap: &self.tap,
            buf: &mut self.tx,
            last_error: &mut self.tx_error,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tap: &self.tap,
            buf: &mut self.tx,
            last_error: &mut self.tx_error,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.rx.len();
        caps
    }
}

struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

struct TxToken<'a> {
    tap: &'a Tap,
    buf: &'a mut Vec<u8>,
    last_error: &'a mut Option<i32>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let frame = &mut self.buf[..len];
        let result = f(frame);
        // A down or deleted tap loses the frame, as a real NIC would; TCP retransmits.
        match self.tap.send(frame) {
            Ok(()) => *self.last_error = None,
            Err(e) if *self.last_error != e.raw_os_error() => {
                eprintln!("lab-vmm: write to {} failed: {e}", self.tap.name());
                *self.last_error = e.raw_os_error();
            }
            Err(_) => {}
        }
        result
    }
}
