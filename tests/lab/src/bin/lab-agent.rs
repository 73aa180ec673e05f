//! lab-agent: plays another agent (Cilium, a security agent) that has loaded a BPF program
//! next to the tracer. Loads and attaches one program (see `lab::agent`), prints one JSON
//! line, holds the program until told to stop, and detaches on the way out.
//!
//! It stops on SIGTERM, SIGINT or SIGHUP, when its stdin closes (run it from a terminal, or
//! with a pipe: stdin at /dev/null ends it at once), and when its parent dies.
use std::{
    fs::File,
    io::{self, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};
use lab::agent::{self, Spec, Target};

fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lab-agent: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", agent::USAGE);
        return Ok(());
    }
    // Before anything else: a stop signal that comes while loading waits in the signalfd.
    let signals = block_stop_signals()?;
    die_with_parent()?;
    let attached = match Spec::parse(args).and_then(|spec| enter_and_attach(&spec)) {
        Ok(a) => a,
        Err(e) => {
            say(&serde_json::json!({"ready": false, "error": format!("{e:#}")}));
            return Err(e);
        }
    };
    say(&serde_json::to_value(&attached.ready)?);
    hold(&signals)?;
    attached.release()
}

/// One JSON line on stdout, flushed: the parent waits for it.
fn say(v: &serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn enter_and_attach(spec: &Spec) -> Result<agent::run::Attached> {
    if let Target::Device { netns: Some(ns), .. } = &spec.target {
        enter_netns(ns)?;
    }
    agent::run::attach(spec)
}

/// The whole process moves: it has one thread, and tc runs as its child.
fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: plain syscall on an fd we hold.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Blocks SIGTERM, SIGINT and SIGHUP and returns a signalfd that reads them, so the wait is
/// one poll over stdin and signals, with no handler.
fn block_stop_signals() -> Result<OwnedFd> {
    // SAFETY: a sigset_t on our stack, filled by sigemptyset before use; plain syscalls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error()).context("sigprocmask");
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("signalfd");
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// SIGTERM when the parent dies; and if it died already (we were reparented before the
/// prctl), stop now. LAB_AGENT_PARENT is the pid `Agent::start` ran from.
fn die_with_parent() -> Result<()> {
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_PDEATHSIG)");
    }
    let expected = std::env::var("LAB_AGENT_PARENT")
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    // SAFETY: trivial syscall.
    let parent = unsafe { libc::getppid() };
    if expected.is_some_and(|p| p != parent) {
        bail!("parent {expected:?} is gone");
    }
    Ok(())
}

/// Waits for a stop signal or the end of stdin.
fn hold(signals: &OwnedFd) -> Result<()> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if fds[1].revents != 0 {
            return read_signal(signals);
        }
        if fds[0].revents & libc::POLLNVAL != 0 {
            return Ok(());
        }
        if fds[0].revents != 0 && !stdin_open()? {
            return Ok(());
        }
    }
}

/// Takes the signal off the signalfd (it was what woke us; which one does not matter).
fn read_signal(fd: &OwnedFd) -> Result<()> {
    // SAFETY: signalfd_siginfo is plain data; read fills it whole or fails.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: a buffer of `size` bytes.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n != size as isize {
        return Err(io::Error::last_os_error()).context("read signalfd");
    }
    Ok(())
}

/// Reads (and ignores) what came on stdin: false at EOF or error.
fn stdin_open() -> Result<bool> {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer of that length.
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    Ok(n > 0)
}
