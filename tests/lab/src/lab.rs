//! Building, inspecting, breaking, healing and tearing down the lab.
use std::{collections::HashMap, fs, process::Child};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    connect::{self, ConnectReport},
    faults::Fault,
    guest::{self, GuestKind},
    sh::{ip, run_in, run_in_with_input, sysctl, sysctl_get_in},
    state::{self, LabLock, SandboxState, State},
    topology::{
        BRIDGE_NAME, Datapath, ENVD_PORT, GUEST_IP, HOST_NS, HostNs, IptablesBackend, LAB_ALIAS, Network,
        Slot, TAP_IP, TAP_MAC, TAP_NAME, TAP_PREFIX, Topology,
    },
    v2,
};

mod host;

pub use host::root_host_refusal;

/// How to build a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabConfig {
    pub sandboxes: u32,
    pub guest: GuestKind,
    pub iptables: IptablesBackend,
    pub topology: Topology,
    #[serde(default)]
    pub network: Network,
    /// Where the orchestrator side lives: `e2b-host` (default), or the root namespace as in
    /// production, which [`Lab::up`] allows only inside the kernel-matrix VM.
    #[serde(default)]
    pub host: HostNs,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            sandboxes: 1,
            guest: GuestKind::Userspace,
            iptables: IptablesBackend::Nft,
            topology: Topology::E2b,
            network: Network::V1,
            host: HostNs::Named,
        }
    }
}

/// One sandbox as `lab status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxStatus {
    pub id: String,
    pub slot: u32,
    pub netns: String,
    pub tap: String,
    pub guest_ip: String,
    pub host_ip: String,
    pub veth: String,
    pub guest: GuestKind,
    pub guest_pid: Option<u32>,
    pub api_sock: String,
    pub datapath: Datapath,
    pub faults: Vec<Fault>,
    pub healthy: bool,
}

/// A running lab. Dropping it tears everything down unless it was handed over with
/// [`Lab::keep`] or opened from the state file with [`Lab::open`].
pub struct Lab {
    state: State,
    /// Guests this process started (to reap them); others are stopped by pid.
    children: HashMap<u32, Child>,
    owned: bool,
    _lock: Option<LabLock>,
}

impl Lab {
    /// Builds the lab: `e2b-host` (or, with [`HostNs::Root`], the host side in the root
    /// namespace), then slot 1..=N. Waits for another lab user (a test) to finish first;
    /// refuses when a lab handed to the CLI is up.
    pub fn up(config: LabConfig) -> Result<Self> {
        if config.sandboxes == 0 {
            bail!("a lab needs at least one sandbox");
        }
        // Before anything else: nothing may touch this machine's root namespace.
        if config.host == HostNs::Root
            && let Some(why) = root_host_refusal()
        {
            bail!("{why}");
        }
        let lock = LabLock::acquire()?;
        if let Some(existing) = state::load()? {
            bail!(
                "a lab with {} sandbox(es) is already up; run `cargo xtask lab down` first",
                existing.sandboxes.len()
            );
        }
        check_free(&config)?;
        let sandboxes = (1..=config.sandboxes)
            .map(|n| SandboxState {
                slot: Slot(n),
                id: random_id(),
                rand: random_alnum(RAND_LEN),
                guest_pid: None,
                faults: vec![],
            })
            .collect();
        // What the root namespace's forwarding was, to set it back at teardown.
        let root_ip_forward = match config.host {
            HostNs::Root => Some(sysctl_get_in(None, "net.ipv4.ip_forward")?),
            HostNs::Named => None,
        };
        let state = State {
            config,
            sandboxes,
            owner_pid: Some(std::process::id()),
            root_ip_forward,
        };
        // Written first: whatever happens next, `lab down` knows what to remove.
        state::save(&state)?;
        let mut lab = Self {
            state,
            children: HashMap::new(),
            owned: true,
            _lock: Some(lock),
        };
        lab.create_host()?;
        for i in 0..lab.state.sandboxes.len() {
            lab.create_sandbox(i)?;
            lab.start_guest(i)?;
        }
        Ok(lab)
    }

    /// Opens the lab described by the state file (for `lab status/break/heal/connect`).
    pub fn open() -> Result<Self> {
        let lock = LabLock::acquire()?;
        let state = state::load()?.ok_or_else(|| anyhow!("no lab is up; run `cargo xtask lab up`"))?;
        Ok(Self {
            state,
            children: HashMap::new(),
            owned: false,
            _lock: Some(lock),
        })
    }

    /// Hands the lab over to the state file: it stays up after this process exits.
    pub fn keep(mut self) -> Result<()> {
        self.state.owner_pid = None;
        state::save(&self.state)?;
        self.owned = false;
        // The guests live on, reparented to init when we exit.
        self.children.clear();
        Ok(())
    }

    /// Leaves everything in place as a killed process would, but keeps the lab locked: for
    /// tests of `down` after a crash. The returned lock goes to [`down_all_locked`].
    pub fn crash(mut self) -> Option<LabLock> {
        self.owned = false;
        self.children.clear();
        self._lock.take()
    }

    pub fn config(&self) -> &LabConfig {
        &self.state.config
    }

    /// Where the orchestrator side is.
    pub fn host_ns(&self) -> HostNs {
        self.state.config.host
    }

    /// The host side for `ip netns exec` (None: the root namespace, where the lab runs).
    fn host(&self) -> Option<&'static str> {
        self.state.config.host.netns()
    }

    pub fn sandboxes(&self) -> &[SandboxState] {
        &self.state.sandboxes
    }

    pub fn sandbox_ids(&self) -> Vec<String> {
        self.state.sandboxes.iter().map(|s| s.id.clone()).collect()
    }

    /// The host IP of every sandbox, in order.
    pub fn host_ips(&self) -> Vec<std::net::Ipv4Addr> {
        self.state.sandboxes.iter().map(|s| s.slot.host_ip()).collect()
    }

    /// The orchestrator stand-in looping over every sandbox (see [`connect::Loop`]).
    pub fn orchestrator_loop(&self) -> connect::Loop {
        connect::Loop::start_in(&self.host_ns().path(), self.host_ips(), ENVD_PORT)
    }

    /// Index of a sandbox by id (or by slot number, for convenience).
    pub fn find(&self, id: &str) -> Result<usize> {
        self.state
            .sandboxes
            .iter()
            .position(|s| s.id == id || s.slot.0.to_string() == id)
            .ok_or_else(|| {
                anyhow!(
                    "no sandbox {id} in the lab; sandboxes: {}",
                    self.sandbox_ids().join(", ")
                )
            })
    }

    /// The sandbox to act on: the given id, or the only/first one.
    pub fn pick(&self, id: Option<&str>) -> Result<usize> {
        match id {
            Some(id) => self.find(id),
            None => Ok(0),
        }
    }

    fn datapath(&self, slot: Slot) -> Datapath {
        self.state.config.network.datapath(slot)
    }

    fn tap_dev(&self) -> &'static str {
        match self.state.config.topology {
            Topology::E2b => TAP_NAME,
            Topology::Bridge => BRIDGE_NAME,
        }
    }

    fn create_sandbox(&mut self, i: usize) -> Result<()> {
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
    fn create_tap(&self, ns: &str) -> Result<()> {
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

    fn start_guest(&mut self, i: usize) -> Result<()> {
        let sb = self.state.sandboxes[i].clone();
        let child = guest::start(&sb, &sb.slot.netns(), self.state.config.guest)?;
        self.state.sandboxes[i].guest_pid = Some(child.id());
        self.children.insert(sb.slot.0, child);
        state::save(&self.state)
    }

    fn stop_guest(&mut self, i: usize) -> Result<()> {
        let slot = self.state.sandboxes[i].slot.0;
        if let Some(pid) = self.state.sandboxes[i].guest_pid.take() {
            guest::stop_pid(pid);
        }
        if let Some(mut child) = self.children.remove(&slot) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.state.sandboxes[i].api_sock());
        state::save(&self.state)
    }

    /// Ends sandbox `i` (its VMM stops) and, after `delay`, starts the next sandbox in the same
    /// pooled namespace with a new id and api socket, as E2B does (it hands `ns-N` to the next
    /// sandbox 3 s after the previous one ends: [`RECYCLE_DELAY`]). Nothing else changes: the
    /// namespace, its rules, faults and conntrack entries stay. `identity` gives the new
    /// (id, rand) instead of random ones. Returns the new id.
    pub fn recycle(
        &mut self,
        i: usize,
        delay: std::time::Duration,
        identity: Option<(String, String)>,
    ) -> Result<String> {
        self.stop_guest(i)?;
        // The delay is what is being simulated, not a wait for a condition.
        std::thread::sleep(delay);
        let (id, rand) = identity.unwrap_or_else(|| (random_id(), random_alnum(RAND_LEN)));
        if self
            .state
            .sandboxes
            .iter()
            .enumerate()
            .any(|(j, s)| j != i && s.id == id)
        {
            bail!("another lab sandbox already has id {id}");
        }
        self.state.sandboxes[i].id = id.clone();
        self.state.sandboxes[i].rand = rand;
        state::save(&self.state)?;
        self.start_guest(i)?;
        Ok(id)
    }

    /// Sends one control command to sandbox `i`'s guest (`respond garbage`, `delay 80`,
    /// `listener off` ...) and returns its reply.
    pub fn control(&self, i: usize, command: &str) -> Result<String> {
        guest::control(&self.state.sandboxes[i].api_sock(), command)
    }

    /// Status of every sandbox, with one real connection attempt each for `healthy`.
    pub fn status(&self) -> Vec<SandboxStatus> {
        self.state
            .sandboxes
            .iter()
            .map(|sb| SandboxStatus {
                id: sb.id.clone(),
                slot: sb.slot.0,
                netns: sb.slot.netns(),
                tap: TAP_NAME.into(),
                guest_ip: GUEST_IP.to_string(),
                host_ip: sb.slot.host_ip().to_string(),
                veth: sb.slot.veth(),
                guest: self.state.config.guest,
                guest_pid: sb.guest_pid.filter(|p| guest::is_lab_vmm(*p)),
                api_sock: sb.api_sock().display().to_string(),
                datapath: self.state.config.network.datapath(sb.slot),
                faults: sb.faults.clone(),
                healthy: connect::connect_in(&self.host_ns().path(), sb.slot.host_ip(), ENVD_PORT, 3, true)
                    .map(|r| r.succeeded())
                    .unwrap_or(false),
            })
            .collect()
    }

    /// The orchestrator stand-in against one sandbox.
    pub fn connect(&self, i: usize, attempts: u32) -> Result<ConnectReport> {
        let sb = &self.state.sandboxes[i];
        connect::connect_in(
            &self.host_ns().path(),
            sb.slot.host_ip(),
            ENVD_PORT,
            attempts,
            false,
        )
    }

    /// Like [`Lab::connect`], stopping at the first answer: the orchestrator also retries
    /// until one attempt works (an emulated guest under load can miss a 50 ms attempt).
    pub fn reachable(&self, i: usize, attempts: u32) -> Result<ConnectReport> {
        let sb = &self.state.sandboxes[i];
        connect::connect_in(
            &self.host_ns().path(),
            sb.slot.host_ip(),
            ENVD_PORT,
            attempts,
            true,
        )
    }

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

    fn apply(&mut self, i: usize, fault: Fault, on: bool) -> Result<()> {
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

    /// Sends `sig` to sandbox `i`'s VMM (SIGSTOP/SIGCONT: a paused VM).
    /// Sends a signal to sandbox `i`'s VMM (the fault campaign stops and resumes it).
    pub fn signal(&self, i: usize, sig: i32) -> Result<()> {
        self.signal_guest(i, sig)
    }

    fn signal_guest(&self, i: usize, sig: i32) -> Result<()> {
        let pid = self.state.sandboxes[i]
            .guest_pid
            .ok_or_else(|| anyhow!("sandbox {i} has no VMM"))?;
        // The VMM and what it runs (QEMU is lab-vmm's child and reads the tap itself).
        for p in std::iter::once(pid).chain(descendants(pid)) {
            // SAFETY: a plain signal to the VMM this lab started, or one of its children.
            if unsafe { libc::kill(p as i32, sig) } != 0 && p == pid {
                bail!("kill {pid}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
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

    /// Tears the lab down (also what Drop does for an owned lab).
    pub fn down(self) -> Result<()> {
        self.down_and_hold().map(drop)
    }

    /// Tears the lab down and keeps it locked, so a test can check that nothing is left
    /// before another lab is built.
    pub fn down_and_hold(mut self) -> Result<Option<LabLock>> {
        self.owned = false;
        self.teardown()?;
        Ok(self._lock.take())
    }

    fn teardown(&mut self) -> Result<()> {
        for i in 0..self.state.sandboxes.len() {
            let _ = self.stop_guest(i);
        }
        let mut errors = Vec::new();
        if self.host().is_none() {
            errors.extend(self.revert_root_faults());
        }
        for sb in &self.state.sandboxes {
            if let Err(e) = delete_netns(&sb.slot.netns()) {
                errors.push(e.to_string());
            }
            let _ = fs::remove_file(sb.log_path());
        }
        match self.host() {
            Some(ns) => {
                if let Err(e) = delete_netns(ns) {
                    errors.push(e.to_string());
                }
            }
            None => errors.extend(self.clean_root_host()),
        }
        state::remove()?;
        if !errors.is_empty() {
            bail!("teardown left errors: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = self.teardown()
        {
            eprintln!("lab: teardown failed: {e:#}");
        }
    }
}

/// `lab down`: removes the lab of the state file and any leftovers of crashed runs (lab-vmm
/// processes, namespaces whose eth0 carries the lab's alias, e2b-host). Safe to run twice.
pub fn down_all() -> Result<()> {
    let lock = LabLock::acquire()?;
    down_all_locked(&lock)
}

/// [`down_all`] for a caller that already holds the lab lock.
pub fn down_all_locked(_lock: &LabLock) -> Result<()> {
    if let Some(state) = state::load()? {
        let lab = Lab {
            state,
            children: HashMap::new(),
            owned: false,
            _lock: None,
        };
        lab.down()?;
    }
    // Guests of the lab are the lab-vmm processes inside the lab's namespaces (not, e.g.,
    // lab-vmm's own tests in theirs).
    let namespaces = lab_namespaces();
    let inodes: Vec<u64> = namespaces
        .iter()
        .filter_map(|ns| netns_inode(&format!("/var/run/netns/{ns}")))
        .collect();
    for pid in guest::all_lab_vmms() {
        if netns_inode(&format!("/proc/{pid}/ns/net")).is_some_and(|i| inodes.contains(&i)) {
            guest::stop_pid(pid);
        }
    }
    for ns in namespaces {
        delete_netns(&ns)?;
    }
    state::remove()
}

fn netns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Namespaces the lab made: e2b-host, and ns-N whose eth0 has the lab's alias.
fn lab_namespaces() -> Vec<String> {
    let Ok(out) = ip(None, &["netns", "list"]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            *ns == HOST_NS
                || (ns.starts_with("ns-")
                    && ip(Some(ns), &["link", "show", "eth0"])
                        .is_ok_and(|o| o.contains(&format!("alias {LAB_ALIAS}"))))
        })
        .map(str::to_string)
        .collect()
}

fn delete_netns(ns: &str) -> Result<()> {
    let exists = ip(None, &["netns", "list"])?
        .lines()
        .any(|l| l.split_whitespace().next() == Some(ns));
    if exists {
        ip(None, &["netns", "del", ns])?;
    }
    Ok(())
}

/// Refuses to build over namespaces that exist already (never adopt or delete what is not
/// ours, e.g. on a real E2B node).
fn check_free(config: &LabConfig) -> Result<()> {
    let list = ip(None, &["netns", "list"])?;
    let existing: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let wanted = config
        .host
        .netns()
        .map(str::to_string)
        .into_iter()
        .chain((1..=config.sandboxes).map(|n| Slot(n).netns()));
    for ns in wanted {
        if existing.contains(&ns.as_str()) {
            bail!(
                "network namespace {ns} already exists; if it is a leftover of the lab, run `cargo xtask lab down`"
            );
        }
    }
    Ok(())
}

/// `-d <hostIP>/32 -i eth0 -j DNAT --to-destination 169.254.0.21`, as iptables-save prints it.
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

pub fn dnat_rule(slot: Slot) -> String {
    format!(
        "-d {}/32 -i eth0 -j DNAT --to-destination {GUEST_IP}",
        slot.host_ip()
    )
}

pub fn snat_rule(slot: Slot) -> String {
    format!("-s {GUEST_IP}/32 -o eth0 -j SNAT --to-source {}", slot.host_ip())
}

fn split(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// How long E2B waits before handing a pooled namespace to the next sandbox.
pub const RECYCLE_DELAY: std::time::Duration = std::time::Duration::from_secs(3);

/// E2B's sandbox id prefix (`InstanceIDPrefix` in e2b-dev/infra).
pub const ID_PREFIX: &str = "i";
/// Characters after the prefix, and the length of the random part of E2B's socket names.
pub const ID_LEN: usize = 20;
pub const RAND_LEN: usize = 20;

/// A sandbox id exactly as E2B makes one: `i` + 20 lowercase alphanumerics.
pub fn random_id() -> String {
    format!("{ID_PREFIX}{}", random_alnum(ID_LEN))
}

/// `n` random lowercase alphanumerics.
pub fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut bytes);
    }
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Every descendant of `pid`, from /proc/PID/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten();
        for t in tasks {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
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

    /// On this machine (not the kernel-matrix VM) the root-host lab refuses before it takes the
    /// lab lock or touches anything.
    #[test]
    fn the_root_host_lab_refuses_outside_the_vm() {
        let Some(why) = root_host_refusal() else {
            return; // inside the kernel-matrix VM: allowed there.
        };
        let config = LabConfig {
            host: HostNs::Root,
            ..LabConfig::default()
        };
        let err = Lab::up(config).err().expect("refused");
        assert_eq!(err.to_string(), why);
    }

    #[test]
    fn ids_look_like_e2b_ids() {
        let id = random_id();
        assert_eq!(id.len(), 21);
        assert!(id.starts_with('i'));
        assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(id, random_id());
        assert_eq!(random_alnum(RAND_LEN).len(), 20);
    }
}
