//! The lab's orchestrator side: `e2b-host`, or the root namespace ([`crate::HostNs::Root`], only
//! inside the kernel-matrix VM): its namespace, the routes to the host IPs, E2B's host rules,
//! and what the root-host teardown takes out again.
use std::fs;

use anyhow::Result;

use super::{Lab, split, teardown::netns_inode};
use crate::{
    faults::Fault,
    sh::{ip, run_in, run_in_with_input, sysctl_in},
    topology::{
        Datapath, KERNEL_MATRIX_TOKEN, ORCHESTRATOR_IN_SANDBOX_IP, PROXY_OTHER_PORT, PROXY_REDIRECTS,
        SERVICE_REDIRECTS, Slot, UPLINK,
    },
    v2,
};

impl Lab {
    pub(super) fn create_host(&mut self) -> Result<()> {
        let host = self.host();
        if let Some(ns) = host {
            ip(None, &["netns", "add", ns])?;
        }
        ip(host, &["link", "set", "lo", "up"])?;
        // As on an E2B host (forwarding serves the sandboxes' internet egress).
        sysctl_in(host, "net.ipv4.ip_forward", "1")?;
        if self.state.config.network.has_v2() {
            run_in_with_input(host, "nft", &["-f", "-"], &v2::host_firewall())?;
        }
        Ok(())
    }

    /// Route to `slot`'s host IP through `via`'s veth (via ≠ slot only for a slot mix-up).
    pub(super) fn add_host_route(&self, slot: Slot, via: Slot) -> Result<()> {
        ip(
            self.host(),
            &[
                "route",
                "replace",
                &format!("{}/32", slot.host_ip()),
                "via",
                &via.peer_ip().to_string(),
                "dev",
                &via.veth(),
            ],
        )
        .map(|_| ())
    }

    /// E2B's rules on the host side: FORWARD accepts to and from the uplink (iptables, both
    /// datapaths); v1: the egress REDIRECTs and masquerading in iptables; v2: the slot's veth
    /// and host IP in the sets of `inet v2-host-firewall`, whose rules do the same.
    pub(super) fn host_rules(&self, slot: Slot) -> Result<()> {
        if self.datapath(slot) == Datapath::V2 {
            let (veth, host_ip) = (slot.veth(), slot.host_ip());
            let elements = format!(
                "add element inet v2-host-firewall v2_veths {{ \"{veth}\" }}\n\
                 add element inet v2-host-firewall v2_host_cidrs {{ {host_ip}/32 }}\n"
            );
            run_in_with_input(self.host(), "nft", &["-f", "-"], &elements)?;
        }
        run_in_with_input(
            self.host(),
            self.state.config.iptables.restore(),
            &["--noflush"],
            &restore_text(&self.host_iptables(slot)),
        )
        .map(|_| ())
    }

    /// The iptables rules of [`Lab::host_rules`]: (table, rule as `iptables-save` prints it,
    /// without `-A`).
    pub(super) fn host_iptables(&self, slot: Slot) -> Vec<(&'static str, String)> {
        let (veth, host_ip) = (slot.veth(), slot.host_ip());
        let mut rules = vec![
            ("filter", format!("FORWARD -i {veth} -o {UPLINK} -j ACCEPT")),
            ("filter", format!("FORWARD -i {UPLINK} -o {veth} -j ACCEPT")),
        ];
        if self.datapath(slot) == Datapath::V1 {
            for (dport, to) in SERVICE_REDIRECTS {
                rules.push((
                    "nat",
                    format!(
                        "PREROUTING -d {ORCHESTRATOR_IN_SANDBOX_IP}/32 -i {veth} -p tcp -m tcp --dport {dport} -j REDIRECT --to-ports {to}"
                    ),
                ));
            }
            for (dport, to) in PROXY_REDIRECTS {
                rules.push((
                    "nat",
                    format!("PREROUTING -i {veth} -p tcp -m tcp --dport {dport} -j REDIRECT --to-ports {to}"),
                ));
            }
            rules.push((
                "nat",
                format!("PREROUTING -i {veth} -p tcp -j REDIRECT --to-ports {PROXY_OTHER_PORT}"),
            ));
            rules.push((
                "nat",
                format!("POSTROUTING -s {host_ip}/32 -o {UPLINK} -j MASQUERADE"),
            ));
        }
        rules
    }

    /// Root-host teardown, first step: the faults whose traces would outlive the sandboxes'
    /// namespaces in the root namespace (rules, routes not via a veth, policy rules) are
    /// reverted. Everything else on the host side goes with the veths.
    pub(super) fn revert_root_faults(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for i in 0..self.state.sandboxes.len() {
            let faults = std::mem::take(&mut self.state.sandboxes[i].faults);
            let slot = self.state.sandboxes[i].slot;
            for fault in faults.into_iter().rev() {
                let reverted = match fault {
                    Fault::HostInputDrop | Fault::ProhibitRule | Fault::V2HostDrop => {
                        self.apply(i, fault, false)
                    }
                    Fault::BlackholeRoute => {
                        ip(None, &["route", "del", &format!("{}/32", slot.host_ip())]).map(|_| ())
                    }
                    _ => Ok(()),
                };
                if let Err(e) = reverted {
                    errors.push(format!("heal {}: {e:#}", fault.name()));
                }
            }
        }
        errors
    }

    /// Root-host teardown, last step (the sandboxes' namespaces, and with them the veths and
    /// their routes, are gone): E2B's host rules, the v2 host firewall, the forwarding switch.
    pub(super) fn clean_root_host(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let ipt = self.state.config.iptables.iptables();
        for sb in &self.state.sandboxes {
            for (table, rule) in self.host_iptables(sb.slot) {
                let rule = split(&rule);
                let with = |op: &'static str| [&["-t", table, op][..], &rule].concat();
                // A rule never added (a build that failed half-way) is not an error.
                if run_in(None, ipt, &with("-C")).is_ok()
                    && let Err(e) = run_in(None, ipt, &with("-D"))
                {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if self.state.config.network.has_v2()
            && run_in(None, "nft", &["list", "table", "inet", "v2-host-firewall"]).is_ok()
            && let Err(e) = run_in(None, "nft", &["delete", "table", "inet", "v2-host-firewall"])
        {
            errors.push(format!("{e:#}"));
        }
        if let Some(v) = &self.state.root_ip_forward
            && let Err(e) = sysctl_in(None, "net.ipv4.ip_forward", v)
        {
            errors.push(format!("{e:#}"));
        }
        errors
    }
}

/// Why the lab's root-host mode may not run here (None: it may). It changes the root network
/// namespace, so it runs only inside the kernel-matrix VM: the VM's kernel command line carries
/// [`KERNEL_MATRIX_TOKEN`], the VM has no network hardware (nothing can leave it), and the lab
/// must run in that root namespace itself.
pub fn root_host_refusal() -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut hardware: Vec<String> = fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    hardware.sort();
    let in_root =
        netns_inode("/proc/self/ns/net").is_some_and(|own| netns_inode("/proc/1/ns/net") == Some(own));
    refusal(&cmdline, &hardware, in_root)
}

fn refusal(cmdline: &str, hardware: &[String], in_root: bool) -> Option<String> {
    // The kernel's own parameters end at `--` (the rest is the VM's command).
    let marked = cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .any(|w| w == KERNEL_MATRIX_TOKEN);
    let why = if !marked {
        format!("the kernel command line lacks {KERNEL_MATRIX_TOKEN}")
    } else if !hardware.is_empty() {
        format!(
            "this machine has network hardware ({}), so a packet could leave it",
            hardware.join(", ")
        )
    } else if !in_root {
        "this process is not in the root network namespace".into()
    } else {
        return None;
    };
    Some(format!(
        "the lab's root-host mode changes the root network namespace (veths, routes, firewall rules), so it runs only inside the kernel-matrix VM (cargo xtask test --kernel 6.12 --root-host): {why}"
    ))
}

/// iptables-restore input for `rules` ((table, rule without `-A`)), table by table.
fn restore_text(rules: &[(&str, String)]) -> String {
    let mut text = String::new();
    for table in ["filter", "nat"] {
        let mine: Vec<&String> = rules
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, r)| r)
            .collect();
        if !mine.is_empty() {
            text += &format!("*{table}\n");
            for r in mine {
                text += &format!("-A {r}\n");
            }
            text += "COMMIT\n";
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_host_only_inside_the_kernel_matrix_vm() {
        let vm = format!("console=ttyS0 quiet {KERNEL_MATRIX_TOKEN} -- /xtask kernel-selftest");
        assert_eq!(refusal(&vm, &[], true), None);
        let why = |cmdline: &str, hw: &[&str], in_root| {
            let hw: Vec<String> = hw.iter().map(|s| s.to_string()).collect();
            refusal(cmdline, &hw, in_root).expect("refused")
        };
        assert!(why("console=ttyS0 quiet", &[], true).contains(&format!("lacks {KERNEL_MATRIX_TOKEN}")));
        // The token must be the kernel's, not an argument of the VM's command.
        let smuggled = format!("console=ttyS0 -- /bin/x {KERNEL_MATRIX_TOKEN}");
        assert!(why(&smuggled, &[], true).contains("lacks"));
        assert!(why(&vm, &["eth0"], true).contains("network hardware (eth0)"));
        assert!(why(&vm, &[], false).contains("not in the root network namespace"));
        for w in [why("", &[], true), why(&vm, &["eth0"], true)] {
            assert!(w.starts_with("the lab's root-host mode changes the root network namespace"));
            assert!(!w.contains('\n'));
        }
    }

    #[test]
    fn host_rules_read_like_iptables_restore() {
        let rules = [
            (
                "nat",
                "PREROUTING -i veth-1 -p tcp -j REDIRECT --to-ports 5018".to_string(),
            ),
            ("filter", "FORWARD -i veth-1 -o uplink0 -j ACCEPT".to_string()),
        ];
        assert_eq!(
            restore_text(&rules),
            "*filter\n-A FORWARD -i veth-1 -o uplink0 -j ACCEPT\nCOMMIT\n*nat\n-A PREROUTING -i veth-1 -p tcp -j REDIRECT --to-ports 5018\nCOMMIT\n"
        );
    }
}
