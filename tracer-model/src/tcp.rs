//! TCP socket states and neighbour (NUD) states, as the kernel numbers them.

/// TCP socket states (`include/net/tcp_states.h`).
pub fn tcp_state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "?",
    }
}
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_CLOSE: u32 = 7;

/// Neighbour (NUD) states, as `ip neigh` prints them.
pub fn nud_name(s: u32) -> &'static str {
    match s {
        0x01 => "INCOMPLETE",
        0x02 => "REACHABLE",
        0x04 => "STALE",
        0x08 => "DELAY",
        0x10 => "PROBE",
        0x20 => "FAILED",
        0x40 => "NOARP",
        0x80 => "PERMANENT",
        0 => "NONE",
        _ => "?",
    }
}

/// `ip neigh` state names back to NUD bits (0 when unknown).
pub fn nud_bits(state: &str) -> u32 {
    (0..8)
        .map(|b| 1u32 << b)
        .find(|bits| nud_name(*bits) == state)
        .unwrap_or(0)
}

pub const NUD_INCOMPLETE: u32 = 0x01;
pub const NUD_FAILED: u32 = 0x20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nud_names_round_trip() {
        for bits in [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
            assert_eq!(nud_bits(nud_name(bits)), bits);
        }
        assert_eq!(nud_bits("bogus"), 0);
    }
}
