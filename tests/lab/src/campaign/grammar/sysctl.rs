//! sysctl faults: forwarding off, ARP ignored, reverse-path filtering, accept_local and
//! route_localnet in the namespaces of the path.
use super::{Family, Fault, Ident, Intent, Topo, blank, words};
use crate::campaign::rng::Rng;

pub(super) fn sysctl(r: &mut Rng, t: &Topo) -> Fault {
    let mut f = blank(Family::Sysctl, &t.ns);
    let set = |f: &mut Fault, ns: &str, key: &str, bad: &str, good: &str| {
        f.apply.push(words(ns, &format!("sysctl -qw {key}={bad}")));
        f.revert.push(words(ns, &format!("sysctl -qw {key}={good}")));
    };
    match r.below(6) {
        0 => {
            set(&mut f, &t.ns.clone(), "net.ipv4.ip_forward", "0", "1");
            f.intent = Intent::Break;
            f.actor = Ident::Sysctl {
                names: vec![
                    "net.ipv4.ip_forward".into(),
                    "net.ipv4.conf.all.forwarding".into(),
                ],
            };
            f.what = format!("net.ipv4.ip_forward=0 in {}", t.ns);
        }
        1 => {
            let key = format!("net.ipv4.conf.{}.forwarding", t.ns_veth);
            set(&mut f, &t.ns.clone(), &key, "0", "1");
            f.intent = Intent::Break;
            f.actor = Ident::Sysctl {
                names: vec![key.clone()],
            };
            f.what = format!("{key}=0 in {}", t.ns);
        }
        2 => {
            // The host stops answering ARP for its veth address: the sandbox's replies wait.
            let (ns, dev, peer_ns, peer_dev) = if r.chance(50) {
                (
                    t.ns.clone(),
                    t.ns_veth.clone(),
                    t.host_ns.clone(),
                    t.host_veth.clone(),
                )
            } else {
                (
                    t.host_ns.clone(),
                    t.host_veth.clone(),
                    t.ns.clone(),
                    t.ns_veth.clone(),
                )
            };
            let key = format!("net.ipv4.conf.{dev}.arp_ignore");
            set(&mut f, &ns, &key, "8", "0");
            f.apply
                .push(words(&peer_ns, &format!("ip neigh flush dev {peer_dev}")));
            f.netns = ns;
            f.intent = Intent::Break;
            f.actor = Ident::Sysctl {
                names: vec![key.clone(), "net.ipv4.conf.all.arp_ignore".into()],
            };
            f.what = format!("{key}=8 (and the peer's neighbour cache flushed)");
        }
        3 => {
            let key = format!("net.ipv4.conf.{}.rp_filter", t.ns_veth);
            set(&mut f, &t.ns.clone(), &key, "1", "0");
            f.intent = Intent::Unsure;
            f.actor = Ident::Sysctl {
                names: vec![key.clone(), "net.ipv4.conf.all.rp_filter".into()],
            };
            f.what = format!("{key}=1 in {}", t.ns);
        }
        4 => {
            let key = format!("net.ipv4.conf.{}.accept_local", t.ns_veth);
            set(&mut f, &t.ns.clone(), &key, "1", "0");
            f.intent = Intent::Unsure;
            f.actor = Ident::Sysctl {
                names: vec![key.clone()],
            };
            f.what = format!("{key}=1 in {}", t.ns);
        }
        _ => {
            let key = format!("net.ipv4.conf.{}.route_localnet", t.tap);
            set(&mut f, &t.ns.clone(), &key, "1", "0");
            f.intent = Intent::Unsure;
            f.actor = Ident::Sysctl {
                names: vec![key.clone()],
            };
            f.what = format!("{key}=1 in {}", t.ns);
        }
    }
    f
}
