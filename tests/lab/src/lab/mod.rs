//! Building, inspecting, breaking, healing and tearing down the lab.
//!
//! Here: the [`Lab`] type, its configuration, building it and looking at it. Beside it: `sandbox`
//! (bringing up a sandbox), `guests` (the VMMs), `break_heal` (faults in and out), `teardown`
//! (taking it down, `lab down`) and `host` (the orchestrator side).
use std::{collections::HashMap, fs, process::Child};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    connect::{self, ConnectReport},
    faults::Fault,
    guest::{self, GuestKind},
    sh::{ip, sysctl_get_in},
    state::{self, LabLock, SandboxState, State},
    topology::{
        BRIDGE_NAME, Datapath, ENVD_PORT, GUEST_IP, HostNs, IptablesBackend, Network, Slot, TAP_NAME,
        Topology,
    },
};

mod break_heal;
mod guests;
mod host;
mod sandbox;
mod teardown;

pub use guests::RECYCLE_DELAY;
pub use host::root_host_refusal;
pub use sandbox::{dnat_rule, snat_rule};
pub use teardown::{down_all, down_all_locked};

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

fn split(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
