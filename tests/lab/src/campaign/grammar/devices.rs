//! Faults on the path's devices: a static neighbour entry with a wrong address, a link set
//! down or given a small MTU, an address removed or made local where it should not be.
use super::{Family, Fault, Ident, Intent, Leg, Topo, blank, words};
use crate::campaign::rng::Rng;

pub(super) fn neighbour(r: &mut Rng, t: &Topo) -> Fault {
    let mac = format!(
        "02:00:5e:{:02x}:{:02x}:{:02x}",
        r.below(256),
        r.below(256),
        r.below(256)
    );
    let inert = r.chance(15);
    let (ns, dev, addr, leg) = match r.below(3) {
        0 => (t.ns.clone(), t.tap.clone(), t.guest_ip.clone(), Leg::Request),
        1 => (
            t.host_ns.clone(),
            t.host_veth.clone(),
            t.ns_veth_ip.clone(),
            Leg::Request,
        ),
        _ => (t.ns.clone(), t.ns_veth.clone(), t.client_ip.clone(), Leg::Reply),
    };
    let addr = if inert { "169.254.0.29".to_string() } else { addr };
    let dev = if inert { t.tap.clone() } else { dev };
    let ns = if inert { t.ns.clone() } else { ns };
    let mut f = blank(Family::Neighbour, &ns);
    f.leg = Some(leg);
    f.device = Some(dev.clone());
    f.intent = if inert { Intent::Inert } else { Intent::Break };
    f.apply.push(words(
        &ns,
        &format!("ip neigh replace {addr} lladdr {mac} nud permanent dev {dev}"),
    ));
    f.revert
        .push(words(&ns, &format!("ip neigh del {addr} dev {dev}")));
    f.what = format!("static neighbour in {ns}: {addr} lladdr {mac} on {dev} ({leg:?})");
    f.actor = Ident::Neighbour {
        device: dev,
        address: addr,
    };
    f
}

pub(super) fn link(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, dev) = match r.below(3) {
        0 => (t.ns.clone(), t.tap.clone()),
        1 => (t.ns.clone(), t.ns_veth.clone()),
        _ => (t.host_ns.clone(), t.host_veth.clone()),
    };
    let mut f = blank(Family::Link, &ns);
    f.device = Some(dev.clone());
    if r.chance(70) {
        f.intent = Intent::Break;
        f.apply.push(words(&ns, &format!("ip link set {dev} down")));
        f.revert.push(words(&ns, &format!("ip link set {dev} up")));
        // A down host veth takes E2B's host route with it.
        if dev == t.host_veth {
            f.revert.push(words(
                &ns,
                &format!(
                    "ip route replace {}/32 via {} dev {}",
                    t.host_ip, t.ns_veth_ip, t.host_veth
                ),
            ));
        }
        f.what = format!("{dev} in {ns} set down");
    } else {
        let mtu = *r.pick(&[68u32, 128, 576, 1280]);
        f.intent = Intent::Unsure;
        f.apply.push(words(&ns, &format!("ip link set {dev} mtu {mtu}")));
        f.revert.push(words(&ns, &format!("ip link set {dev} mtu 1500")));
        // The path MTU the small one taught the stack stays cached: forget it too.
        f.revert.push(words(&ns, "ip route flush cache"));
        f.what = format!("{dev} in {ns}: MTU {mtu}");
    }
    f.actor = Ident::Link { device: dev };
    f
}

pub(super) fn address(r: &mut Rng, t: &Topo) -> Fault {
    let mut f = blank(Family::Address, &t.ns);
    f.intent = Intent::Break;
    match r.below(4) {
        0 => {
            let a = format!("{}/30", t.tap_ip);
            f.apply
                .push(words(&t.ns, &format!("ip addr del {a} dev {}", t.tap)));
            f.revert
                .push(words(&t.ns, &format!("ip addr add {a} dev {}", t.tap)));
            f.device = Some(t.tap.clone());
            f.what = format!("address {a} removed from {} in {}", t.tap, t.ns);
            f.actor = Ident::Address {
                device: t.tap.clone(),
                address: t.tap_ip.clone(),
            };
        }
        1 => {
            let a = format!("{}/31", t.ns_veth_ip);
            f.apply
                .push(words(&t.ns, &format!("ip addr del {a} dev {}", t.ns_veth)));
            f.revert
                .push(words(&t.ns, &format!("ip addr add {a} dev {}", t.ns_veth)));
            f.revert.push(words(
                &t.ns,
                &format!("ip route replace default via {} dev {}", t.client_ip, t.ns_veth),
            ));
            // The host's neighbour entry would hide the loss for a while.
            f.apply
                .push(words(&t.host_ns, &format!("ip neigh flush dev {}", t.host_veth)));
            f.device = Some(t.ns_veth.clone());
            f.what = format!("address {a} removed from {} in {}", t.ns_veth, t.ns);
            f.actor = Ident::Address {
                device: t.ns_veth.clone(),
                address: t.ns_veth_ip.clone(),
            };
        }
        2 => {
            // The guest's address made local in the sandbox namespace: delivered there.
            let dev = r.pick(&["lo", "eth0"]).to_string();
            let a = format!("{}/32", t.guest_ip);
            f.apply.push(words(&t.ns, &format!("ip addr add {a} dev {dev}")));
            f.revert.push(words(&t.ns, &format!("ip addr del {a} dev {dev}")));
            f.device = Some(dev.clone());
            f.what = format!("the guest's address {a} added to {dev} in {}", t.ns);
            f.actor = Ident::Address {
                device: dev,
                address: t.guest_ip.clone(),
            };
        }
        _ => {
            // The host IP made local on the host side.
            let a = format!("{}/32", t.host_ip);
            f.netns = t.host_ns.clone();
            f.apply
                .push(words(&t.host_ns, &format!("ip addr add {a} dev lo")));
            f.revert
                .push(words(&t.host_ns, &format!("ip addr del {a} dev lo")));
            f.device = Some("lo".into());
            f.what = format!("the host IP {a} added to lo in {}", t.host_ns);
            f.actor = Ident::Address {
                device: "lo".into(),
                address: t.host_ip.clone(),
            };
        }
    }
    f.leg = Some(Leg::Request);
    f
}
