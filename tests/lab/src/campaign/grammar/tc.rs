//! tc faults: a root qdisc that drops everything, or a u32 filter that redirects envd's
//! packets to loopback.
use super::{Family, Fault, Ident, Intent, Leg, Topo, blank, words};
use crate::campaign::rng::Rng;

pub(super) fn tc(r: &mut Rng, t: &Topo) -> Fault {
    let (ns, dev, leg) = match r.below(3) {
        0 => (t.host_ns.clone(), t.host_veth.clone(), Leg::Request),
        1 => (t.ns.clone(), t.tap.clone(), Leg::Request),
        _ => (t.ns.clone(), t.ns_veth.clone(), Leg::Reply),
    };
    let mut f = blank(Family::Tc, &ns);
    f.leg = Some(leg);
    f.device = Some(dev.clone());
    if !t.can.tc_u32_mirred || r.chance(50) {
        f.intent = Intent::Break;
        f.apply.push(words(
            &ns,
            &format!("tc qdisc replace dev {dev} root pfifo limit 0"),
        ));
        f.revert.push(words(&ns, &format!("tc qdisc del dev {dev} root")));
        f.what = format!("a pfifo limit 0 root qdisc on {dev} in {ns}");
        f.actor = Ident::Qdisc { device: dev };
        return f;
    }
    // A classic filter that redirects envd's packets elsewhere (egress side of loopback).
    let inert = r.chance(20);
    let port = if inert { t.port + 1 } else { t.port };
    // Where the leg's packets leave by that device: the request out the host veth or the
    // tap, the reply out the sandbox's veth.
    let (dir, field) = match leg {
        Leg::Request => ("egress", "dport"),
        Leg::Reply => ("egress", "sport"),
    };
    let pref = 40 + r.below(40);
    f.intent = if inert { Intent::Inert } else { Intent::Break };
    f.apply
        .push(words(&ns, &format!("tc qdisc add dev {dev} clsact")));
    f.apply.push(words(
        &ns,
        &format!("tc filter add dev {dev} {dir} pref {pref} protocol ip u32 match ip {field} {port} 0xffff action mirred egress redirect dev lo"),
    ));
    f.revert
        .push(words(&ns, &format!("tc qdisc del dev {dev} clsact")));
    f.what = format!("a u32 filter on {dev} {dir} in {ns} redirecting {field} {port} to lo");
    f.actor = Ident::TcFilter { device: dev };
    f
}
