//! VMM faults: the VMM stopped, nothing listening in the guest, or the guest answering late.
use super::{Family, Fault, Ident, Leg, Step, Topo, blank};
use crate::campaign::rng::Rng;

pub(super) fn vmm(r: &mut Rng, t: &Topo) -> Fault {
    let mut f = blank(Family::Vmm, &t.ns);
    f.device = Some(t.tap.clone());
    match r.below(3) {
        0 => {
            f.apply.push(Step::Signal(libc::SIGSTOP));
            f.revert.push(Step::Signal(libc::SIGCONT));
            f.actor = Ident::Vmm;
            f.what = "the VMM stopped (SIGSTOP)".into();
        }
        n if n == 1 || !t.can.guest_delay => {
            f.apply.push(Step::Guest("listener off".into()));
            f.revert.push(Step::Guest("listener on".into()));
            f.actor = Ident::Guest;
            f.what = "nothing listens on envd's port in the guest".into();
        }
        _ => {
            let ms = 70 + r.below(60);
            f.apply.push(Step::Guest(format!("delay {ms}")));
            f.revert.push(Step::Guest("delay 0".into()));
            f.actor = Ident::Guest;
            f.what = format!("the guest answers {ms} ms late");
        }
    }
    f.leg = Some(Leg::Request);
    f
}
