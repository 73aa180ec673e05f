//! The one ARP case smoltcp declines but a Linux guest handles: a request for the guest's
//! address whose *sender* address is outside the guest's subnet.
//!
//! Linux on the host side picks the ARP sender address from the packet being resolved
//! (arp_announce=0): a connection to the guest from an address that is local to the
//! sandbox namespace but off the tap subnet (say 10.12.0.1 on its eth0) sends
//! "who-has 169.254.0.21 tell 10.12.0.1". smoltcp ignores that; a Linux guest (and so a
//! Firecracker guest) answers it. Without this the userspace guest would look unreachable
//! (NEIGH_FAILED) in exactly the probes the tracer makes from inside the namespace.

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    Ipv4Cidr,
};

/// Answers ARP requests that smoltcp leaves unanswered.
pub struct OffSubnetArp {
    pub mac: EthernetAddress,
    pub cidr: Ipv4Cidr,
}

impl OffSubnetArp {
    /// The reply frame for `frame`, if it is a request this responder should answer.
    pub fn reply(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Arp {
            return None;
        }
        let request = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
        let ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = request
        else {
            return None;
        };
        let ours = target_protocol_addr == self.cidr.address();
        // In-subnet senders are smoltcp's job: answering them too would send two replies.
        let off_subnet = !self.cidr.contains_addr(&source_protocol_addr);
        let sane = source_hardware_addr.is_unicast() && !source_protocol_addr.is_unspecified();
        (ours && off_subnet && sane).then(|| self.emit(source_hardware_addr, source_protocol_addr))
    }

    fn emit(&self, to_mac: EthernetAddress, to_ip: smoltcp::wire::Ipv4Address) -> Vec<u8> {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.cidr.address(),
            target_hardware_addr: to_mac,
            target_protocol_addr: to_ip,
        };
        let eth = EthernetRepr {
            src_addr: self.mac,
            dst_addr: to_mac,
            ethertype: EthernetProtocol::Arp,
        };
        let mut buf = vec![0; eth.buffer_len() + arp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        buf
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const GUEST_MAC: EthernetAddress = EthernetAddress([2, 0xfc, 0, 0, 0, 5]);
    const TAP_MAC: EthernetAddress = EthernetAddress([2, 0xfc, 0, 0, 0, 6]);

    fn responder() -> OffSubnetArp {
        OffSubnetArp {
            mac: GUEST_MAC,
            cidr: Ipv4Cidr::new(Ipv4Addr::new(169, 254, 0, 21), 30),
        }
    }

    fn request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: TAP_MAC,
            source_protocol_addr: sender,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let eth = EthernetRepr {
            src_addr: TAP_MAC,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut buf = vec![0; eth.buffer_len() + arp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        buf
    }

    #[test]
    fn answers_off_subnet_senders_only() {
        let guest = Ipv4Addr::new(169, 254, 0, 21);
        let off = request(Ipv4Addr::new(10, 12, 0, 1), guest);
        let reply = responder().reply(&off).expect("a reply");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr(), TAP_MAC);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert!(matches!(
            arp,
            ArpRepr::EthernetIpv4 { operation: ArpOperation::Reply, source_hardware_addr, .. }
                if source_hardware_addr == GUEST_MAC
        ));
        let on = request(Ipv4Addr::new(169, 254, 0, 22), guest);
        assert!(responder().reply(&on).is_none());
        let other = request(Ipv4Addr::new(10, 12, 0, 1), Ipv4Addr::new(169, 254, 0, 20));
        assert!(responder().reply(&other).is_none());
    }
}
