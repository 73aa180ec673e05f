//! E2B's network v2 (`packages/orchestrator/pkg/sandbox/network/v2/`) as the lab writes it:
//! the host side's `inet v2-host-firewall`, and the chains v2 adds to each slot's
//! `inet slot-firewall`, as nft text.
use crate::topology::{
    GUEST_IP, ORCHESTRATOR_IN_SANDBOX_IP, PROXY_OTHER_PORT, PROXY_REDIRECTS, SERVICE_REDIRECTS, Slot, UPLINK,
};

/// E2B v2's `inet v2-host-firewall` (network/v2/host_firewall.go), with the lab's uplink name.
/// The lab adds `counter` to the REDIRECTs so a test can show they never match envd traffic.
pub fn host_firewall() -> String {
    let mut pre = String::new();
    for (dport, to) in SERVICE_REDIRECTS {
        pre += &format!(
            "    iifname @v2_veths ip daddr {ORCHESTRATOR_IN_SANDBOX_IP} tcp dport {dport} counter redirect to :{to}\n"
        );
    }
    for (dport, to) in PROXY_REDIRECTS {
        pre += &format!("    iifname @v2_veths tcp dport {dport} counter redirect to :{to}\n");
    }
    pre += &format!(
        "    iifname @v2_veths tcp dport != {{ 80, 111, 443, 2049 }} counter redirect to :{PROXY_OTHER_PORT}\n"
    );
    format!(
        "table inet v2-host-firewall {{
  set v2_veths {{ type ifname; }}
  set v2_host_cidrs {{ type ipv4_addr; flags interval; }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname @v2_veths oifname \"{UPLINK}\" accept
    iifname \"{UPLINK}\" oifname @v2_veths ct state established,related accept
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{pre}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @v2_host_cidrs oifname \"{UPLINK}\" masquerade
  }}
}}
"
    )
}

/// The chains v2 adds to the slot firewall of `slot` (inside its `table inet slot-firewall`).
pub fn slot_chains(slot: Slot) -> String {
    format!("{}\n{}\n{}\n", dnat_chain(slot), snat_chain(slot), mangle_chain())
}

/// The class the lab's v2 slots stamp: CS1 (8, the Scavenger class E2B's config suggests).
/// E2B's `SANDBOX_EGRESS_DSCP` defaults to 0, which leaves `postroute_mangle` empty; the lab
/// sets a class so the chain holds the rule a node that marks egress has.
pub const EGRESS_DSCP: u8 = 8;

/// E2B v2's DNAT (network/v2/ns_nat.go): a chain of the slot firewall.
fn dnat_chain(slot: Slot) -> String {
    format!(
        "  chain preroute_nat {{\n    type nat hook prerouting priority dstnat; policy accept;\n    {}\n  }}",
        dnat_rule(slot)
    )
}

pub fn dnat_rule(slot: Slot) -> String {
    format!(
        "iifname \"eth0\" ip daddr {} dnat ip to {GUEST_IP}",
        slot.host_ip()
    )
}

fn snat_chain(slot: Slot) -> String {
    format!(
        "  chain postroute_nat {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"eth0\" ip saddr {GUEST_IP} snat ip to {}\n  }}",
        slot.host_ip()
    )
}

/// E2B v2's egress DSCP chain (network/v2/dscp.go, `SetupEgressDSCP`): a filter chain at
/// postrouting, mangle priority, whose one rule stamps the class on everything leaving the
/// namespace by the vpeer (`eth0`), envd's SYN-ACKs included. nft compiles this rule to the
/// very expressions dscp.go writes (nfproto, oifname, a 2-byte TOS read-modify-write with the
/// header checksum fixed).
fn mangle_chain() -> String {
    format!(
        "  chain postroute_mangle {{\n    type filter hook postrouting priority mangle; policy accept;\n    meta nfproto ipv4 oifname \"eth0\" ip dscp set {EGRESS_DSCP}\n  }}"
    )
}
