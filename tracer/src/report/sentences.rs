//! The sentences people read, written from the typed verdict: the summary paragraph, the
//! likely fix, the detail of each finding and why a rule is not named. Every sentence states
//! what the verdict's fields (and so the events) show, nothing more.
use tracer_model::{
    journey::Journey,
    path::ExpectedPath,
    reason::ReasonClass,
    rule::{RuleName, RuleNote, RuleText},
    verdict::{Direction, Finding, FindingKind, Outcome, ResetBy, UnreachableKind, Verdict},
};

/// What a sentence is written from.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub journey: &'a Journey,
    pub verdict: &'a Verdict,
    /// The rule rule naming found for a netfilter drop.
    pub rule: Option<&'a RuleName>,
    pub path: Option<&'a ExpectedPath>,
}

impl Facts<'_> {
    /// The table of a drop: as rule naming found it, else the standard table of the window.
    pub fn table(&self) -> Option<String> {
        let from_rule = self.rule.and_then(|r| r.table.clone());
        from_rule.or_else(|| self.verdict.drop.as_ref().and_then(|d| d.table.clone()))
    }
}

/// One plain sentence (or two) for people.
pub fn summary(f: Facts<'_>) -> String {
    let v = f.verdict;
    let target = f
        .journey
        .target
        .map(|(a, p)| format!("{a}:{p}"))
        .unwrap_or_else(|| "envd".into());
    let mut s = match v.outcome {
        Outcome::Connected => return "connected: the SYN-ACK reached the client's socket".into(),
        Outcome::Dropped => dropped(f, &target),
        Outcome::Reset => reset(v, &target),
        Outcome::NoReply => format!(
            "the SYN to {target} was handed to the VMM through the tap, and nothing came back: the guest is silent"
        ),
        Outcome::Unreachable => unreachable(v),
        Outcome::Unknown => {
            let last = v.failing_hop.and_then(|i| f.journey.hops.get(i)).map(|(_, h)| h);
            match last {
                Some(h) => format!(
                    "the SYN to {target} was last seen in {} and then vanished without a drop event",
                    place(&h.netns_name, &h.device)
                ),
                None => format!("nothing of the attempt to {target} was seen on the path"),
            }
        }
    };
    // A cause found on the way (no DNAT, wrong route) leads; what happened to the packet follows.
    let (causes, rest): (Vec<&Finding>, Vec<&Finding>) = v.findings.iter().partition(|x| x.kind.is_cause());
    if !causes.is_empty() {
        let lead: Vec<String> = causes.iter().map(|x| finding_detail(x, f.path)).collect();
        s = format!("{}; as a result, {s}", capitalize(&lead.join("; ")));
    }
    for x in rest {
        s += "; ";
        s += &finding_detail(x, f.path);
    }
    s
}

fn dropped(f: Facts<'_>, target: &str) -> String {
    let Some(d) = f.verdict.drop.as_ref() else {
        return format!("the SYN to {target} was dropped");
    };
    let dir = match d.direction {
        Direction::Request => "the SYN to",
        Direction::Reply => "the reply from",
    };
    let dev = match (&d.device, &d.out_device) {
        (Some(i), Some(o)) => Some(format!("{i} → {o}")),
        (i, _) => i.clone(),
    };
    let mut s = format!("{dir} {target} was dropped in {}", place(&d.netns, &dev));
    if let Some(hook) = d.hook {
        s += &format!(", {} hook", hook.name());
    }
    if let Some(t) = f.table() {
        s += &format!(", {t} table");
    }
    if let Some(c) = f.rule.and_then(|r| r.chain.as_ref()) {
        s += &format!(", chain {c}");
    }
    if let Some(r) = f.rule.and_then(|r| r.rule.as_ref()) {
        s += &format!(", by rule `{}`", r.render());
    }
    s += &format!(" (kernel reason {}", d.reason);
    if let Some(func) = &d.function {
        s += &format!(" in {func}");
    }
    s + ")"
}

fn reset(v: &Verdict, target: &str) -> String {
    let Some(r) = v.reset.as_ref() else {
        return format!("a RST answered the SYN to {target}");
    };
    match r.by {
        ResetBy::Guest => format!(
            "the guest answered the SYN to {target} with RST: nothing listens on the port inside the VM"
        ),
        ResetBy::Stack => format!(
            "the SYN to {target} was answered with RST by the kernel of {}: it was delivered locally there, where nothing listens",
            r.netns.as_deref().unwrap_or("?")
        ),
        ResetBy::Peer => format!("a RST came back from {}", place(&r.netns, &r.device)),
    }
}

fn unreachable(v: &Verdict) -> String {
    let u = v
        .unreachable
        .as_ref()
        .expect("an unreachable verdict has its facts");
    match u.kind {
        UnreachableKind::Neighbour => format!(
            "ARP for {} on {} was never answered (neighbour {}): nobody reads the tap, or the guest is down",
            u.address,
            place(&u.netns, &u.device),
            u.state.as_deref().unwrap_or("?")
        ),
        UnreachableKind::NoRoute => format!(
            "no route to {} in {}",
            u.address,
            u.netns.as_deref().unwrap_or("?")
        ),
    }
}

fn place(netns: &Option<String>, device: &Option<String>) -> String {
    match (netns, device) {
        (Some(n), Some(d)) => format!("{n}, device {d}"),
        (Some(n), None) => n.clone(),
        (None, Some(d)) => format!("device {d}"),
        (None, None) => "an unknown place".into(),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// What a finding shows, in one clause.
pub fn finding_detail(f: &Finding, path: Option<&ExpectedPath>) -> String {
    let (host_ip, host_veth, sandbox_ns, guest_ip, ns_veth, guest_dev) = match path {
        Some(p) => (
            p.host_ip.to_string(),
            p.host_veth.clone(),
            p.sandbox_ns.label(),
            p.guest_ip.to_string(),
            p.ns_veth.clone(),
            p.guest_side_dev().to_string(),
        ),
        None => Default::default(),
    };
    let addr = f.address.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
    match f.kind {
        FindingKind::WrongRoute => format!(
            "the host sent the SYN for {host_ip} out {}, not {host_veth} (the route points at another sandbox's veth)",
            f.device.as_deref().unwrap_or("?")
        ),
        FindingKind::OtherNamespace => format!(
            "the SYN landed in {}, not in the sandbox's {sandbox_ns}",
            f.netns.as_deref().unwrap_or("?")
        ),
        FindingKind::NoDnat => format!(
            "the SYN to {host_ip} left the nat table of {sandbox_ns} unchanged: no DNAT to {guest_ip}"
        ),
        FindingKind::RoutedBack => {
            format!("{sandbox_ns} routed the SYN for {addr} back out {ns_veth} instead of to {guest_dev}")
        }
        FindingKind::RoutingLoop => format!(
            "the SYN circled between namespaces until its TTL ran out (TTL {} seen)",
            f.ttl.unwrap_or(0)
        ),
    }
}

/// Why a rule is not named, or how it was.
pub fn rule_note(n: &RuleNote) -> String {
    match n {
        RuleNote::NoCounter(c) => format!(
            "the nft chain {} {} {} (priority {}) drops here, but its rules have no counter: the exact rule cannot be known without a change; rerun with --nft-trace",
            c.family, c.table, c.chain, c.priority
        ),
        RuleNote::OneOf(names) => format!(
            "one of the nft chains {} dropped it; rerun with --nft-trace to name the rule",
            names.join(", ")
        ),
        RuleNote::NftTrace => "named with --nft-trace (a temporary trace table, removed again)".into(),
    }
}

/// The likely fix, in one line.
pub fn fix(f: Facts<'_>) -> Option<String> {
    let v = f.verdict;
    if v.outcome == Outcome::Connected {
        return None;
    }
    if let Some(hint) = v.findings.iter().find_map(|x| finding_fix(x, f.path)) {
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
            "the guest received the SYN but did not answer: check envd and the guest's network inside the VM"
                .into(),
        ),
        Outcome::Unreachable => Some(match v.unreachable.as_ref()?.kind {
            UnreachableKind::Neighbour => "check that the VMM is running and reads the tap (tracer doctor): an unread tap never answers ARP".into(),
            UnreachableKind::NoRoute => "add the missing route (tracer doctor shows the expected one)".into(),
        }),
        Outcome::Connected | Outcome::Unknown => None,
    }
}

fn finding_fix(f: &Finding, path: Option<&ExpectedPath>) -> Option<String> {
    let p = path?;
    match f.kind {
        FindingKind::WrongRoute => Some(format!(
            "fix the host route: ip route replace {}/32 via {} dev {}",
            p.host_ip,
            p.ns_veth_ip.map(|a| a.to_string()).unwrap_or_default(),
            p.host_veth
        )),
        FindingKind::NoDnat => Some(format!(
            "restore the DNAT: ip netns exec {} iptables -t nat -A PREROUTING -d {}/32 -i {} -j DNAT --to-destination {}",
            p.sandbox_ns.label(),
            p.host_ip,
            p.ns_veth,
            p.guest_ip
        )),
        _ => None,
    }
}

fn drop_fix(f: Facts<'_>, class: ReasonClass, ns: &str) -> String {
    let rule = f.rule;
    match class {
        ReasonClass::Netfilter => match rule.and_then(|r| r.rule.as_ref()) {
            Some(RuleText::Iptables(text)) => format!(
                "remove or narrow that rule: ip netns exec {ns} iptables -t {} -D {}",
                f.table().unwrap_or_else(|| "filter".into()),
                text.strip_prefix("-A ").unwrap_or(text)
            ),
            Some(RuleText::Policy { chain, .. }) => format!(
                "accept envd traffic before the policy applies, or change it: ip netns exec {ns} iptables -P {chain} ACCEPT"
            ),
            Some(RuleText::NftPolicy { chain, .. }) => format!(
                "accept envd traffic before the policy applies, or change it: ip netns exec {ns} nft chain {} {chain} '{{ policy accept; }}'",
                f.table().unwrap_or_else(|| "?".into())
            ),
            Some(RuleText::Nft { handle, .. }) => format!(
                "delete that rule: ip netns exec {ns} nft delete rule {} {} handle {handle}",
                f.table().unwrap_or_else(|| "?".into()),
                rule.and_then(|r| r.chain.clone()).unwrap_or_else(|| "?".into())
            ),
            None => format!(
                "find the dropping rule: ip netns exec {ns} nft list ruleset (or rerun with --nft-trace)"
            ),
        },
        ReasonClass::RpFilter => format!(
            "the return path is asymmetric: fix the routes, or relax rp_filter: ip netns exec {ns} sysctl net.ipv4.conf.all.rp_filter=2"
        ),
        ReasonClass::TapNotRead | ReasonClass::QdiscDrop => {
            "the VMM does not read the tap: check that Firecracker is running and attached (tracer doctor)"
                .into()
        }
        _ => format!("check the configuration of {ns} with `tracer doctor`"),
    }
}

#[cfg(test)]
mod tests {
    use tracer_model::{
        fixtures::{hop, nf, path, syn, syn_dnat},
        hook::Hook,
        hop::HopKind,
        journey::{Correlator, Timing},
        reason::DropReason,
        verdict::decide,
    };

    use super::*;

    fn forward_drop() -> Journey {
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(hop(
            1,
            "e2b-host",
            "veth-1",
            HopKind::Tcx { ingress: false },
            syn(),
        ));
        let mut nf_hop = hop(2, "ns-1", "eth0", nf(Hook::Forward, 3), syn_dnat());
        if let HopKind::Netfilter { in_dev, out_dev, .. } = &mut nf_hop.kind {
            *in_dev = Some("eth0".into());
            *out_dev = Some("tap0".into());
        }
        c.push(nf_hop);
        let mut d = hop(
            3,
            "ns-1",
            "eth0",
            HopKind::Drop {
                reason: DropReason::new("NETFILTER_DROP"),
            },
            syn_dnat(),
        );
        d.function = Some("nft_do_chain".into());
        c.push(d);
        c.take_all().remove(0)
    }

    #[test]
    fn a_forward_drop_reads_like_the_demo() {
        let j = forward_drop();
        let p = path();
        let v = decide(&j, Some(&p), &|_, _| None);
        let rule = RuleName {
            table: Some("filter".into()),
            chain: Some("FORWARD".into()),
            rule: Some(RuleText::Iptables(
                "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP".into(),
            )),
            note: None,
        };
        let f = Facts {
            journey: &j,
            verdict: &v,
            rule: Some(&rule),
            path: Some(&p),
        };
        assert_eq!(
            summary(f),
            "the SYN to 10.11.0.1:49983 was dropped in ns-1, device eth0 → tap0, FORWARD hook, filter table, chain FORWARD, by rule `-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP` (kernel reason NETFILTER_DROP in nft_do_chain)"
        );
        assert_eq!(
            fix(f).unwrap(),
            "remove or narrow that rule: ip netns exec ns-1 iptables -t filter -D FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP"
        );
        // Without the rule: the table comes from the priority window, the fix from nft.
        let f = Facts { rule: None, ..f };
        assert!(
            summary(f).contains("FORWARD hook, filter table (kernel reason"),
            "{}",
            summary(f)
        );
        assert!(fix(f).unwrap().contains("--nft-trace"));
    }

    #[test]
    fn a_missing_dnat_leads_and_its_fix_restores_it() {
        let p = path();
        let mut c = Correlator::new(&[49983], Timing::default());
        c.push(hop(1, "ns-1", "eth0", nf(Hook::Prerouting, 8), syn()));
        let j = c.take_all().remove(0);
        let v = decide(&j, Some(&p), &|_, _| None);
        let f = Facts {
            journey: &j,
            verdict: &v,
            rule: None,
            path: Some(&p),
        };
        assert!(
            summary(f).starts_with(
                "The SYN to 10.11.0.1 left the nat table of ns-1 unchanged: no DNAT to 169.254.0.21; as a result,"
            ),
            "{}",
            summary(f)
        );
        assert_eq!(
            fix(f).unwrap(),
            "restore the DNAT: ip netns exec ns-1 iptables -t nat -A PREROUTING -d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21"
        );
    }
}
