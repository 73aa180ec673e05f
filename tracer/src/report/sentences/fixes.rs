//! The likely fix, in one line: the cause actor's own fix when the engine named one, else one
//! per outcome (the dropping rule, the route, the VMM, the queue).
use tracer_model::{
    facts::FactUsed,
    path::ExpectedPath,
    reason::ReasonClass,
    rule::RuleText,
    verdict::{Outcome, QueueKind, ResetBy, UnreachableKind, Verdict},
};

use super::{Facts, known, without_empty_names};

/// Put the host route back through the sandbox's own veth (every part known, or said not to
/// be).
fn host_route_fix(path: Option<&ExpectedPath>) -> String {
    match path {
        Some(p) if !p.host_veth.is_empty() && p.ns_veth_ip.is_some() => format!(
            "fix the host route: ip route replace {}/32 via {} dev {}",
            p.host_ip,
            p.ns_veth_ip.map(|a| a.to_string()).unwrap_or_default(),
            p.host_veth
        ),
        Some(p) => format!(
            "fix the host route for {} so that it leads out the sandbox's own veth (tracer doctor shows it)",
            p.host_ip
        ),
        None => {
            "fix the host route so that it leads out the sandbox's own veth (tracer doctor shows it)".into()
        }
    }
}

/// The likely fix, in one line.
pub fn fix(f: Facts<'_>) -> Option<String> {
    let clean = without_empty_names(f.verdict);
    let f = Facts { verdict: &clean, ..f };
    let v = f.verdict;
    if v.outcome == Outcome::Connected {
        return None;
    }
    if let Some(hint) = crate::report::cause::actor_fix(f) {
        return Some(hint);
    }
    let sandbox_ns = f
        .path
        .map(|p| p.sandbox_ns.label())
        .unwrap_or_else(|| "<netns>".into());
    match v.outcome {
        Outcome::Dropped => {
            let d = v.drop.as_ref()?;
            let ns = d.netns.clone().unwrap_or(sandbox_ns);
            Some(drop_fix(f, d.reason.class(), &ns))
        }
        Outcome::Reset => Some(match v.reset.as_ref()?.by {
            ResetBy::Guest => "start envd in the guest (or check it listens on the port)".into(),
            _ => "the packet was not forwarded to the guest: check the DNAT and routes (tracer doctor)".into(),
        }),
        Outcome::NoReply => Some(
            "the VMM read the SYN but no answer came: check envd and the guest's network inside the VM"
                .into(),
        ),
        Outcome::Unreachable => Some(match v.unreachable.as_ref()?.kind {
            UnreachableKind::Neighbour => neighbour_fix(v, f.path),
            UnreachableKind::NoRoute => "add the missing route (tracer doctor shows the expected one)".into(),
            UnreachableKind::Prohibited | UnreachableKind::Blackhole => {
                "remove the rule or route that blocks the host IP (ip rule; ip route show table all), or the local firewall rule that refuses it"
                    .into()
            }
            UnreachableKind::RoutedElsewhere => host_route_fix(f.path),
            UnreachableKind::HostSideUnknown => format!(
                "restore the veth pair between the host and {} (the slot's network setup); tracer doctor shows what is left",
                known(f.path.map(|p| p.sandbox_ns.label()).as_deref(), "the sandbox's namespace")
            ),
        }),
        Outcome::Misdirected => Some(host_route_fix(f.path)),
        Outcome::Queued => Some(queued_fix(v)),
        Outcome::Late => {
            let l = v.late.as_ref()?;
            let find = match &l.split {
                Some(s) if s.guest_ms >= s.to_guest_ms => format!(
                    "find out why envd answers only after {} ms (a busy or just booted guest, a CPU-starved node)",
                    s.guest_ms
                ),
                Some(s) => match &s.waited {
                    Some((ms, netns, device)) => format!(
                        "find out why the SYN waited {ms} ms in {} (the time went on the way, not in the guest)",
                        super::place(&Some(netns.clone()), device)
                    ),
                    None => format!("find out where the SYN's {} ms on the way went", s.to_guest_ms),
                },
                None => format!("find out where the {} ms went", l.reply_ms),
            };
            Some(format!(
                "{find}, or give each attempt more than {} ms (the orchestrator's envd-init-request-timeout-milliseconds)",
                l.timeout_ms
            ))
        }
        Outcome::Connected | Outcome::Unknown => None,
    }
}

fn neighbour_fix(v: &Verdict, path: Option<&ExpectedPath>) -> String {
    let ns = |inode: u32| match path {
        Some(p) if p.is_host(inode) => p.host_ns.as_ref().and_then(|h| h.name.clone()),
        Some(p) if p.sandbox_ns.inode == inode => p.sandbox_ns.name.clone(),
        _ => None,
    };
    for f in &v.facts {
        match f {
            FactUsed::Link(l) if !l.up => {
                return match ns(l.netns).filter(|n| n != crate::system::netns::ROOT_LABEL) {
                    Some(n) => format!("bring {} up: ip -n {n} link set {} up", l.name, l.name),
                    None => format!("bring {} up: ip link set {} up", l.name, l.name),
                };
            }
            FactUsed::Reader(r) if matches!(r.state, 'T' | 't') => {
                return format!("resume the VMM: kill -CONT {}", r.pid);
            }
            FactUsed::NoReader => {
                return "start the sandbox's VMM again (Firecracker): no process reads the tap".into();
            }
            _ => {}
        }
    }
    "check that the VMM is running and reads the tap (tracer doctor): an unread tap never answers ARP".into()
}

fn queued_fix(v: &Verdict) -> String {
    let Some(q) = v.queued.as_ref() else {
        return "check the device's queue (tracer doctor)".into();
    };
    match (q.queue, &q.reader) {
        (QueueKind::Tap, Some(r)) if matches!(r.state, 'T' | 't') => {
            format!("resume the VMM: kill -CONT {}", r.pid)
        }
        (QueueKind::Tap, Some(r)) => format!(
            "check the VMM (pid {}): is its VM paused, or its virtio-net queue stuck?",
            r.pid
        ),
        (QueueKind::Tap, None) => {
            "start the sandbox's VMM again (Firecracker): no process reads the tap".into()
        }
        (QueueKind::Qdisc, _) => format!(
            "look at the device's queue: {}tc -s qdisc show dev {}",
            crate::report::cause::in_ns(q.netns.as_deref().unwrap_or("<netns>")),
            q.device.as_deref().unwrap_or("<dev>")
        ),
    }
}

pub(super) fn drop_fix(f: Facts<'_>, class: ReasonClass, ns: &str) -> String {
    let rule = f.rule;
    let exec = crate::report::cause::in_ns(ns);
    match class {
        ReasonClass::Netfilter => match rule.and_then(|r| r.rule.as_ref()) {
            Some(RuleText::Iptables(text)) => format!(
                "remove or narrow that rule: {exec}iptables -t {} -D {}",
                f.table().unwrap_or_else(|| "filter".into()),
                text.strip_prefix("-A ").unwrap_or(text)
            ),
            Some(RuleText::Policy { chain, .. }) => format!(
                "accept envd traffic before the policy applies, or change it: {exec}iptables -P {chain} ACCEPT"
            ),
            Some(RuleText::NftPolicy { chain, .. }) => format!(
                "accept envd traffic before the policy applies, or change it: {exec}nft chain {} {chain} '{{ policy accept; }}'",
                f.table().unwrap_or_else(|| "?".into())
            ),
            Some(RuleText::Nft { handle, .. }) => format!(
                "delete that rule: {exec}nft delete rule {} {} handle {handle}",
                f.table().unwrap_or_else(|| "?".into()),
                rule.and_then(|r| r.chain.clone()).unwrap_or_else(|| "?".into())
            ),
            None => format!("find the dropping rule: {exec}nft list ruleset (or rerun with --nft-trace)"),
        },
        ReasonClass::RpFilter => format!(
            "the return path is asymmetric: fix the routes, or relax rp_filter: {exec}sysctl net.ipv4.conf.all.rp_filter=2"
        ),
        ReasonClass::TapNotRead | ReasonClass::QdiscDrop => {
            "the VMM does not read the tap: check that Firecracker is running and attached (tracer doctor)"
                .into()
        }
        _ => format!("check the configuration of {ns} with `tracer doctor`"),
    }
}
