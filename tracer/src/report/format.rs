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

/// At most `max` characters, a cut shown by `…` (for fixed-width places; the full text is
/// shown elsewhere).
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a unix time in ns (what log pipelines parse).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns % 1_000_000_000) / 1_000_000;
    let (days, day) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-30T17:41:19.129Z
        assert_eq!(rfc3339(1_796_060_479_129_000_000), "2026-11-30T17:41:19.129Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
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
