//! The expected path as data: for a hop of a followed packet, what it should look like there
//! (namespace and device, point, tuple, conntrack, mark, TTL, L2 destination), from the
//! sandbox's path and E2B's datapath (v1 and v2 rewrite at the same hooks and priorities).
//!
//! Request leg: client → host IP in the host side; the sandbox namespace receives it on its
//! veth, DNATs it to the guest at PREROUTING (nat, priority -100), forwards it (TTL - 1) and
//! sends it out the tap (or its bridge) to the guest's MAC. Reply leg: the guest answers from
//! its address; the sandbox namespace finds the same conntrack entry (ESTABLISHED_REPLY),
//! forwards it, un-DNATs it at POSTROUTING (priority 100) and sends it out its veth; the host
//! side delivers it locally (INPUT) to the client's socket.
use std::net::Ipv4Addr;

use serde::Serialize;

use super::observe::{CT_ESTABLISHED_REPLY, CT_NEW};
use crate::{
    hook::{Hook, PRIO_CONNTRACK, PRIO_NAT_DST, PRIO_NAT_SRC},
    hop::{Hop, HopKind},
    journey::Leg,
    path::{Dev, ExpectedPath},
};

/// Which namespace of the path a hop is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Host,
    Sandbox,
    /// Neither: another sandbox's namespace, or one off the path.
    Other,
}

/// Where a packet is inside its namespace, in path order: what can act between two hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A local socket's connect(): cgroup programs, then the output route lookup.
    Connect,
    Output,
    /// Received by a device: XDP, then tc/tcx ingress and netdev ingress chains.
    Receive,
    Ingress,
    /// A bridge port's frame in the bridge (bridge family chains, forwarding database).
    Bridge,
    Prerouting,
    /// The route lookup of a received packet (forward or deliver).
    RouteInput,
    Forward,
    Input,
    Postrouting,
    /// Neighbour resolution, netdev egress chains, tc/tcx egress, the queue discipline.
    Egress,
    /// Handed to the device driver.
    Xmit,
    /// Read by the tap's reader (the VMM), or delivered to a socket.
    Delivered,
}

/// A hop's place: namespace side, stage, and netfilter priority (0 outside hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pos {
    pub side: Side,
    pub stage: Stage,
    pub priority: i32,
}

/// What conntrack should say at a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CtWant {
    /// Before conntrack ran in this namespace.
    None,
    /// Tracked in zone 0 with this `ip_conntrack_info`; `dnat`: the entry's DST_NAT bit.
    Tracked { info: u32, dnat: Option<bool> },
}

/// What a hop should look like. `None` fields are not compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expect {
    pub pos: Pos,
    /// The point belongs on this leg's path at all (a request in the sandbox's INPUT hook, or
    /// leaving by its veth, does not).
    pub on_path: bool,
    /// Devices the hop may be on (its device, or a netfilter hook's in/out device).
    pub in_devs: Option<Vec<u32>>,
    pub out_devs: Option<Vec<u32>>,
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    /// The lowest TTL the packet may have here.
    pub ttl: Option<u8>,
    pub ct: Option<CtWant>,
    pub mark: Option<u32>,
    pub l2_dst: Option<String>,
}

/// The path one attempt should take: the sandbox's path and the attempt's client.
pub struct Route<'a> {
    pub path: &'a ExpectedPath,
    pub client: (Ipv4Addr, u16),
    /// The TTL of the first reply seen at the tap (the guest's own; unknown before).
    pub guest_ttl: Option<u8>,
}

/// An ifindex no device has (ifindexes are positive `int`s).
const NO_DEVICE: u32 = u32::MAX;

fn idx(d: &Option<Dev>) -> Option<u32> {
    d.as_ref().map(|d| d.ifindex)
}

fn mac(d: &Option<Dev>) -> Option<String> {
    d.as_ref().and_then(|d| d.mac.clone())
}

impl Route<'_> {
    pub fn side(&self, netns: u32) -> Side {
        if self.path.is_host(netns) {
            Side::Host
        } else if netns == self.path.sandbox_ns.inode {
            Side::Sandbox
        } else {
            Side::Other
        }
    }

    /// The hop's place in its namespace.
    pub fn pos(&self, leg: Leg, h: &Hop) -> Pos {
        let side = self.side(h.netns);
        let (stage, priority) = match &h.kind {
            HopKind::Netfilter { hook, priority, .. } => (hook_stage(*hook), *priority),
            HopKind::Tcx { ingress: true } => (Stage::Ingress, 0),
            HopKind::Tcx { ingress: false } => (Stage::Egress, 0),
            HopKind::Receive => (Stage::Receive, 0),
            HopKind::Xmit => (Stage::Xmit, 0),
            HopKind::Consumed => (Stage::Delivered, 0),
            HopKind::SendReset { .. } => (Stage::Input, i32::MAX),
            HopKind::Socket { .. } | HopKind::RecvReset => (Stage::Delivered, 0),
            HopKind::Route { .. } if side == Side::Host && leg == Leg::Request => (Stage::Connect, 0),
            HopKind::Route { .. } => (Stage::RouteInput, 0),
            HopKind::Neigh { .. } => (Stage::Egress, 0),
            // A drop's place is the last hop before it; on its own it sits nowhere.
            HopKind::Drop { .. } => (Stage::Delivered, i32::MAX),
        };
        Pos {
            side,
            stage,
            priority,
        }
    }

    /// The guest-facing device of the sandbox namespace and the tap behind it. When the
    /// namespace's devices were read and neither is there (the tap was deleted), no device
    /// is the right one: every device a packet takes toward the guest differs.
    fn guest_devs(&self) -> Vec<u32> {
        let d = &self.path.devices;
        let devs: Vec<u32> = [idx(&d.tap), idx(&d.bridge)].into_iter().flatten().collect();
        if devs.is_empty() && d.ns_veth.is_some() {
            return vec![NO_DEVICE];
        }
        devs
    }

    fn host_devs(&self) -> Vec<u32> {
        let d = &self.path.devices;
        [idx(&d.host_veth), idx(&d.host_bridge)]
            .into_iter()
            .flatten()
            .collect()
    }

    fn ns_veth(&self) -> Vec<u32> {
        idx(&self.path.devices.ns_veth).into_iter().collect()
    }

    /// Every device of the path on one side, when all of them are known by ifindex.
    pub fn path_devices(&self, side: Side) -> Option<Vec<u32>> {
        let d = &self.path.devices;
        let devs = match side {
            Side::Host => vec![idx(&d.host_veth)?],
            Side::Sandbox => vec![idx(&d.ns_veth)?, idx(&d.tap)?],
            Side::Other => return None,
        };
        let mut devs = devs;
        devs.extend(match side {
            Side::Host => idx(&d.host_bridge),
            _ => idx(&d.bridge),
        });
        Some(devs)
    }

    /// What hop `h` of leg `leg` should look like.
    pub fn expect(&self, leg: Leg, h: &Hop) -> Expect {
        let pos = self.pos(leg, h);
        match leg {
            Leg::Reply => self.reply(pos, h),
            _ => self.request(pos, h),
        }
    }

    fn request(&self, pos: Pos, h: &Hop) -> Expect {
        let p = self.path;
        let d = &p.devices;
        let dnat_done = pos.side == Side::Sandbox
            && (pos.stage > Stage::Prerouting
                || (pos.stage == Stage::Prerouting && pos.priority > PRIO_NAT_DST));
        let dst = if dnat_done {
            (p.guest_ip, p.port)
        } else {
            (p.host_ip, p.port)
        };
        let forwarded = pos.side == Side::Sandbox && pos.stage >= Stage::Forward;
        let ttl = d
            .host_ttl
            .map(|t| if forwarded { t.saturating_sub(1) } else { t });
        let tracked = match pos.side {
            // Local output: conntrack runs at OUTPUT -200.
            Side::Host => pos.stage > Stage::Output || pos.priority > PRIO_CONNTRACK,
            // A veth crossing drops the host side's entry: the namespace makes its own at
            // PREROUTING -200.
            Side::Sandbox => {
                pos.stage > Stage::Prerouting
                    || (pos.stage == Stage::Prerouting && pos.priority > PRIO_CONNTRACK)
            }
            Side::Other => false,
        };
        let ct = match (pos.side, tracked) {
            // The tap's queue drops the conntrack reference before the VMM reads the frame.
            (_, _) if pos.stage == Stage::Delivered => None,
            (Side::Other, _) => None,
            (_, false) => Some(CtWant::None),
            (Side::Sandbox, true) => Some(CtWant::Tracked {
                info: CT_NEW,
                dnat: Some(dnat_done),
            }),
            (Side::Host, true) => Some(CtWant::Tracked {
                info: CT_NEW,
                dnat: None,
            }),
        };
        let (on_path, in_devs, out_devs, l2_dst) = match (pos.side, pos.stage) {
            (Side::Host, Stage::Connect | Stage::Output) => (true, None, Some(self.host_devs()), None),
            (Side::Host, Stage::Postrouting) => (true, None, Some(self.host_devs()), None),
            (Side::Host, Stage::Egress | Stage::Xmit) => {
                (true, Some(self.host_devs()), None, mac(&d.ns_veth))
            }
            (Side::Host, _) => (false, None, None, None),
            (Side::Sandbox, Stage::Receive | Stage::Ingress) => {
                (true, Some(self.ns_veth()), None, mac(&d.ns_veth))
            }
            (Side::Sandbox, Stage::Prerouting | Stage::RouteInput) => {
                (true, Some(self.ns_veth()), None, None)
            }
            (Side::Sandbox, Stage::Forward) => (true, Some(self.ns_veth()), Some(self.guest_devs()), None),
            (Side::Sandbox, Stage::Postrouting) => (true, None, Some(self.guest_devs()), None),
            (Side::Sandbox, Stage::Egress | Stage::Xmit) => {
                // The bridge hands the frame to the tap: either carries the guest's MAC.
                (true, Some(self.guest_devs()), None, d.guest_mac.clone())
            }
            (Side::Sandbox, Stage::Delivered) => (true, Some(idx(&d.tap).into_iter().collect()), None, None),
            (Side::Sandbox, _) => (false, None, None, None),
            (Side::Other, _) => (false, None, None, None),
        };
        // Only the hops that carry the frame's Ethernet header say anything about its L2
        // destination.
        let l2_dst =
            l2_dst.filter(|_| matches!(h.kind, HopKind::Tcx { .. } | HopKind::Xmit | HopKind::Receive));
        Expect {
            pos,
            on_path,
            in_devs,
            out_devs,
            src: self.client,
            dst,
            ttl,
            ct,
            mark: Some(0),
            l2_dst,
        }
    }

    fn reply(&self, pos: Pos, h: &Hop) -> Expect {
        let p = self.path;
        let d = &p.devices;
        let undone = pos.side == Side::Host
            || (pos.side == Side::Sandbox
                && (pos.stage > Stage::Postrouting
                    || (pos.stage == Stage::Postrouting && pos.priority > PRIO_NAT_SRC)));
        let src = if undone {
            (p.host_ip, p.port)
        } else {
            (p.guest_ip, p.port)
        };
        let tracked = match pos.side {
            Side::Sandbox | Side::Host => {
                pos.stage > Stage::Prerouting
                    || (pos.stage == Stage::Prerouting && pos.priority > PRIO_CONNTRACK)
            }
            Side::Other => false,
        };
        let ct = match (pos.side, tracked) {
            (_, _) if pos.stage == Stage::Delivered => None,
            (Side::Other, _) => None,
            (_, false) => Some(CtWant::None),
            (_, true) => Some(CtWant::Tracked {
                info: CT_ESTABLISHED_REPLY,
                dnat: None,
            }),
        };
        let forwarded = pos.side == Side::Host || (pos.side == Side::Sandbox && pos.stage >= Stage::Forward);
        let ttl = self
            .guest_ttl
            .map(|t| if forwarded { t.saturating_sub(1) } else { t });
        let tap_mac = mac(&d.bridge).or(mac(&d.tap));
        let (on_path, in_devs, out_devs, l2_dst) = match (pos.side, pos.stage) {
            (Side::Sandbox, Stage::Receive | Stage::Ingress | Stage::Bridge) => {
                (true, Some(self.guest_devs()), None, tap_mac)
            }
            (Side::Sandbox, Stage::Prerouting | Stage::RouteInput) => {
                (true, Some(self.guest_devs()), None, None)
            }
            (Side::Sandbox, Stage::Forward) => (true, Some(self.guest_devs()), Some(self.ns_veth()), None),
            (Side::Sandbox, Stage::Postrouting) => (true, None, Some(self.ns_veth()), None),
            (Side::Sandbox, Stage::Egress | Stage::Xmit) => {
                (true, Some(self.ns_veth()), None, mac(&d.host_veth))
            }
            (Side::Sandbox, _) => (false, None, None, None),
            (Side::Host, Stage::Receive | Stage::Ingress) => {
                (true, Some(self.host_devs()), None, mac(&d.host_veth))
            }
            (Side::Host, Stage::Prerouting | Stage::RouteInput | Stage::Input | Stage::Delivered) => {
                (true, Some(self.host_devs()), None, None)
            }
            (Side::Host, _) => (false, None, None, None),
            (Side::Other, _) => (false, None, None, None),
        };
        let l2_dst =
            l2_dst.filter(|_| matches!(h.kind, HopKind::Tcx { .. } | HopKind::Xmit | HopKind::Receive));
        Expect {
            pos,
            on_path,
            in_devs,
            out_devs,
            src,
            dst: self.client,
            ttl,
            ct,
            mark: Some(0),
            l2_dst,
        }
    }
}

fn hook_stage(hook: Hook) -> Stage {
    match hook {
        Hook::Prerouting => Stage::Prerouting,
        Hook::Input => Stage::Input,
        Hook::Forward => Stage::Forward,
        Hook::Output => Stage::Output,
        Hook::Postrouting => Stage::Postrouting,
    }
}
