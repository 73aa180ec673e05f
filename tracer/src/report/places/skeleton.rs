//! The namespaces and devices a record names ([`Names`]), and the skeleton built from them:
//! the zones, the nodes in request order and the hooks each leg is expected to cross, nothing
//! reached yet.
use tracer_model::journey::Leg;

use super::{Lane, Mark, Node, NodeKind, Places, Reach, Zone, ZoneKind};
use crate::report::record::{HopRecord, JourneyRecord};

/// The namespaces and devices a record names.
pub(super) struct Names {
    pub(super) host: String,
    pub(super) sandbox: String,
    /// The sandbox side of the veth pair (`eth0`).
    pub(super) ingress: String,
    pub(super) tap: String,
    pub(super) veth: String,
    pub(super) bridges: Vec<String>,
    /// Namespaces off the path, each with the devices seen there.
    pub(super) others: Vec<(String, Vec<String>)>,
}

impl Names {
    pub(super) fn of(r: &JourneyRecord) -> Self {
        let sandbox = r
            .sandbox
            .as_ref()
            .map(|s| s.netns.clone())
            .or_else(|| r.drop.as_ref().and_then(|d| d.netns.clone()))
            .unwrap_or_else(|| "sandbox".into());
        let tap = r.sandbox.as_ref().map_or("tap0".into(), |s| s.tap.clone());
        let host = host_name(r, &sandbox);
        let in_sandbox = |h: &&HopRecord| h.netns == sandbox;
        let ingress = r
            .hops
            .iter()
            .filter(in_sandbox)
            .filter(|h| h.leg == Leg::Request && matches!(h.point.as_str(), "tcx/ingress" | "receive"))
            .find_map(|h| h.device.clone().filter(|d| *d != tap))
            .unwrap_or_else(|| "eth0".into());
        let veth = r
            .hops
            .iter()
            .filter(|h| h.netns == host && h.point != "socket")
            .find_map(|h| h.device.clone().filter(|d| d != "lo"))
            .unwrap_or_else(|| default_veth(&sandbox));
        let bridges = bridges(r, &sandbox, &[&ingress, &tap]);
        let others = others(r, &[&host, &sandbox]);
        Self {
            host,
            sandbox,
            ingress,
            tap,
            veth,
            bridges,
            others,
        }
    }
}

/// A diagram stays readable: at most this many bridges, namespaces off the path, and devices
/// in each of those (a record from a strange host, or a crafted one, may name many).
pub(super) const MAX_EXTRA: usize = 4;

/// Devices of the sandbox's namespace that are neither its veth end nor its tap: bridges.
fn bridges(r: &JourneyRecord, sandbox: &str, known: &[&str]) -> Vec<String> {
    let seen = r
        .hops
        .iter()
        .filter(|h| h.netns == sandbox)
        .filter_map(|h| h.device.clone());
    let dropped = r.drop.iter().filter(|d| d.netns.as_deref() == Some(sandbox));
    let dropped = dropped
        .flat_map(|d| [d.device.clone(), d.out_device.clone()])
        .flatten();
    let mut out: Vec<String> = Vec::new();
    for d in seen.chain(dropped) {
        if !known.contains(&d.as_str()) && d != "lo" && !out.contains(&d) && out.len() < MAX_EXTRA {
            out.push(d);
        }
    }
    out
}

/// Namespaces other than `known` that hops were seen in, each with its devices.
fn others(r: &JourneyRecord, known: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for h in r.hops.iter().filter(|h| !known.contains(&h.netns.as_str())) {
        let i = match out.iter().position(|(n, _)| *n == h.netns) {
            Some(i) => i,
            None if out.len() < MAX_EXTRA => {
                out.push((h.netns.clone(), Vec::new()));
                out.len() - 1
            }
            None => continue,
        };
        let dev = h.device.clone().unwrap_or_else(|| "-".into());
        if !out[i].1.contains(&dev) && out[i].1.len() < MAX_EXTRA {
            out[i].1.push(dev);
        }
    }
    out
}

/// The host side is where the client's packets start: the namespace of the first hop outside
/// the sandbox's (the drop's or the route's namespace when no packet was seen).
fn host_name(r: &JourneyRecord, sandbox: &str) -> String {
    let starts = |h: &&HopRecord| matches!(h.point.as_str(), "socket" | "nf/OUTPUT");
    let outside = |h: &&HopRecord| h.netns != sandbox;
    r.hops
        .iter()
        .filter(outside)
        .find(starts)
        .or_else(|| r.hops.iter().find(outside))
        .map(|h| h.netns.clone())
        .or_else(|| {
            let named = [
                r.drop.as_ref().and_then(|d| d.netns.clone()),
                r.unreachable.as_ref().and_then(|u| u.netns.clone()),
            ];
            named.into_iter().flatten().find(|n| n != sandbox)
        })
        .unwrap_or_else(|| "host".into())
}

/// E2B pairs `ns-N` with `veth-N`; elsewhere the name is unknown.
fn default_veth(sandbox: &str) -> String {
    match sandbox.strip_prefix("ns-") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("veth-{n}"),
        _ => "veth".into(),
    }
}

/// Zones, nodes and the expected hooks, nothing reached yet.
pub(super) fn skeleton(r: &JourneyRecord, n: &Names) -> Places {
    let mut p = Places {
        zones: vec![
            zone("host", ZoneKind::Host, &n.host, "host side"),
            zone("sandbox", ZoneKind::Sandbox, &n.sandbox, "sandbox namespace"),
            zone("guest", ZoneKind::Guest, "microVM", "guest"),
        ],
        nodes: Vec::new(),
        marks: Vec::new(),
        failure: None,
    };
    let sb = r.sandbox.as_ref();
    let port = r
        .target
        .as_deref()
        .and_then(|t| t.rsplit_once(':'))
        .map(|(_, p)| p);
    let guest_ip = sb.map(|s| s.guest_ip.as_str());
    node(
        &mut p,
        "client",
        0,
        NodeKind::Client,
        "orchestrator",
        r.client.clone(),
    );
    node(&mut p, "veth", 0, NodeKind::Device, &n.veth, None);
    node(&mut p, "eth0", 1, NodeKind::Device, &n.ingress, None);
    let nat = sb.map(|s| format!("{}\n→ {}", s.host_ip, s.guest_ip));
    node(&mut p, "nat", 1, NodeKind::Nat, "DNAT", nat);
    for (i, b) in n.bridges.iter().enumerate() {
        node(&mut p, &format!("bridge-{}", i + 1), 1, NodeKind::Bridge, b, None);
    }
    node(&mut p, "tap", 1, NodeKind::Device, &n.tap, None);
    let envd = match (guest_ip, port) {
        (Some(ip), Some(port)) => Some(format!("{ip}\nenvd :{port}")),
        (Some(ip), None) => Some(format!("{ip}\nenvd")),
        (None, _) => Some("envd".into()),
    };
    node(&mut p, "guest", 2, NodeKind::Guest, "eth0", envd);
    for (i, (ns, devices)) in n.others.iter().enumerate() {
        let key = format!("other-{}", i + 1);
        p.zones.push(zone(&key, ZoneKind::Other, ns, "off the path"));
        let z = p.zones.len() - 1;
        for (j, d) in devices.iter().enumerate() {
            node(&mut p, &format!("{key}-{}", j + 1), z, NodeKind::Device, d, None);
        }
    }
    expected_marks(&mut p);
    p
}

fn zone(key: &str, kind: ZoneKind, name: &str, caption: &'static str) -> Zone {
    Zone {
        key: key.into(),
        kind,
        name: name.into(),
        caption,
    }
}

fn node(p: &mut Places, key: &str, zone: usize, kind: NodeKind, label: &str, sub: Option<String>) {
    p.nodes.push(Node {
        key: key.into(),
        zone,
        kind,
        label: label.into(),
        sub,
        request: Reach::Unreached,
        reply: Reach::Unreached,
    });
}

/// The hooks each leg crosses on E2B's path, on the edge where it crosses them: the SYN is
/// DNATed in PREROUTING, the SYN-ACK un-DNATed in POSTROUTING.
fn expected_marks(p: &mut Places) {
    let at = |p: &Places, key: &str| p.nodes.iter().position(|n| n.key == key).expect("skeleton node");
    let (client, eth0, nat) = (at(p, "client"), at(p, "eth0"), at(p, "nat"));
    let host = [
        (Lane::Request, "OUTPUT"),
        (Lane::Request, "POSTROUTING"),
        (Lane::Reply, "PREROUTING"),
        (Lane::Reply, "INPUT"),
    ];
    for (lane, hook) in host {
        mark(p, lane, hook, 0, client, true);
    }
    mark(p, Lane::Request, "PREROUTING", 1, eth0, true);
    mark(p, Lane::Request, "FORWARD", 1, nat, true);
    mark(p, Lane::Request, "POSTROUTING", 1, nat, true);
    mark(p, Lane::Reply, "PREROUTING", 1, nat, true);
    mark(p, Lane::Reply, "FORWARD", 1, nat, true);
    mark(p, Lane::Reply, "POSTROUTING", 1, eth0, true);
}

pub(super) fn mark(
    p: &mut Places,
    lane: Lane,
    hook: &str,
    zone: usize,
    edge: usize,
    expected: bool,
) -> usize {
    p.marks.push(Mark {
        lane,
        hook: hook.into(),
        zone,
        edge,
        reach: Reach::Unreached,
        expected,
    });
    p.marks.len() - 1
}
