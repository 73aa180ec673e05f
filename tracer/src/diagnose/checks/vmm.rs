//! The VMM, its namespace, the tap and /dev/net/tun.
use super::{Ctx, addrs_text, ip_in, ns_words};
use crate::{
    diagnose::{Check, facts::Facts},
    system::netstate::prefix_contains,
};

pub(super) fn vmm_alive(f: &Facts) -> Check {
    let nsl = f.sb.netns.label();
    let c = Check::new("vmm_alive", format!("the VMM process is running in {nsl}")).netns(&nsl);
    let restart =
        "the VMM (Firecracker) exited: its log says why; restart the sandbox (the orchestrator recreates it)";
    match (f.vmm.pid, &f.vmm.proc) {
        (Some(pid), Some(p)) if p.netns_inode != Some(f.sb.netns.inode) => c.problem(
            format!(
                "pid {pid} ({}) runs in another network namespace (inode {}), not in {nsl}",
                p.comm,
                p.netns_inode.map_or("?".into(), |i| i.to_string())
            ),
            "the VMM must run inside the sandbox's namespace (E2B: ip netns exec ns-N firecracker ...); restart the sandbox",
        ),
        (Some(pid), Some(p)) if matches!(p.state, 'T' | 't') => c.problem(
            format!("pid {pid} ({}) is stopped (state {}): it reads nothing from the tap", p.comm, p.state),
            format!("resume it (kill -CONT {pid}) or restart the sandbox"),
        ),
        (Some(pid), Some(p)) => c.ok(format!(
            "pid {pid} ({}) is running (state {}) in {nsl} (/proc/{pid}/ns/net)",
            p.comm, p.state
        )),
        (Some(pid), None) => c.problem(format!("pid {pid}, the sandbox's VMM, is gone"), restart),
        (None, _) => {
            let who = f.sb.id.as_ref().map_or_else(|| format!("in {nsl}"), |id| format!("of sandbox {id}"));
            let seen = f.vmm.last_seen.map_or(String::new(), |p| format!(" (last seen as pid {p})"));
            c.problem(
                format!("no VMM process {who} is running{seen}; its namespace {nsl} is left behind"),
                restart,
            )
        }
    }
}

pub(super) fn netns_exists(f: &Facts) -> Check {
    let ns = &f.sb.netns;
    let c = Check::new(
        "netns_exists",
        format!("the sandbox's network namespace {} exists", ns.label()),
    )
    .netns(ns.label());
    if let Err(e) = &f.ns {
        return c.problem(
            format!("cannot read {}: {e}", ns.label()),
            "the namespace is gone or cannot be entered: restart the sandbox",
        );
    }
    match (&ns.name, &f.netns_file) {
        (Some(n), Some(Ok(i))) if *i == ns.inode => c.ok(format!(
            "{}/{n} is the VMM's namespace (inode {i})",
            crate::system::netns::NETNS_DIR
        )),
        (Some(n), Some(Ok(i))) => c.problem(
            format!(
                "{}/{n} is namespace inode {i}, not the VMM's ({})",
                crate::system::netns::NETNS_DIR,
                ns.inode
            ),
            "the name was reused for another namespace: restart the sandbox",
        ),
        (Some(_), Some(Err(e))) => c.problem(e.clone(), "restart the sandbox"),
        (Some(n), None) => c.problem(format!("{n} was not looked up"), "restart the sandbox"),
        (None, _) => c.warning(
            format!(
                "the VMM's namespace (inode {}) has no name under /var/run/netns",
                ns.inode
            ),
            format!(
                "E2B names them ns-N; reach it with nsenter --net={}",
                ns.path.display()
            ),
        ),
    }
}

pub(super) fn tap_exists(c: &Ctx) -> Check {
    let (tap, nsl) = (&c.tap_name, &c.nsl);
    let check = Check::new("tap_exists", format!("{tap} exists in {nsl}"))
        .netns(nsl)
        .device(Some(tap));
    match c.tap {
        Some(l) => check.ok(format!(
            "{tap} (ifindex {}, {}) lives in {nsl}, not in the root namespace: `ip link` there does not list it; see it with `{} link show {tap}`",
            l.ifindex,
            l.kind.as_deref().unwrap_or("?"),
            c.ip_ns()
        )),
        None => check.problem(
            format!(
                "there is no {tap} in {nsl} (read over netlink inside {nsl}, where the VMM attaches to it; it never lives in the root namespace)"
            ),
            format!(
                "the VMM opens {tap} in {nsl} when it starts: restart the sandbox. Do not create a {tap} in the root namespace: it would not be on this path"
            ),
        ),
    }
}

pub(super) fn tap_up(c: &Ctx) -> Check {
    let (tap, nsl) = (&c.tap_name, &c.nsl);
    let check = Check::new("tap_up", format!("{tap} is up"))
        .netns(nsl)
        .device(Some(tap));
    let Some(l) = c.tap else { return check };
    if l.up {
        check.ok(format!("{tap} in {nsl}: UP, oper state {}", l.oper_state))
    } else {
        check.problem(
            format!("{tap} in {nsl} is DOWN: nothing is sent to the guest, and the route to {} through it is gone", c.guest()),
            format!("{} link set {tap} up", c.ip_ns()),
        )
    }
}

pub(super) fn tap_reader(c: &Ctx) -> Check {
    let (tap, nsl) = (&c.tap_name, &c.nsl);
    let check = Check::new("tap_reader", format!("the VMM reads {tap} (carrier)"))
        .netns(nsl)
        .device(Some(tap));
    let Some(l) = c.tap else { return check };
    let vmm = &c.f.vmm;
    let fds: Vec<&str> = vmm
        .proc
        .iter()
        .flat_map(|p| p.tun_fds.iter())
        .filter(|(_, iff)| iff == tap)
        .map(|(fd, _)| fd.as_str())
        .collect();
    let carrier = if l.carrier { "carrier on" } else { "no carrier" };
    if let (Some(pid), false) = (vmm.pid, fds.is_empty()) {
        return check.ok(format!(
            "pid {pid} holds {tap} open (/dev/net/tun fd {}); {carrier}",
            fds.join(", ")
        ));
    }
    let vmm_words = match (vmm.pid, &vmm.proc) {
        (Some(pid), Some(_)) => format!("the VMM (pid {pid}) holds no /dev/net/tun fd on {tap}"),
        (Some(pid), None) => format!("the VMM (pid {pid}) is gone"),
        (None, _) => "no VMM process is running".into(),
    };
    let fix = format!(
        "restart the sandbox: the VMM attaches to {tap} when it starts, and a tap nobody reads drops every frame"
    );
    if l.carrier {
        check.problem(
            format!("{tap} in {nsl} has carrier, so some process holds it open, but {vmm_words}"),
            fix,
        )
    } else {
        check.problem(
            format!(
                "{tap} in {nsl} has no carrier: no process reads it ({vmm_words}); frames to the guest are dropped and ARP for {} is never answered",
                c.guest()
            ),
            fix,
        )
    }
}

pub(super) fn tun_device(f: &Facts) -> Check {
    let t = &f.tun;
    let c = Check::new("tun_device", "/dev/net/tun exists with sane permissions");
    let fix =
        "mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun (in the VMM's root when it runs in a jail)";
    let s = match &t.stat {
        Ok(s) => s,
        Err(e) => return c.problem(format!("{}: {e}", t.path), fix),
    };
    let what = format!(
        "{}: {}, {}:{}, mode {:04o}, owner {}:{}",
        t.path,
        if s.is_char {
            "character device"
        } else {
            "not a character device"
        },
        s.major,
        s.minor,
        s.mode,
        s.uid,
        s.gid
    );
    if !s.is_char || (s.major, s.minor) != (10, 200) {
        return c.problem(format!("{what} (expected character device 10:200)"), fix);
    }
    let uid = f.vmm.proc.as_ref().and_then(|p| p.uid);
    let can_open = match uid {
        Some(0) => true,
        Some(u) if u == s.uid => s.mode & 0o600 == 0o600,
        _ => s.mode & 0o006 == 0o006,
    };
    match (can_open, uid) {
        (true, _) => c.ok(what),
        (false, Some(u)) => c.problem(format!("{what}: the VMM runs as uid {u} and cannot open it"), fix),
        // Who must open it is unknown without a VMM: root always can.
        (false, None) => c.ok(format!("{what} (no VMM running whose access to judge)")),
    }
}

/// A tap of the same name outside the sandbox's namespace: on this path it does nothing, and
/// it is what the classic misdiagnosis ("no tap0", then `ip tuntap add tap0` on the host)
/// leaves behind.
pub(super) fn stray_tap(c: &Ctx) -> Check {
    let tap = &c.tap_name;
    let check = Check::new("stray_tap", format!("no stray {tap} outside {}", c.nsl)).device(Some(tap));
    let mut places = Vec::new();
    if let Some(h) = &c.f.host
        && let Ok(hf) = &h.facts
        && h.ns.inode != c.f.sb.netns.inode
    {
        places.push((
            ns_words(&h.ns, c.f.own_inode),
            ip_in(&h.ns, c.f.own_inode),
            hf.snap.link(tap),
        ));
    }
    if let Some(o) = &c.f.own {
        let l = o.links.iter().find(|l| &l.name == tap);
        places.push((ns_words(&o.ns, c.f.own_inode), "ip".into(), l));
    }
    let stray: Vec<_> = places
        .iter()
        .filter_map(|(w, ip, l)| Some((w, ip, (*l)?)))
        .collect();
    let looked: Vec<&str> = places.iter().map(|(w, _, _)| w.as_str()).collect();
    match stray.first() {
        None => check.ok(format!("no {tap} in {}", looked.join(" or "))),
        Some((w, ip, l)) => check.warning(
            format!(
                "a {tap} also exists in {w} (ifindex {}): it is not this sandbox's tap (that one lives in {}) and carries none of its traffic",
                l.ifindex, c.nsl
            ),
            format!("if it was created by hand to fix a \"missing\" tap, remove it: {ip} link del {tap}"),
        ),
    }
}

pub(super) fn tap_addr(c: &Ctx) -> Option<Check> {
    let dev = c.guest_dev?;
    let guest = c.guest();
    let check = Check::new(
        "tap_addr",
        format!("{} carries the guest's gateway address", dev.name),
    )
    .netns(&c.nsl)
    .device(Some(&dev.name));
    let addrs = c.ns.snap.addrs_of(dev.ifindex);
    let fix = format!("{} addr add 169.254.0.22/30 dev {}", c.ip_ns(), dev.name);
    if addrs.iter().any(|a| a.addr == guest) {
        return Some(check.problem(
            format!(
                "{} in {} carries the guest's own address {guest}",
                dev.name, c.nsl
            ),
            format!(
                "remove it ({} addr del {guest}/32 dev {}) and give it the gateway's",
                c.ip_ns(),
                dev.name
            ),
        ));
    }
    Some(
        match addrs.iter().find(|a| prefix_contains(a.addr, a.prefix, guest)) {
            Some(a) => check.ok(format!(
                "{} in {} has {}/{}, the gateway of guest {guest}",
                dev.name, c.nsl, a.addr, a.prefix
            )),
            None => check.problem(
                format!(
                    "{} in {} has no address on the guest's subnet ({guest}): it has {}",
                    dev.name,
                    c.nsl,
                    addrs_text(&c.ns.snap, dev)
                ),
                fix,
            ),
        },
    )
}
