//! IPv4 address helpers.
use std::net::Ipv4Addr;

/// An address as the kernel programs carry it (network byte order in a u32).
pub fn addr(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

/// True when `ip` is inside `net/prefix` (a prefix over 32 counts as 32).
pub fn prefix_contains(net: Ipv4Addr, prefix: u8, ip: Ipv4Addr) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix.min(32)));
    u32::from(net) & mask == u32::from(ip) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let ip = Ipv4Addr::new(10, 11, 0, 5);
        assert!(prefix_contains(Ipv4Addr::new(10, 0, 0, 0), 8, ip));
        assert!(!prefix_contains(Ipv4Addr::new(10, 12, 0, 0), 16, ip));
        assert!(prefix_contains(ip, 200, ip));
        assert!(prefix_contains(Ipv4Addr::UNSPECIFIED, 0, ip));
        assert_eq!(addr(u32::from_ne_bytes([1, 2, 3, 4])), Ipv4Addr::new(1, 2, 3, 4));
    }
}
