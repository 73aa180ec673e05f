//! Deep mode's capture (`--pcapng FILE`): the bytes of every followed packet at every hop,
//! as the kernel copied them, written as pcapng with one interface per (namespace, device,
//! point) and a comment on each packet naming its hop (and on a journey's last, its verdict).
//! Opened in Wireshark or tshark, a journey reads in order.
use std::{
    borrow::Cow,
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use tracer_common::SNAP_LEN;
use tracer_model::{
    hop::Hop,
    journey::{Journey, Leg},
};

use crate::{
    events::decode::Clock,
    report::{
        format::{Tuple, flags_str},
        hops::{detail, point_name},
    },
};

/// Packet copies kept per journey: a handshake crosses ~20 hops; retransmissions repeat it.
pub const MAX_PER_JOURNEY: usize = 64;

/// Bounds of one capture.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Packet copies in the whole file.
    pub max_packets: usize,
    /// Bytes of packet data in the whole file.
    pub max_bytes: u64,
}

/// How packets are ordered in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// As they happened, every copy at its time.
    Time,
    /// All copies of one packet together (the SYN at every hop, then the next packet).
    Packet,
}

pub struct Capture {
    writer: PcapNgWriter<BufWriter<File>>,
    path: PathBuf,
    interfaces: HashMap<(String, String, String, bool), u32>,
    order: Order,
    caps: Caps,
    clock: Clock,
    packets: usize,
    bytes: u64,
    /// Copies left out by a cap, in all.
    pub capped: usize,
}

/// What went into the file for one journey.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub packets: usize,
    pub capped: usize,
}

impl Capture {
    /// Creates (or truncates) `path`, readable by its owner only: packet bytes are data.
    pub fn create(path: &Path, order: Order, caps: Caps) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("create the capture file {}", path.display()))?;
        let writer = PcapNgWriter::new(BufWriter::new(file)).context("write the pcapng header")?;
        Ok(Self {
            writer,
            path: path.to_path_buf(),
            interfaces: HashMap::new(),
            order,
            caps,
            clock: Clock::new(),
            packets: 0,
            bytes: 0,
            capped: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the packet copies of one judged journey; the last carries `verdict`.
    pub fn write_journey(&mut self, j: &Journey, verdict: &str) -> Result<Written> {
        let copies = ordered(j, self.order);
        let mut w = Written::default();
        let total = copies.len();
        for (n, c) in copies.iter().enumerate() {
            let snap = &c.hop.deep.as_ref().map(|d| d.snap.as_slice()).unwrap_or_default();
            let over = w.packets >= MAX_PER_JOURNEY
                || self.packets >= self.caps.max_packets
                || self.bytes + snap.len() as u64 > self.caps.max_bytes;
            if over {
                w.capped += 1;
                continue;
            }
            let mut comment = c.comment.clone();
            if n + 1 == total {
                comment += &format!(" | verdict: {verdict}");
            }
            self.write_copy(c.hop, c.leg, comment)?;
            w.packets += 1;
        }
        self.capped += w.capped;
        self.writer.get_mut().flush().context("write the capture")?;
        Ok(w)
    }

    fn write_copy(&mut self, hop: &Hop, leg: Leg, comment: String) -> Result<()> {
        let Some(d) = hop.deep.as_deref() else {
            return Ok(());
        };
        let l2 = d.l3_off == 14;
        let point = point_name(hop);
        let key = (
            hop.ns_label(),
            hop.device.clone().unwrap_or_else(|| "-".into()),
            point,
            l2,
        );
        let id = match self.interfaces.get(&key) {
            Some(id) => *id,
            None => self.add_interface(key)?,
        };
        let ip_len = d.headers().map_or(0, |h| h.ip_len as usize);
        let original_len = (ip_len + d.l3_off as usize).max(d.snap.len());
        let mut options = vec![EnhancedPacketOption::Comment(Cow::Owned(comment))];
        // Direction flag (bits 0-1: 01 inbound, 10 outbound): requests go in, replies out.
        options.push(EnhancedPacketOption::Flags(if leg == Leg::Reply { 2 } else { 1 }));
        self.writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: id,
                timestamp: Duration::from_nanos(self.clock.unix_ns(hop.ts_ns)),
                original_len: original_len as u32,
                data: Cow::Borrowed(&d.snap),
                options,
            })
            .context("write a packet to the capture")?;
        self.packets += 1;
        self.bytes += d.snap.len() as u64;
        Ok(())
    }

    fn add_interface(&mut self, key: (String, String, String, bool)) -> Result<u32> {
        let (ns, dev, point, l2) = &key;
        let id = self.interfaces.len() as u32;
        self.writer
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: if *l2 { DataLink::ETHERNET } else { DataLink::RAW },
                snaplen: SNAP_LEN as u32,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(format!("{ns}/{dev}/{point}"))),
                    InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                        "namespace {ns}, device {dev}, at {point}"
                    ))),
                    // Nanosecond timestamps.
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })
            .context("write an interface to the capture")?;
        self.interfaces.insert(key, id);
        Ok(id)
    }
}

/// One packet copy to write, with its comment.
struct Copy<'a> {
    hop: &'a Hop,
    leg: Leg,
    comment: String,
}

/// The journey's packet copies that carry bytes, in the file's order, each with a comment
/// naming the hop and which packet it is a copy of.
fn ordered(j: &Journey, order: Order) -> Vec<Copy<'_>> {
    // One packet is the same (leg, sequence, flags, IP id) at every hop: NAT changes
    // addresses and ports, never these.
    let mut packets: Vec<(Leg, u32, u8, u16)> = Vec::new();
    let mut copies: Vec<(usize, Copy<'_>)> = Vec::new();
    let with_bytes = j
        .hops
        .iter()
        .filter(|(_, h)| h.is_packet() && h.deep.as_ref().is_some_and(|d| !d.snap.is_empty()));
    for (leg, h) in with_bytes {
        let key = (*leg, h.pkt.seq, h.pkt.flags, h.pkt.ip_id);
        let n = packets.iter().position(|k| *k == key).unwrap_or_else(|| {
            packets.push(key);
            packets.len() - 1
        });
        let same = copies.iter().filter(|(p, _)| *p == n).count() + 1;
        let comment = format!(
            "{} #{} copy {same}: {} {} {} {} [{}]{}",
            match leg {
                Leg::Reply => "reply",
                _ => "request",
            },
            n + 1,
            h.ns_label(),
            h.device.as_deref().unwrap_or("-"),
            point_name(h),
            Tuple(&h.pkt),
            flags_str(h.pkt.flags),
            detail(h).map(|d| format!(" {d}")).unwrap_or_default()
        );
        copies.push((
            n,
            Copy {
                hop: h,
                leg: *leg,
                comment,
            },
        ));
    }
    if order == Order::Packet {
        // Stable: the copies of each packet stay in time order.
        copies.sort_by_key(|(n, _)| *n);
    }
    copies.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use pcap_file::pcapng::{Block, PcapNgReader};
    use tracer_model::{
        deep::HopDeep,
        fixtures::{hop, pkt},
        hop::HopKind,
        journey::{Correlator, Journey, Timing},
    };

    use super::*;

    fn with_bytes(mut h: Hop, l2: bool) -> Hop {
        let mut snap = if l2 { vec![0x02; 14] } else { Vec::new() };
        snap.extend([
            0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0, 10, 12, 0, 2, 10, 11, 0, 1,
        ]);
        snap.extend([
            0xc3,
            0x50,
            0xc3,
            0x3f,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0x50,
            h.pkt.flags,
            0xfa,
            0xf0,
            0,
            0,
            0,
            0,
        ]);
        h.deep = Some(Box::new(HopDeep {
            len: snap.len() as u32,
            snap,
            l3_off: if l2 { 14 } else { 0 },
            ..Default::default()
        }));
        h
    }

    fn journey() -> Journey {
        let syn = pkt("10.12.0.2", 50000, "10.11.0.1", 49983, 2, 1, 0);
        let ack = pkt("169.254.0.21", 49983, "10.12.0.2", 50000, 0x12, 9, 2);
        let mut c = Correlator::new(&[49983], Timing::default());
        for h in [
            with_bytes(
                hop(10, "e2b-host", "veth-1", HopKind::Tcx { ingress: false }, syn),
                true,
            ),
            with_bytes(hop(20, "ns-1", "tap0", HopKind::Tcx { ingress: true }, ack), true),
            with_bytes(hop(30, "ns-1", "eth0", HopKind::Xmit, syn), false),
            // A hop without bytes (a socket event, or none copied) is not written.
            hop(40, "ns-1", "tap0", HopKind::Consumed, syn),
        ] {
            c.push(h);
        }
        let mut all = c.take_all();
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    fn read(path: &Path) -> (Vec<String>, Vec<(u32, String)>) {
        let mut r = PcapNgReader::new(File::open(path).unwrap()).unwrap();
        let (mut ifaces, mut packets) = (Vec::new(), Vec::new());
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => ifaces.push(format!("{:?}", i.options[0])),
                Block::EnhancedPacket(p) => packets.push((p.interface_id, format!("{:?}", p.options[0]))),
                _ => {}
            }
        }
        (ifaces, packets)
    }

    #[test]
    fn journeys_are_written_with_interfaces_comments_and_caps() {
        let dir = std::env::temp_dir().join(format!("tracer-pcapng-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcapng");
        let caps = Caps {
            max_packets: 100,
            max_bytes: 1 << 20,
        };
        let mut c = Capture::create(&path, Order::Time, caps).unwrap();
        let w = c.write_journey(&journey(), "DROPPED somewhere").unwrap();
        assert_eq!((w.packets, w.capped), (3, 0));
        drop(c);
        let (ifaces, packets) = read(&path);
        assert_eq!(ifaces.len(), 3, "{ifaces:?}");
        assert!(ifaces[0].contains("e2b-host/veth-1/tcx/egress"), "{ifaces:?}");
        assert!(
            packets[0]
                .1
                .contains("request #1 copy 1: e2b-host veth-1 tcx/egress"),
            "{packets:?}"
        );
        assert!(packets[1].1.contains("reply #2 copy 1"), "{packets:?}");
        assert!(packets[2].1.contains("request #1 copy 2") && packets[2].1.contains("verdict: DROPPED"));

        // Grouped by packet: both copies of the SYN first.
        let mut c = Capture::create(&path, Order::Packet, caps).unwrap();
        c.write_journey(&journey(), "x").unwrap();
        drop(c);
        let (_, packets) = read(&path);
        assert!(packets[1].1.contains("request #1 copy 2") && packets[2].1.contains("reply #2"));

        // A cap on the whole file leaves copies out and counts them.
        let small = Caps {
            max_packets: 2,
            max_bytes: 1 << 20,
        };
        let mut c = Capture::create(&path, Order::Time, small).unwrap();
        let w = c.write_journey(&journey(), "x").unwrap();
        assert_eq!((w.packets, w.capped, c.capped), (2, 1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
