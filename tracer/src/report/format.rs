//! Small text formats shared by every report: tuples, TCP flags, times of day.
use std::fmt;

use tracer_common::{Packet, tcp_flag};
use tracer_model::net::addr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
