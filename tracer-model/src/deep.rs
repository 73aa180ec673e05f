//! Deep mode's per-hop facts: what the kernel told about the skb (length, mark, conntrack
//! reference, the stack at a drop) and what its captured bytes say (L2 addresses, IP and TCP
//! header fields). Pure decoding, tested from bytes.
use serde::{Deserialize, Serialize};

/// Deep facts of one hop, as the kernel reported them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HopDeep {
    /// `skb->len`.
    pub len: u32,
    pub mark: u32,
    pub ct: Option<CtRef>,
    /// The kernel stack at a drop, innermost first, symbolized (`function+0xoff`).
    pub stack: Vec<String>,
    /// The packet's first bytes: from its Ethernet header when `l3_off` is 14, else from its
    /// IP header.
    pub snap: Vec<u8>,
    pub l3_off: u16,
}

/// The skb's conntrack reference (`skb->_nfct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtRef {
    /// `enum ip_conntrack_info`.
    pub info: u32,
    /// `nf_conn.status` bits (`enum ip_conntrack_status`).
    pub status: u32,
    pub zone: Option<u16>,
    pub mark: u32,
}

/// Header fields read from a hop's captured bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// `src → dst` MACs and the ethertype, when the bytes start with an Ethernet header.
    pub l2: Option<L2>,
    pub ttl: u8,
    pub ip_id: u16,
    /// IP total length.
    pub ip_len: u16,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2 {
    pub src: String,
    pub dst: String,
    pub ethertype: String,
}

impl HopDeep {
    /// The Ethernet, IPv4 and TCP header fields of the captured bytes; None when they do not
    /// hold a whole IPv4/TCP header.
    pub fn headers(&self) -> Option<Headers> {
        let b = &self.snap;
        let l3 = self.l3_off as usize;
        let ip = b.get(l3..)?;
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            return None;
        }
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let tcp = ip.get(ihl..ihl + 20)?;
        let l2 = (l3 == 14).then(|| L2 {
            dst: mac(&b[0..6]),
            src: mac(&b[6..12]),
            ethertype: format!("0x{:02x}{:02x}", b[12], b[13]),
        });
        Some(Headers {
            l2,
            ttl: ip[8],
            ip_id: u16::from_be_bytes([ip[4], ip[5]]),
            ip_len: u16::from_be_bytes([ip[2], ip[3]]),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            window: u16::from_be_bytes([tcp[14], tcp[15]]),
        })
    }
}

fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

impl CtRef {
    /// The `ip_conntrack_info` name, as conntrack tools print it.
    pub fn state(&self) -> &'static str {
        match self.info {
            0 => "ESTABLISHED",
            1 => "RELATED",
            2 => "NEW",
            3 => "ESTABLISHED_REPLY",
            4 => "RELATED_REPLY",
            7 => "UNTRACKED",
            _ => "UNKNOWN",
        }
    }

    /// Names of the set `ip_conntrack_status` bits.
    pub fn status_names(&self) -> Vec<&'static str> {
        const NAMES: [&str; 16] = [
            "EXPECTED",
            "SEEN_REPLY",
            "ASSURED",
            "CONFIRMED",
            "SRC_NAT",
            "DST_NAT",
            "SEQ_ADJUST",
            "SRC_NAT_DONE",
            "DST_NAT_DONE",
            "DYING",
            "FIXED_TIMEOUT",
            "TEMPLATE",
            "NAT_CLASH",
            "HELPER",
            "OFFLOAD",
            "HW_OFFLOAD",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.status & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with a SYN to 169.254.0.21:49983, as the lab's tap sees it.
    fn syn_frame() -> Vec<u8> {
        let mut b = vec![
            0x02, 0xfc, 0x00, 0x00, 0x00, 0x05, // dst
            0x0e, 0x11, 0x22, 0x33, 0x44, 0x55, // src
            0x08, 0x00, // IPv4
        ];
        b.extend([
            0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x06, 0, 0, 10, 12, 0, 2, 169, 254, 0, 21,
        ]);
        b.extend([
            0xc3, 0x50, 0xc3, 0x3f, 0, 0, 0, 100, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
        ]);
        b
    }

    #[test]
    fn headers_come_from_the_captured_bytes() {
        let d = HopDeep {
            snap: syn_frame(),
            l3_off: 14,
            ..Default::default()
        };
        let h = d.headers().unwrap();
        let l2 = h.l2.unwrap();
        assert_eq!(l2.src, "0e:11:22:33:44:55");
        assert_eq!(l2.dst, "02:fc:00:00:00:05");
        assert_eq!(l2.ethertype, "0x0800");
        assert_eq!(
            (h.ttl, h.ip_id, h.ip_len, h.seq, h.ack, h.window),
            (63, 0x1234, 60, 100, 0, 64240)
        );
    }

    #[test]
    fn bytes_without_l2_or_cut_short() {
        let frame = syn_frame();
        let d = HopDeep {
            snap: frame[14..].to_vec(),
            ..Default::default()
        };
        assert!(d.headers().unwrap().l2.is_none());
        let short = HopDeep {
            snap: frame[..40].to_vec(),
            l3_off: 14,
            ..Default::default()
        };
        assert_eq!(short.headers(), None);
    }

    #[test]
    fn conntrack_names() {
        let ct = CtRef {
            info: 2,
            status: (1 << 3) | (1 << 5) | (1 << 8),
            zone: Some(0),
            mark: 0,
        };
        assert_eq!(ct.state(), "NEW");
        assert_eq!(ct.status_names(), ["CONFIRMED", "DST_NAT", "DST_NAT_DONE"]);
    }
}
