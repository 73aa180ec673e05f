//! BPF faults: another agent's program (XDP, tcx, tc, cgroup connect4) on a device of the
//! path or on the client's cgroup.
use super::{Family, Fault, Ident, Intent, Leg, Step, Topo, blank};
use crate::{agent, campaign::rng::Rng};

pub(super) fn bpf(r: &mut Rng, t: &Topo) -> Fault {
    let kinds: Vec<agent::Kind> = t.can.bpf.clone();
    let kind = if kinds.is_empty() {
        agent::Kind::TcxIngress
    } else {
        *r.pick(&kinds)
    };
    let inert = r.chance(20);
    let (ns, dev, leg) = match (kind, r.below(3)) {
        (agent::Kind::CgroupConnect4, _) => (t.host_ns.clone(), String::new(), Leg::Request),
        (agent::Kind::Xdp | agent::Kind::TcxIngress | agent::Kind::TcIngress, 0) => {
            (t.ns.clone(), t.ns_veth.clone(), Leg::Request)
        }
        (agent::Kind::Xdp | agent::Kind::TcxIngress | agent::Kind::TcIngress, 1) => {
            (t.ns.clone(), t.tap.clone(), Leg::Reply)
        }
        (agent::Kind::Xdp | agent::Kind::TcxIngress | agent::Kind::TcIngress, _) => {
            (t.host_ns.clone(), t.host_veth.clone(), Leg::Reply)
        }
        (_, 0) => (t.host_ns.clone(), t.host_veth.clone(), Leg::Request),
        (_, 1) => (t.ns.clone(), t.tap.clone(), Leg::Request),
        _ => (t.ns.clone(), t.ns_veth.clone(), Leg::Reply),
    };
    let target = match kind {
        agent::Kind::CgroupConnect4 => agent::Target::Cgroup(t.cgroup.clone()),
        _ => agent::Target::Device {
            netns: Some(ns.clone()),
            dev: dev.clone(),
        },
    };
    let spec = agent::Spec {
        kind,
        target,
        port: t.port,
        inert,
    };
    let mut f = blank(Family::Bpf, &ns);
    f.leg = Some(leg);
    f.device = (!dev.is_empty()).then_some(dev.clone());
    f.intent = if inert { Intent::Inert } else { Intent::Break };
    f.what = format!(
        "another agent's {} program ({}) on {}",
        kind.name(),
        spec.prog_name(),
        if dev.is_empty() {
            "the client's cgroup".into()
        } else {
            format!("{dev} in {ns}")
        }
    );
    f.actor = Ident::Bpf {
        name: spec.prog_name().into(),
    };
    f.apply.push(Step::Agent(spec));
    f
}
