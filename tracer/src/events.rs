//! Decoding kernel events and naming what they refer to.
use std::{
    collections::HashMap,
    fmt,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracer_common::{Event, Packet, tcp_flag};

use crate::{btf::ReasonNames, kallsyms::Kallsyms, netns};

/// Decodes one ring buffer record. None when the size is wrong (a bug, never silent: the caller
/// counts it).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain-old-data of exactly this size; unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// The device name carried in an event.
pub fn ifname(ev: &Event) -> String {
    let end = ev.ifname.iter().position(|&b| b == 0).unwrap_or(ev.ifname.len());
    String::from_utf8_lossy(&ev.ifname[..end]).into_owned()
}

pub fn addr(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

/// `S`, `SA`, `R`, `RA`, `F`, `P`, `.` (ACK only), as tcpdump writes them.
pub fn flags_str(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (tcp_flag::SYN, 'S'),
        (tcp_flag::FIN, 'F'),
        (tcp_flag::RST, 'R'),
        (tcp_flag::PSH, 'P'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & tcp_flag::ACK != 0 {
        s.push(if s.is_empty() { '.' } else { 'A' });
    }
    s
}

/// `saddr:sport → daddr:dport`.
pub struct Tuple<'a>(pub &'a Packet);

impl fmt::Display for Tuple<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        write!(f, "{}:{} → {}:{}", addr(p.saddr), p.sport, addr(p.daddr), p.dport)
    }
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    /// Wall clock minus monotonic clock, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Self {
            offset_ns: wall - mono,
        }
    }

    /// Monotonic ns now (same clock as bpf_ktime_get_ns).
    pub fn now_mono_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u64;
        UNIX_EPOCH + Duration::from_nanos(ns)
    }

    /// Unix time in ns.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// `HH:MM:SS.micros` (UTC) of a unix time in ns.
pub fn hms(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// Everything needed to put names on events: drop reasons, kernel symbols, namespace names.
pub struct Names {
    pub reasons: ReasonNames,
    pub kallsyms: Kallsyms,
    netns: HashMap<u32, String>,
    /// When /var/run/netns was last read: an unnamed namespace (production's root one) must
    /// not cost a directory scan per event.
    netns_read: std::time::Instant,
}

/// How often an unknown namespace inode may trigger a re-read of /var/run/netns.
const NETNS_REREAD: Duration = Duration::from_secs(1);

impl Names {
    pub fn new(reasons: ReasonNames, kallsyms: Kallsyms) -> Self {
        Self {
            reasons,
            kallsyms,
            netns: netns::names(),
            netns_read: std::time::Instant::now(),
        }
    }

    /// Name of a namespace inode (re-reading /var/run/netns, at most once a second, for
    /// ones created since).
    pub fn netns(&mut self, inode: u32) -> Option<String> {
        if inode == 0 {
            return None;
        }
        if !self.netns.contains_key(&inode) && self.netns_read.elapsed() >= NETNS_REREAD {
            self.netns = netns::names();
            self.netns_read = std::time::Instant::now();
        }
        self.netns.get(&inode).cloned()
    }
}

/// The event ring buffer as something tokio can wait on.
pub fn ring_fd(
    events: aya::maps::RingBuf<aya::maps::MapData>,
) -> anyhow::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    unsafe { tokio::io::unix::AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("poll ring buffer: {e}"))
}

/// Resolves at the first SIGINT or SIGTERM: both end a trace cleanly (links detach when
/// the probes drop). The handlers are installed by this call, before anything is awaited, so
/// a signal right after "attached" is never lost to the default action.
pub fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::point;

    use super::*;

    #[test]
    fn decode_checks_the_size() {
        assert!(decode(&[0u8; 10]).is_none());
        let ev = Event {
            point: point::DROP,
            reason: 12,
            ..Default::default()
        };
        // SAFETY: viewing a POD struct as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), size_of::<Event>()) };
        let back = decode(bytes).unwrap();
        assert_eq!((back.point, back.reason), (point::DROP, 12));
    }

    #[test]
    fn flags_like_tcpdump() {
        assert_eq!(flags_str(tcp_flag::SYN), "S");
        assert_eq!(flags_str(tcp_flag::SYN | tcp_flag::ACK), "SA");
        assert_eq!(flags_str(tcp_flag::RST | tcp_flag::ACK), "RA");
        assert_eq!(flags_str(tcp_flag::ACK), ".");
    }

    #[test]
    fn tuple_and_time_format() {
        let p = Packet {
            saddr: u32::from_ne_bytes([10, 12, 0, 2]),
            daddr: u32::from_ne_bytes([10, 11, 0, 1]),
            sport: 40000,
            dport: 49983,
            ..Default::default()
        };
        assert_eq!(Tuple(&p).to_string(), "10.12.0.2:40000 → 10.11.0.1:49983");
        assert_eq!(hms(3_723_000_456_000), "01:02:03.000456");
    }
}
