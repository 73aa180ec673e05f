//! Thin, checked wrappers around the few Linux calls the event loops need: poll(2),
//! signalfd(2) and eventfd(2).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result};

/// Turns a libc `-1 + errno` return into an `io::Error`.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What poll(2) said about one descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    pub readable: bool,
    /// POLLERR/POLLHUP/POLLNVAL: the other end is gone or the device vanished.
    pub broken: bool,
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: forever).
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> Result<Vec<Ready>> {
    let watch: Vec<(RawFd, bool)> = fds.iter().map(|&fd| (fd, true)).collect();
    wait(&watch, timeout)
}

/// Like `wait_readable`, but each fd says whether readability matters to us (`true`) or
/// only errors do (`false`). Negative fds are skipped by poll(2) and never ready.
pub fn wait(fds: &[(RawFd, bool)], timeout: Option<Duration>) -> Result<Vec<Ready>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, read)| libc::pollfd {
            fd,
            events: if read { libc::POLLIN } else { 0 },
            revents: 0,
        })
        .collect();
    // Round up: a 0.4 ms smoltcp deadline must not turn into a busy loop of 0 ms polls.
    let ms = timeout.map_or(-1, |d| {
        libc::c_int::try_from(d.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
    });
    loop {
        // SAFETY: pfds is a valid, correctly sized array of pollfd for the whole call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        match cvt(n) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("poll failed"),
        }
    }
    Ok(pfds
        .iter()
        .map(|p| Ready {
            readable: p.revents & libc::POLLIN != 0,
            broken: p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        })
        .collect())
}

/// SIGTERM and SIGINT delivered as readable events instead of asynchronous handlers,
/// so cleanup runs on the main thread's normal return path.
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks SIGTERM/SIGINT for this thread (and every thread spawned after it, which
    /// inherit the mask) and opens a signalfd for them. Call before spawning threads.
    pub fn termination() -> Result<SignalFd> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc)).context("cannot block SIGTERM/SIGINT");
            }
            cvt(libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))
                .context("signalfd failed")?
        };
        // SAFETY: fd was just returned by signalfd and is owned by nobody else.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The number of the pending signal, if one arrived.
    pub fn take(&self) -> Option<u32> {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is valid for `size` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast::<libc::c_void>(), size) };
        (n == size as isize).then_some(info.ssi_signo)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A counter fd that other threads poke to wake the event loop.
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> Result<EventFd> {
        // SAFETY: plain syscall; the returned fd is owned by the new struct.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
            .context("eventfd failed")?;
        // SAFETY: fd was just created and is owned by nobody else.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn wake(&self) {
        // A failed write can only mean the counter is saturated: the loop wakes anyway.
        // SAFETY: valid fd, eventfd_write writes one u64.
        unsafe { libc::eventfd_write(self.fd.as_raw_fd(), 1) };
    }

    /// Resets the counter after a wakeup.
    pub fn drain(&self) {
        let mut value: libc::eventfd_t = 0;
        // SAFETY: valid fd and pointer; EAGAIN (nothing pending) is harmless.
        unsafe { libc::eventfd_read(self.fd.as_raw_fd(), &mut value) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
