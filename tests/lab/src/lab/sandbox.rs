//! Bringing up a sandbox: its namespace, veth pair, tap, routes and E2B's rules inside it.
use anyhow::Result;

use super::Lab;
use crate::{
    sh::{ip, run_in_with_input, sysctl},
    topology::{
        BRIDGE_NAME, Datapath, GUEST_IP, LAB_ALIAS, Slot, TAP_IP, TAP_MAC, TAP_NAME, TAP_PREFIX, Topology,
    },
    v2,
};

impl Lab {
    pub(super) fn create_sandbox(&mut self, i: usize) -> Result<()> {
        let sb = self.state.sandboxes[i].clone();
        let (slot, ns, veth) = (sb.slot, sb.slot.netns(), sb.slot.veth());
        let nsr = Some(ns.as_str());
        ip(None, &["netns", "add", &ns])?;
        ip(nsr, &["link", "set", "lo", "up"])?;
        // Created directly in both namespaces: nothing appears in the root namespace unless it
        // is the host side (HostNs::Root).
        let host = self.host();
        ip(
            host,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        ip(nsr, &["link", "set", "eth0", "alias", LAB_ALIAS])?;
        ip(
            host,
            &["addr", "add", &format!("{}/31", slot.veth_ip()), "dev", &veth],
        )?;
        ip(host, &["link", "set", &veth, "up"])?;
        ip(
            nsr,
            &["addr", "add", &format!("{}/31", slot.peer_ip()), "dev", "eth0"],
        )?;
        ip(nsr, &["link", "set", "eth0", "up"])?;
        self.create_tap(&ns)?;
        ip(
            nsr,
            &["route", "add", "default", "via", &slot.veth_ip().to_string()],
        )?;
        self.add_host_route(slot, slot)?;
        sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        self.sandbox_rules(slot)?;
        self.host_rules(slot)
    }

    /// tap0 (persistent, as E2B creates it before Firecracker opens it), on a bridge or not.
    pub(super) fn create_tap(&self, ns: &str) -> Result<()> {
        let nsr = Some(ns);
        ip(nsr, &["tuntap", "add", "dev", TAP_NAME, "mode", "tap"])?;
        ip(nsr, &["link", "set", TAP_NAME, "address", TAP_MAC])?;
        let addr = format!("{TAP_IP}/{TAP_PREFIX}");
        match self.state.config.topology {
            Topology::E2b => ip(nsr, &["addr", "add", &addr, "dev", TAP_NAME])?,
            Topology::Bridge => {
                if ip(nsr, &["link", "show", BRIDGE_NAME]).is_err() {
                    ip(nsr, &["link", "add", BRIDGE_NAME, "type", "bridge"])?;
                    ip(nsr, &["link", "set", BRIDGE_NAME, "address", TAP_MAC])?;
                    ip(nsr, &["addr", "add", &addr, "dev", BRIDGE_NAME])?;
                    ip(nsr, &["link", "set", BRIDGE_NAME, "up"])?;
                }
                ip(nsr, &["link", "set", TAP_NAME, "master", BRIDGE_NAME])?
            }
        };
        ip(nsr, &["link", "set", TAP_NAME, "up"]).map(|_| ())
    }

    /// E2B's rules inside the sandbox namespace: the slot firewall (nftables), and the NAT:
    /// v1 with iptables, v2 as chains of the slot firewall.
    fn sandbox_rules(&self, slot: Slot) -> Result<()> {
        let ns = slot.netns();
        if self.datapath(slot) == Datapath::V1 {
            let rules = format!(
                "*nat\n-A PREROUTING {}\n-A POSTROUTING {}\nCOMMIT\n",
                dnat_rule(slot),
                snat_rule(slot)
            );
            run_in_with_input(
                Some(&ns),
                self.state.config.iptables.restore(),
                &["--noflush"],
                &rules,
            )?;
        }
        let tap = self.tap_dev();
        let mut firewall = format!(
            "table inet slot-firewall {{
  chain PREROUTE_FILTER {{
    type filter hook prerouting priority -150; policy accept;
    iifname \"{tap}\" ct state established,related accept
    iifname \"{tap}\" ip daddr {{ 10.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 }} drop
  }}
"
        );
        if self.datapath(slot) == Datapath::V2 {
            firewall += &v2::slot_chains(slot);
        }
        firewall += "}\n";
        run_in_with_input(Some(&ns), "nft", &["-f", "-"], &firewall).map(|_| ())
    }
}

/// `-d <hostIP>/32 -i eth0 -j DNAT --to-destination 169.254.0.21`, as iptables-save prints it.
pub fn dnat_rule(slot: Slot) -> String {
    format!(
        "-d {}/32 -i eth0 -j DNAT --to-destination {GUEST_IP}",
        slot.host_ip()
    )
}

pub fn snat_rule(slot: Slot) -> String {
    format!("-s {GUEST_IP}/32 -o eth0 -j SNAT --to-source {}", slot.host_ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_like_iptables_save() {
        assert_eq!(
            dnat_rule(Slot(1)),
            "-d 10.11.0.1/32 -i eth0 -j DNAT --to-destination 169.254.0.21"
        );
        assert_eq!(
            snat_rule(Slot(300)),
            "-s 169.254.0.21/32 -o eth0 -j SNAT --to-source 10.11.1.44"
        );
    }
}
