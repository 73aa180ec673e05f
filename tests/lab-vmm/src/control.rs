//! The control channel on the `--api-sock` path: a line protocol over a Unix stream socket.
//!
//! Each request line gets exactly one reply line starting with `ok` or `err <reason>`:
//! `listener off`, `listener on`, `status`, and for the userspace guest `respond
//! normal|garbage` (answer requests, or stream bytes without a line end for ever) and `delay
//! <ms>` (hold each SYN to the port that long before the stack sees it: a slow guest). Connections are served on their own threads;
//! commands are handed to the event loop (which owns the guest) and the reply is sent only
//! once the loop has applied them, so a client that got `ok listener=off` can rely on it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::sys::EventFd;

/// Longest a client waits for the event loop to apply its command (the QEMU guest has to
/// acknowledge over its serial console, which is slow under TCG but not this slow).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that connects and never sends a full line is dropped after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve (true) or stop serving (false) the envd port.
    Listener(bool),
    Status,
    /// How requests are answered.
    Respond(Respond),
    /// Milliseconds each SYN to the port waits before the guest's stack sees it.
    Delay(u64),
}

/// How the envd stand-in answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Respond {
    /// As envd does.
    Normal,
    /// A hostile guest: bytes without a line end, for as long as the client reads.
    Garbage,
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, String> {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["listener", "on"] => Ok(Command::Listener(true)),
            ["listener", "off"] => Ok(Command::Listener(false)),
            ["status"] => Ok(Command::Status),
            ["respond", "normal"] => Ok(Command::Respond(Respond::Normal)),
            ["respond", "garbage"] => Ok(Command::Respond(Respond::Garbage)),
            ["delay", ms] => ms
                .trim_end_matches("ms")
                .parse()
                .map(Command::Delay)
                .map_err(|_| format!("delay wants milliseconds, not {ms:?}")),
            _ => Err(format!(
                "unknown command {line:?} (expected: listener on|off, status, respond normal|garbage, delay MS)"
            )),
        }
    }
}

/// One command from a client, with the way back to it.
pub struct Request {
    pub command: Command,
    pub reply: Sender<String>,
}

impl Request {
    /// Sends the reply line; a client that went away meanwhile is not an error.
    pub fn answer(self, line: String) {
        let _ = self.reply.send(line);
    }
}

/// The bound api socket; the socket file is removed when this is dropped.
pub struct Control {
    path: PathBuf,
    requests: Receiver<Request>,
    wake: Arc<EventFd>,
}

impl Control {
    /// Binds `path` (replacing a stale socket file) and starts accepting clients.
    pub fn start(path: &Path) -> Result<Control> {
        match std::fs::remove_file(path) {
            Ok(()) => eprintln!("lab-vmm: removed stale api socket {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind the api socket {}", path.display()))?;
        let wake = Arc::new(EventFd::new()?);
        let (tx, requests) = mpsc::channel();
        let thread_wake = Arc::clone(&wake);
        std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || accept_loop(listener, tx, thread_wake))
            .context("cannot start the api socket thread")?;
        Ok(Control {
            path: path.to_path_buf(),
            requests,
            wake,
        })
    }

    /// The fd to poll: readable when requests are waiting.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes every pending request (call when the wake fd is readable).
    pub fn take(&self) -> Vec<Request> {
        self.wake.drain();
        self.requests.try_iter().collect()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("lab-vmm: cannot remove {}: {e}", self.path.display());
        }
    }
}

fn accept_loop(listener: UnixListener, tx: Sender<Request>, wake: Arc<EventFd>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lab-vmm: api socket accept failed: {e}");
                continue;
            }
        };
        let (tx, wake) = (tx.clone(), Arc::clone(&wake));
        let spawned = std::thread::Builder::new()
            .name("api-client".into())
            .spawn(move || {
                if let Err(e) = serve_client(stream, &tx, &wake) {
                    eprintln!("lab-vmm: api client: {e:#}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("lab-vmm: cannot start an api client thread: {e}");
        }
    }
}

fn serve_client(stream: UnixStream, tx: &Sender<Request>, wake: &EventFd) -> Result<()> {
    stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .context("set_read_timeout")?;
    let mut writer = stream.try_clone().context("cannot clone the api stream")?;
    for line in BufReader::new(stream).lines() {
        let line = match line {
            Ok(line) => line,
            // A client that hangs up without reading everything is done, not broken.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e).context("reading a command"),
        };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match Command::parse(&line) {
            Ok(command) => dispatch(command, tx, wake),
            Err(reason) => format!("err {reason}"),
        };
        // One write for the whole line: a client doing a single read gets all of it.
        writer
            .write_all(format!("{reply}\n").as_bytes())
            .context("writing a reply")?;
    }
    Ok(())
}

/// Hands one command to the event loop and waits for its verdict.
fn dispatch(command: Command, tx: &Sender<Request>, wake: &EventFd) -> String {
    let (reply, answer) = mpsc::channel();
    if tx.send(Request { command, reply }).is_err() {
        return "err lab-vmm is shutting down".into();
    }
    wake.wake();
    answer
        .recv_timeout(REPLY_TIMEOUT)
        .unwrap_or_else(|_| "err no answer from the guest in time".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse("listener off"), Ok(Command::Listener(false)));
        assert_eq!(Command::parse(" listener  on "), Ok(Command::Listener(true)));
        assert_eq!(Command::parse("status"), Ok(Command::Status));
        assert_eq!(
            Command::parse("respond garbage"),
            Ok(Command::Respond(Respond::Garbage))
        );
        assert_eq!(Command::parse("delay 80ms"), Ok(Command::Delay(80)));
        assert_eq!(Command::parse("delay 0"), Ok(Command::Delay(0)));
        assert!(Command::parse("delay soon").is_err());
        assert!(Command::parse("listener").is_err());
    }
}
