//! The lab's state file and lock, under /run (tmpfs: gone after a reboot, as the lab is).
//!
//! The state is written *before* objects are created, so `lab down` can always find what a
//! crashed or killed run left behind.
use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{faults::Fault, lab::LabConfig, topology::Slot};

pub const STATE_DIR: &str = "/run/e2b-lab";

pub fn dir() -> PathBuf {
    PathBuf::from(STATE_DIR)
}

fn state_path() -> PathBuf {
    dir().join("state.json")
}

/// What a lab consists of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub config: LabConfig,
    pub sandboxes: Vec<SandboxState>,
    /// Whether a process owns the lab (tests) or it was handed to the CLI (`lab up`).
    pub owner_pid: Option<u32>,
    /// With the host side in the root namespace: `net.ipv4.ip_forward` there before the lab
    /// set it, restored at teardown.
    #[serde(default)]
    pub root_ip_forward: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxState {
    pub slot: Slot,
    pub id: String,
    /// Second random part of the api socket name (`/tmp/fc-<id>-<rand>.sock`).
    pub rand: String,
    pub guest_pid: Option<u32>,
    pub faults: Vec<Fault>,
}

impl SandboxState {
    pub fn api_sock(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/fc-{}-{}.sock", self.id, self.rand))
    }
    pub fn log_path(&self) -> PathBuf {
        dir().join(format!("guest-{}.log", self.slot.0))
    }
}

pub fn load() -> Result<Option<State>> {
    match fs::read_to_string(state_path()) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).context("parse lab state")?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("read lab state"),
    }
}

pub fn save(state: &State) -> Result<()> {
    fs::create_dir_all(dir())?;
    let tmp = dir().join("state.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    fs::rename(&tmp, state_path()).context("write lab state")
}

pub fn remove() -> Result<()> {
    match fs::remove_file(state_path()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// An exclusive lock over the lab: one lab at a time on a machine (tests run serially on it).
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Waits until no one else holds the lab.
    pub fn acquire() -> Result<Self> {
        fs::create_dir_all(dir())?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir().join("lock"))
            .context("open lab lock")?;
        // SAFETY: flock on a valid fd; blocks until granted.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error()).context("lock the lab");
        }
        Ok(Self { _file: file })
    }
}
