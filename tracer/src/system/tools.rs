//! Running the system's tools (iptables-save, nft) with a deadline. A hung child (a stuck
//! nf_tables lock, a stopped process) must never hang the tracer: after the timeout the child
//! is killed and reaped, and the caller gets an error that says so.
use std::{
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// How long a ruleset dump may take. iptables-save and nft answer in milliseconds, even with
/// thousands of rules; seconds means something is wrong.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Output larger than this is cut (a ruleset of a busy node is a few MiB at most).
const MAX_OUTPUT: usize = 64 << 20;

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a command gave no output.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("{0} is not installed")]
    NotFound(String),
    #[error("{program} did not finish within {timeout:?} and was killed")]
    TimedOut { program: String, timeout: Duration },
    #[error("{program}: {source}")]
    Io {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// Runs `cmd` (stdin from `input`, or none) and waits at most `timeout` for it.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, CmdError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let io_err = |source| CmdError::Io {
        program: program.clone(),
        source,
    };
    die_with_parent(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => CmdError::NotFound(program.clone()),
            _ => io_err(e),
        })?;
    let reaper = Reaper(&mut child);
    if let (Some(text), Some(mut stdin)) = (input, reaper.0.stdin.take()) {
        // A child that exits without reading its input is not an error here.
        let _ = stdin.write_all(text);
    }
    let (out, err) = (reaper.0.stdout.take(), reaper.0.stderr.take());
    let readers = (spawn_reader(out), spawn_reader(err));
    let status = match wait_deadline(reaper.0, Instant::now() + timeout).map_err(io_err)? {
        Some(s) => s,
        None => return Err(CmdError::TimedOut { program, timeout }),
    };
    std::mem::forget(reaper);
    Ok(Output {
        status,
        stdout: readers.0.join().unwrap_or_default(),
        stderr: readers.1.join().unwrap_or_default(),
    })
}

/// The child is killed when the thread that started it ends (the whole tracer exiting
/// included): a tool that hangs or is stopped is never left behind.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Like [`run`], failing when the command exits non-zero (with its stderr).
pub fn run_ok(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Vec<u8>> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = run(cmd, input, timeout)?;
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// Kills and reaps the child unless disarmed (`mem::forget`): on a timeout and on any early
/// return, nothing is left running.
struct Reaper<'a>(&'a mut Child);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_reader<R: io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            let _ = p.take(MAX_OUTPUT as u64).read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for the child until `deadline`: None when it is still running then. A pidfd makes
/// the wait a single poll(2), without sleeping in steps.
fn wait_deadline(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let pidfd = pidfd_open(child.id())?;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned by the returned value.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// stdout as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Wraps [`run_ok`] errors with the command's purpose.
pub fn context<T>(r: Result<T>, what: &str) -> Result<T> {
    r.with_context(|| what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_exit_status() {
        let out = run(
            Command::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"]),
            None,
            TOOL_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
        let out = run(&mut Command::new("cat"), Some(b"in"), TOOL_TIMEOUT).unwrap();
        assert_eq!(out.stdout, b"in");
    }

    #[test]
    fn a_hung_child_is_killed_at_the_deadline() {
        let start = Instant::now();
        let err = run(Command::new("sleep").arg("30"), None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CmdError::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_tool_is_named() {
        let err = run(&mut Command::new("no-such-tool-anywhere"), None, TOOL_TIMEOUT).unwrap_err();
        assert!(matches!(err, CmdError::NotFound(ref p) if p == "no-such-tool-anywhere"));
    }
}
