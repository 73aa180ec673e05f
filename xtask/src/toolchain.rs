//! The pinned toolchains (from .cargo/config.toml, the one place they are written) and running
//! cargo with them.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The pinned toolchain names.
pub struct Pins {
    pub stable: String,
    pub nightly: String,
}

impl Pins {
    pub fn read() -> Result<Self> {
        let path = workspace_root().join(".cargo/config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        Ok(Self {
            stable: value(&text, "TRACER_STABLE_TOOLCHAIN")?,
            nightly: value(&text, "TRACER_NIGHTLY_TOOLCHAIN")?,
        })
    }
}

/// `KEY = "value"` from a TOML file (the pins are plain strings; no TOML parser needed).
fn value(text: &str, key: &str) -> Result<String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| anyhow!("{key} missing from .cargo/config.toml"))
}

/// `cargo +<pinned stable>` in the workspace root.
pub fn cargo() -> Result<Command> {
    let pins = Pins::read()?;
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{}", pins.stable)).current_dir(workspace_root());
    Ok(cmd)
}

/// `cargo +<pinned nightly>`.
pub fn cargo_nightly() -> Result<Command> {
    let pins = Pins::read()?;
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{}", pins.nightly))
        .current_dir(workspace_root());
    Ok(cmd)
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_from_the_config() {
        let pins = Pins::read().unwrap();
        assert!(pins.nightly.starts_with("nightly-"), "{}", pins.nightly);
        assert!(!pins.stable.is_empty());
    }

    #[test]
    fn value_parsing() {
        let t = "[env]\nA = \"1.2\"\n# c\nB=\"x\"\n";
        assert_eq!(value(t, "A").unwrap(), "1.2");
        assert_eq!(value(t, "B").unwrap(), "x");
        assert!(value(t, "C").is_err());
    }
}
