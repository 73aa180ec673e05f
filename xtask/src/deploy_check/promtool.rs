//! Running promtool (in deploy/, where the rule files name each other), skipped with a notice
//! when it is not installed, except in CI; and running any command within a time limit.
use std::{
    io::{ErrorKind, Read as _},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};

use super::deploy_dir;

/// Every external command gets this long.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Set once promtool was found missing (and said so).
pub(super) static PROMTOOL_MISSING: AtomicBool = AtomicBool::new(false);

/// Runs promtool in deploy/ (where the rule files name each other). Ok(false): not installed,
/// outside CI, and said so.
pub(super) fn promtool(args: &[&str]) -> Result<bool> {
    promtool_in(&deploy_dir(), args)
}

pub(super) fn promtool_in(dir: &Path, args: &[&str]) -> Result<bool> {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(dir);
    match run_with_timeout(&mut cmd, TIMEOUT) {
        Ok(_) => Ok(true),
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == ErrorKind::NotFound) =>
        {
            let msg =
                "promtool is not installed: run `cargo xtask setup` (Debian's prometheus package has it)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("{msg}");
            }
            if !PROMTOOL_MISSING.swap(true, Ordering::Relaxed) {
                eprintln!("deploy-check: {msg}; its checks are skipped.");
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Runs a command to completion within `limit` (killed after it); fails with its output when it
/// fails. A spawn error is returned as the io::Error it is.
pub(super) fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(anyhow::Error::new)?;
    // Drained on threads: a child blocked on a full pipe would look like a hang.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    ensure!(status.success(), "{cmd:?} failed ({status}):\n{out}{err}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy_check::testing::err;

    #[test]
    fn a_hanging_command_is_stopped() {
        let start = Instant::now();
        let r = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300));
        assert!(err(r).contains("did not finish"));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
