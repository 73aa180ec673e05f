//! Breaking and healing a sandbox: a [`Fault`] in and out, and the nft and link helpers it needs.
use anyhow::{Context as _, Result, anyhow, bail};

use super::{Lab, dnat_rule, split};
use crate::{
    faults::Fault,
    guest,
    sh::{ip, run_in, run_in_with_input, sysctl},
    state,
    topology::{Datapath, ENVD_PORT, TAP_NAME, Topology},
    v2,
};

impl Lab {
    /// Injects a fault into sandbox `i`.
    pub fn break_fault(&mut self, i: usize, fault: Fault) -> Result<()> {
        if self.state.sandboxes[i].faults.contains(&fault) {
            return Ok(());
        }
        let dp = self.datapath(self.state.sandboxes[i].slot);
        if !fault.applies(dp) {
            bail!(
                "{} applies to datapath {:?} only; this slot is {dp:?}",
                fault.name(),
                fault.datapath()
            );
        }
        if fault.needs_second_sandbox() && self.state.sandboxes.len() < 2 {
            bail!(
                "{} needs a second sandbox: `cargo xtask lab up --sandboxes 2`",
                fault.name()
            );
        }
        self.apply(i, fault, true)
            .with_context(|| format!("break {}", fault.name()))?;
        self.state.sandboxes[i].faults.push(fault);
        state::save(&self.state)
    }

    /// Reverts every fault of sandbox `i`, newest first, then waits (bounded) until envd
    /// answers again: a guest whose replies were dropped still holds half-open connections
    /// for a moment, and refuses new ones meanwhile.
    pub fn heal(&mut self, i: usize) -> Result<()> {
        let had = !self.state.sandboxes[i].faults.is_empty();
        while let Some(fault) = self.state.sandboxes[i].faults.pop() {
            self.apply(i, fault, false)
                .with_context(|| format!("heal {}", fault.name()))?;
            state::save(&self.state)?;
        }
        if had {
            crate::testing::wait_for(
                std::time::Duration::from_secs(10),
                std::time::Duration::from_millis(20),
                || self.reachable(i, 1).ok().filter(|r| r.succeeded()),
            );
        }
        Ok(())
    }

    pub(super) fn apply(&mut self, i: usize, fault: Fault, on: bool) -> Result<()> {
        let slot = self.state.sandboxes[i].slot;
        let ns = slot.netns();
        let tap = self.tap_dev();
        let ipt = self.state.config.iptables.iptables();
        let (add, del) = ("-I", "-D");
        let op = if on { add } else { del };
        let ipt_ns = |args: &[&str]| run_in(Some(&ns), ipt, args).map(|_| ());
        let host = self.host();
        match fault {
            Fault::ForwardDrop => ipt_ns(&split(&format!(
                "{op} FORWARD -i eth0 -o {tap} -p tcp -m tcp --dport {ENVD_PORT} -j DROP"
            ))),
            Fault::ReplyDrop => ipt_ns(&split(&format!(
                "{op} FORWARD -i {tap} -o eth0 -p tcp -m tcp --sport {ENVD_PORT} --tcp-flags SYN,ACK SYN,ACK -j DROP"
            ))),
            Fault::NoDnat if self.datapath(slot) == Datapath::V2 => {
                if on {
                    let h = nft_handle(&ns, "inet slot-firewall preroute_nat", "dnat ip to")?;
                    run_in(
                        Some(&ns),
                        "nft",
                        &split(&format!("delete rule inet slot-firewall preroute_nat handle {h}")),
                    )
                    .map(|_| ())
                } else {
                    let rule = format!(
                        "add rule inet slot-firewall preroute_nat {}\n",
                        v2::dnat_rule(slot)
                    );
                    run_in_with_input(Some(&ns), "nft", &["-f", "-"], &rule).map(|_| ())
                }
            }
            Fault::NoDnat => {
                let op = if on { "-D" } else { "-A" };
                ipt_ns(&split(&format!("-t nat {op} PREROUTING {}", dnat_rule(slot))))
            }
            Fault::V2VethNotInSet => {
                let verb = if on { "delete" } else { "add" };
                let text = format!(
                    "{verb} element inet v2-host-firewall v2_veths {{ \"{}\" }}\n",
                    slot.veth()
                );
                run_in_with_input(host, "nft", &["-f", "-"], &text).map(|_| ())
            }
            Fault::V2CidrNotInSet => {
                let verb = if on { "delete" } else { "add" };
                let text = format!(
                    "{verb} element inet v2-host-firewall v2_host_cidrs {{ {}/32 }}\n",
                    slot.host_ip()
                );
                run_in_with_input(host, "nft", &["-f", "-"], &text).map(|_| ())
            }
            Fault::V2HostDrop => {
                let chain = format!("lab-input-{}", slot.0);
                let text = if on {
                    format!(
                        "add chain inet v2-host-firewall {chain} {{ type filter hook input priority filter; policy accept; }}\n\
                         add rule inet v2-host-firewall {chain} iifname \"{}\" tcp sport {ENVD_PORT} counter drop\n",
                        slot.veth()
                    )
                } else {
                    format!("delete chain inet v2-host-firewall {chain}\n")
                };
                let text = if on {
                    text
                } else {
                    format!("flush chain inet v2-host-firewall {chain}\n{text}")
                };
                run_in_with_input(host, "nft", &["-f", "-"], &text).map(|_| ())
            }
            Fault::V2ReplyDrop => slot_firewall_rule(
                &ns,
                "PREROUTE_FILTER",
                &format!("iifname \"{tap}\" tcp sport {ENVD_PORT} drop"),
                on,
            ),
            Fault::V2MangleReplyDrop => slot_firewall_rule(
                &ns,
                "postroute_mangle",
                &format!("oifname \"eth0\" tcp sport {ENVD_PORT} drop"),
                on,
            ),
            Fault::ForwardPolicyDrop => ipt_ns(&["-P", "FORWARD", if on { "DROP" } else { "ACCEPT" }]),
            Fault::UserChainDrop => {
                if on {
                    ipt_ns(&["-N", "LAB-GUARD"])?;
                    ipt_ns(&split(&format!(
                        "-A LAB-GUARD -p tcp -m tcp --dport {ENVD_PORT} -j DROP"
                    )))?;
                    ipt_ns(&["-I", "FORWARD", "-i", "eth0", "-j", "LAB-GUARD"])
                } else {
                    ipt_ns(&["-D", "FORWARD", "-i", "eth0", "-j", "LAB-GUARD"])?;
                    ipt_ns(&["-F", "LAB-GUARD"])?;
                    ipt_ns(&["-X", "LAB-GUARD"])
                }
            }
            Fault::HostInputDrop => run_in(
                host,
                ipt,
                &split(&format!(
                    "{op} INPUT -i {} -p tcp -m tcp --sport {ENVD_PORT} -j DROP",
                    slot.veth()
                )),
            )
            .map(|_| ()),
            Fault::TapDown => ip(
                Some(&ns),
                &["link", "set", TAP_NAME, if on { "down" } else { "up" }],
            )
            .map(|_| ()),
            Fault::TapMissing => {
                if on {
                    self.stop_guest(i)?;
                    ip(Some(&ns), &["link", "del", TAP_NAME]).map(|_| ())
                } else {
                    self.create_tap(&ns)?;
                    self.start_guest(i)
                }
            }
            Fault::NoReader => {
                if on {
                    self.stop_guest(i)?;
                    // The kernel notices a tap lost its reader asynchronously (link watch):
                    // the fault is in place once the carrier is gone, and a bridge has
                    // disabled the port (else the first packets still reach the tap).
                    self.wait_link(Some(&ns), TAP_NAME, "NO-CARRIER")?;
                    if self.state.config.topology == Topology::Bridge {
                        self.wait_link(Some(&ns), TAP_NAME, "state disabled")?;
                    }
                    Ok(())
                } else {
                    self.start_guest(i)
                }
            }
            Fault::GuestNoListener => {
                let sock = self.state.sandboxes[i].api_sock();
                guest::control(&sock, if on { "listener off" } else { "listener on" }).map(|_| ())
            }
            Fault::IpForwardOff => sysctl(&ns, "net.ipv4.ip_forward", if on { "0" } else { "1" }),
            Fault::RpFilter => {
                let v = if on { "1" } else { "0" };
                sysctl(&ns, "net.ipv4.conf.all.rp_filter", v)?;
                sysctl(&ns, "net.ipv4.conf.eth0.rp_filter", v)?;
                let route = format!("{}/32", slot.veth_ip());
                ip(
                    Some(&ns),
                    &["route", if on { "add" } else { "del" }, &route, "dev", tap],
                )
                .map(|_| ())
            }
            Fault::HostRouteMissing => {
                if on {
                    ip(host, &["route", "del", &format!("{}/32", slot.host_ip())]).map(|_| ())
                } else {
                    self.add_host_route(slot, slot)
                }
            }
            Fault::WrongSlotRoute => {
                let other = self.state.sandboxes[if i == 0 { 1 } else { 0 }].slot;
                self.add_host_route(slot, if on { other } else { slot })
            }
            Fault::SandboxVethDown => {
                ip(
                    Some(&ns),
                    &["link", "set", "eth0", if on { "down" } else { "up" }],
                )?;
                if on {
                    // The host's end loses its carrier asynchronously (link watch).
                    self.wait_link(host, &slot.veth(), "NO-CARRIER")
                } else {
                    // Down took the default route with it; the carrier comes back
                    // asynchronously too.
                    let via = slot.veth_ip().to_string();
                    ip(Some(&ns), &["route", "replace", "default", "via", &via])?;
                    self.wait_link(host, &slot.veth(), "LOWER_UP")?;
                    // ARP entries left INCOMPLETE meanwhile retry only after a second.
                    ip(host, &["neigh", "flush", "dev", &slot.veth()]).map(|_| ())
                }
            }
            Fault::HostVethDown => {
                ip(
                    host,
                    &["link", "set", &slot.veth(), if on { "down" } else { "up" }],
                )?;
                if on {
                    Ok(())
                } else {
                    self.wait_link(Some(&ns), "eth0", "LOWER_UP")?;
                    ip(Some(&ns), &["neigh", "flush", "dev", "eth0"])?;
                    self.add_host_route(slot, slot)
                }
            }
            Fault::BlackholeRoute => {
                if on {
                    let dst = format!("{}/32", slot.host_ip());
                    ip(host, &["route", "replace", "blackhole", &dst]).map(|_| ())
                } else {
                    self.add_host_route(slot, slot)
                }
            }
            Fault::ProhibitRule => {
                let dst = format!("{}/32", slot.host_ip());
                let verb = if on { "add" } else { "del" };
                let args = ["rule", verb, "to", &dst, "prohibit", "pref", "100"];
                ip(host, &args).map(|_| ())
            }
            Fault::VmmStopped => self.signal_guest(i, if on { libc::SIGSTOP } else { libc::SIGCONT }),
            Fault::TapQueueFull => {
                if on {
                    ip(Some(&ns), &["link", "set", TAP_NAME, "txqueuelen", "1"])?;
                    self.signal_guest(i, libc::SIGSTOP)
                } else {
                    self.signal_guest(i, libc::SIGCONT)?;
                    ip(Some(&ns), &["link", "set", TAP_NAME, "txqueuelen", "1000"]).map(|_| ())
                }
            }
            Fault::RawReplyDrop => ipt_ns(&split(&format!(
                "-t raw {op} PREROUTING -i {tap} -p tcp -m tcp --sport {ENVD_PORT} -j DROP"
            ))),
            Fault::MangleReplyDrop => ipt_ns(&split(&format!(
                "-t mangle {op} FORWARD -i {tap} -p tcp -m tcp --sport {ENVD_PORT} -j DROP"
            ))),
            Fault::NftOddPriority => {
                if on {
                    let text = format!(
                        "table inet lab-odd {{\n  chain guard {{\n    type filter hook forward priority 7; policy accept;\n    tcp dport {ENVD_PORT} counter drop\n  }}\n}}\n"
                    );
                    run_in_with_input(Some(&ns), "nft", &["-f", "-"], &text).map(|_| ())
                } else {
                    run_in(Some(&ns), "nft", &["delete", "table", "inet", "lab-odd"]).map(|_| ())
                }
            }
            Fault::ReplyRouteUnreachable => {
                let dst = format!("{}/32", slot.veth_ip());
                let verb = if on { "add" } else { "del" };
                ip(Some(&ns), &["route", verb, "unreachable", &dst]).map(|_| ())
            }
            Fault::QdiscDrop => {
                let dev = slot.veth();
                if on {
                    let args = ["qdisc", "add", "dev", &dev, "root", "pfifo", "limit", "0"];
                    run_in(host, "tc", &args).map(|_| ())
                } else {
                    run_in(host, "tc", &["qdisc", "del", "dev", &dev, "root"]).map(|_| ())
                }
            }
            Fault::SlowGuest => {
                let sock = self.state.sandboxes[i].api_sock();
                guest::control(&sock, if on { "delay 80" } else { "delay 0" }).map(|_| ())
            }
            Fault::PreroutingDropNft | Fault::PreroutingDropNftCounter => {
                let (table, stmt) = if fault == Fault::PreroutingDropNft {
                    ("lab-fault", "drop")
                } else {
                    ("lab-fault-counter", "counter drop")
                };
                if on {
                    let text = format!(
                        "table ip {table} {{\n  chain pre {{\n    type filter hook prerouting priority filter; policy accept;\n    tcp dport {ENVD_PORT} {stmt}\n  }}\n}}\n"
                    );
                    run_in_with_input(Some(&ns), "nft", &["-f", "-"], &text).map(|_| ())
                } else {
                    run_in(Some(&ns), "nft", &["delete", "table", "ip", table]).map(|_| ())
                }
            }
        }
    }

    /// Waits (bounded) until `ip -d link show DEV` in `ns` (None: the root namespace)
    /// mentions `needle`.
    fn wait_link(&self, ns: Option<&str>, dev: &str, needle: &str) -> Result<()> {
        crate::testing::wait_for(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(5),
            || {
                ip(ns, &["-d", "link", "show", dev])
                    .is_ok_and(|o| o.contains(needle))
                    .then_some(())
            },
        )
        .ok_or_else(|| {
            anyhow!(
                "{dev} in {} never showed {needle:?}",
                ns.unwrap_or(crate::topology::ROOT_LABEL)
            )
        })
    }
}

/// The handle of the first rule of `chain` (e.g. `inet slot-firewall preroute_nat`) in `ns`
/// whose text contains `needle`.
fn nft_handle(ns: &str, chain: &str, needle: &str) -> Result<u64> {
    let mut args = vec!["-a", "list", "chain"];
    args.extend(chain.split(' '));
    let listing = run_in(Some(ns), "nft", &args)?;
    listing
        .lines()
        .filter(|l| l.contains(needle))
        .find_map(|l| l.rsplit_once("# handle ")?.1.trim().parse().ok())
        .ok_or_else(|| anyhow!("no rule with {needle:?} in {chain} of {ns}"))
}

/// Inserts `rule` at the top of `chain` of the slot firewall in `ns` (no counter, as E2B's
/// rules), or deletes it again by its handle.
fn slot_firewall_rule(ns: &str, chain: &str, rule: &str, on: bool) -> Result<()> {
    if on {
        let text = format!("insert rule inet slot-firewall {chain} {rule}\n");
        return run_in_with_input(Some(ns), "nft", &["-f", "-"], &text).map(|_| ());
    }
    let h = nft_handle(ns, &format!("inet slot-firewall {chain}"), rule)?;
    run_in(
        Some(ns),
        "nft",
        &split(&format!("delete rule inet slot-firewall {chain} handle {h}")),
    )
    .map(|_| ())
}
