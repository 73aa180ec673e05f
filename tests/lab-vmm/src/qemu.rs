//! `--guest qemu`: a real Linux guest under QEMU (TCG: this machine has no usable KVM).
//!
//! lab-vmm keeps the tap open itself and lends QEMU a copy as fd 3, so, as with
//! Firecracker, the process holding the tap is the one with the `--api-sock` argument.
//! The guest's serial console is QEMU's stdio: its /init (guest/init.sh) prints
//! `LAB-GUEST-READY` once envd's port listens, and takes `listener off|on` lines,
//! answering each with `LAB-ACK listener=off|on`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control::{Command as Ctl, Control, Request};
use crate::sys::{SignalFd, wait};
use crate::tap::Tap;
use crate::{GuestNet, announce_ready, format_mac};

/// The fd number the tap has in QEMU (`-netdev tap,fd=3`).
const TAP_FD: RawFd = 3;
/// How long the guest may take to acknowledge a console command.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the tap is looked at for deletion (see `GuestState::next_wakeup`).
const TAP_CHECK: Duration = Duration::from_secs(1);
const READY_MARKER: &str = "LAB-GUEST-READY";
const ACK_MARKER: &str = "LAB-ACK ";

pub struct QemuArgs {
    pub binary: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Runs the QEMU guest until SIGTERM/SIGINT (Ok) or until QEMU dies (Err).
pub fn run(tap: Tap, net: &GuestNet, args: &QemuArgs, control: &Control, signals: &SignalFd) -> Result<()> {
    check_image(args)?;
    let started = Instant::now();
    let mut vm = Vm::spawn(&tap, net, args)?;
    eprintln!("lab-vmm: qemu pid {} on {}", vm.child.id(), tap.name());
    let mut state = GuestState::new();
    loop {
        let timeout = state.next_wakeup(Instant::now());
        // Our own copy of the tap is watched for errors only: QEMU reads the frames.
        let tap_fd = if state.tap_gone { -1 } else { tap.as_raw_fd() };
        let fds = [
            (vm.stdout.as_raw_fd(), true),
            (control.wake_fd().as_raw_fd(), true),
            (signals.as_raw_fd(), true),
            (tap_fd, false),
        ];
        let events = wait(&fds, timeout)?;
        if events[2].readable
            && let Some(sig) = signals.take()
        {
            eprintln!("lab-vmm: signal {sig}, stopping qemu");
            return Ok(());
        }
        if events[3].broken {
            state.on_tap_gone(&mut vm, tap.name());
        }
        if events[0].readable || events[0].broken {
            for line in vm.read_console()? {
                state.on_console_line(&line, started);
            }
        }
        if events[1].readable {
            for request in control.take() {
                state.on_request(request, &mut vm)?;
            }
        }
        state.expire_acks();
    }
}

fn check_image(args: &QemuArgs) -> Result<()> {
    for file in [&args.kernel, &args.initrd] {
        if !file.is_file() {
            bail!(
                "guest image {} not found (make one with `lab-vmm build-guest --out DIR`)",
                file.display()
            );
        }
    }
    Ok(())
}

/// What lab-vmm knows about the guest, from its console.
struct GuestState {
    ready: bool,
    listening: bool,
    /// The tap was deleted and QEMU frozen (see `on_tap_gone`).
    tap_gone: bool,
    /// Commands written to the console, oldest first, awaiting their LAB-ACK.
    pending: VecDeque<(Request, Instant)>,
}

impl GuestState {
    fn new() -> GuestState {
        // The guest's init starts the listener before it says READY.
        GuestState {
            ready: false,
            listening: true,
            tap_gone: false,
            pending: VecDeque::new(),
        }
    }

    /// When the loop must wake even if nothing happens: the oldest ack's deadline, and
    /// the next look at the tap. A deleted tap's POLLERR comes with no wakeup for a
    /// poller that asked for errors only (the tun driver wakes with POLLIN), so it is
    /// only seen on the next poll(2) call.
    fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let ack = self
            .pending
            .front()
            .map(|(_, deadline)| deadline.saturating_duration_since(now));
        let tap = (!self.tap_gone).then_some(TAP_CHECK);
        ack.into_iter().chain(tap).min()
    }

    fn on_console_line(&mut self, line: &str, started: Instant) {
        eprintln!("guest: {line}");
        if line.contains(READY_MARKER) && !self.ready {
            self.ready = true;
            eprintln!(
                "lab-vmm: guest ready after {:.2} s",
                started.elapsed().as_secs_f64()
            );
            announce_ready();
        } else if let Some(ack) = line.split_once(ACK_MARKER).map(|(_, a)| a.trim()) {
            self.on_ack(ack);
        }
    }

    fn on_ack(&mut self, ack: &str) {
        let reply = match ack {
            "listener=on" | "listener=off" => {
                self.listening = ack == "listener=on";
                format!("ok {ack}")
            }
            other => format!("err guest says: {other}"),
        };
        match self.pending.pop_front() {
            Some((request, _)) => request.answer(reply),
            None => eprintln!("lab-vmm: unexpected ack from the guest: {ack}"),
        }
    }

    /// QEMU busy-loops on a tap whose device was deleted (its fd reports an error
    /// forever), which would eat a core of the lab machine. Freeze it instead: the guest is
    /// unreachable either way, and the process, like Firecracker's, stays discoverable.
    fn on_tap_gone(&mut self, vm: &mut Vm, tap: &str) {
        self.tap_gone = true;
        eprintln!("lab-vmm: tap device {tap} went away; freezing qemu (SIGSTOP)");
        vm.freeze();
        for (request, _) in self.pending.drain(..) {
            request.answer("err the tap is gone and the guest is frozen".into());
        }
    }

    fn on_request(&mut self, request: Request, vm: &mut Vm) -> Result<()> {
        match request.command {
            Ctl::Status => {
                let reply = format!(
                    "ok listener={} guest=qemu ready={} tap={}",
                    if self.listening { "on" } else { "off" },
                    if self.ready { "yes" } else { "no" },
                    if self.tap_gone { "gone" } else { "attached" }
                );
                request.answer(reply);
            }
            Ctl::Respond(_) | Ctl::Delay(_) => {
                request.answer("err only the userspace guest can change how it answers".into());
            }
            Ctl::Listener(_) if self.tap_gone => {
                request.answer("err the tap is gone and the guest is frozen".into());
            }
            Ctl::Listener(on) => {
                // The guest's init reads its console line by line, also before READY.
                vm.send_console(if on { "listener on" } else { "listener off" })?;
                self.pending.push_back((request, Instant::now() + ACK_TIMEOUT));
            }
        }
        Ok(())
    }

    fn expire_acks(&mut self) {
        let now = Instant::now();
        while self.pending.front().is_some_and(|(_, deadline)| *deadline <= now) {
            if let Some((request, _)) = self.pending.pop_front() {
                request.answer("err the guest did not acknowledge in time".into());
            }
        }
    }
}

/// The QEMU child; killed and reaped on drop, whatever path we leave by.
struct Vm {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Console bytes after the last complete line.
    partial: Vec<u8>,
}

impl Vm {
    fn spawn(tap: &Tap, net: &GuestNet, args: &QemuArgs) -> Result<Vm> {
        let mut cmd = qemu_command(net, args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Its own process group: a terminal's Ctrl-C reaches only us, and we stop QEMU.
        cmd.process_group(0);
        let tap_fd = tap.as_raw_fd();
        // SAFETY: only async-signal-safe calls (prctl, dup2, fcntl) run between fork and exec.
        unsafe { cmd.pre_exec(move || child_setup(tap_fd)) };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", args.binary.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("qemu was started without console pipes");
        };
        set_nonblocking(stdout.as_raw_fd())?;
        Ok(Vm {
            child,
            stdin,
            stdout,
            partial: Vec::new(),
        })
    }

    fn freeze(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(libc::pid_t::MAX);
        // SAFETY: kill(2) on our own, not yet reaped, child.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            eprintln!("lab-vmm: cannot stop qemu: {}", std::io::Error::last_os_error());
        }
    }

    fn send_console(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .context("cannot write to the guest console")
    }

    /// Complete console lines read so far; an error once QEMU has exited.
    fn read_console(&mut self) -> Result<Vec<String>> {
        let mut buf = [0u8; 4096];
        loop {
            match self.stdout.read(&mut buf) {
                Ok(0) => return Err(self.exited()),
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the guest console"),
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw);
            lines.push(text.trim_end_matches(['\r', '\n']).to_string());
        }
        Ok(lines)
    }

    /// The error to exit with when QEMU's console closed: QEMU is gone.
    fn exited(&mut self) -> anyhow::Error {
        match self.child.wait() {
            Ok(status) => anyhow::anyhow!("qemu exited on its own ({status})"),
            Err(e) => anyhow::anyhow!("qemu's console closed and waiting for it failed: {e}"),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A VM with no disk has nothing to flush: SIGKILL is the quickest clean stop.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        if let Err(e) = self.child.wait() {
            eprintln!("lab-vmm: waiting for qemu failed: {e}");
        }
    }
}

fn qemu_command(net: &GuestNet, args: &QemuArgs) -> Command {
    let append = format!(
        "console=ttyS0 quiet panic=-1 lab.ip={}/{} lab.gw={} lab.port={}",
        net.ip, net.prefix, net.gateway, net.port
    );
    // romfile= : direct kernel boot needs no PXE option ROM, so do not require one.
    let nic = format!("virtio-net-pci,netdev=n0,mac={},romfile=", format_mac(&net.mac));
    let mut cmd = Command::new(&args.binary);
    cmd.args(["-M", "q35", "-accel", "tcg", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&args.kernel)
        .arg("-initrd")
        .arg(&args.initrd)
        .args(["-append", &append])
        .args(["-netdev", &format!("tap,id=n0,fd={TAP_FD}")])
        .args(["-device", &nic])
        .args(["-serial", "stdio"]);
    cmd
}

/// In the forked child: die with lab-vmm, and find the tap at fd 3.
fn child_setup(tap_fd: RawFd) -> std::io::Result<()> {
    use crate::sys::cvt;
    // SAFETY: plain syscalls on integers; nothing here allocates or locks.
    unsafe {
        cvt(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        if tap_fd == TAP_FD {
            // dup2 onto itself would keep FD_CLOEXEC: clear it explicitly.
            cvt(libc::fcntl(TAP_FD, libc::F_SETFD, 0))?;
        } else {
            cvt(libc::dup2(tap_fd, TAP_FD))?;
        }
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> Result<()> {
    use crate::sys::cvt;
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL)).context("fcntl(F_GETFL)")?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)).context("fcntl(F_SETFL)")?;
    }
    Ok(())
}
