//! Attaching to the sandbox's existing, persistent tap device, as Firecracker does with
//! `host_dev_name`. We never create or delete it: the lab owns its lifetime.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result, bail};

use crate::sys::cvt;

/// An open queue of a tap device, in non-blocking mode.
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// The device's IP MTU, as `ip link` shows it.
    mtu: usize,
}

impl Tap {
    /// Attaches to the tap `name` in the calling thread's network namespace.
    pub fn attach(name: &str) -> Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            bail!("invalid tap name {name:?}");
        }
        // TUNSETIFF on a missing name would silently create a fresh tap; look first so the
        // caller gets a clear error instead of a private device nobody routes to.
        if ifindex(name)? == 0 {
            bail!(
                "tap device {name} does not exist in this network namespace \
                 (lab-vmm attaches to an existing persistent tap and never creates one)"
            );
        }
        let fd = open_tun()?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: valid fd and a properly initialised ifreq that outlives the call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) })
            .map_err(|e| anyhow::anyhow!("cannot attach to tap device {name}: {}", attach_hint(&e)))?;
        ensure_persistent(&fd, name)?;
        let mtu = query_mtu(name)?;
        Ok(Tap {
            fd,
            name: name.to_string(),
            mtu,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Reads one frame; `Ok(None)` when the queue is empty.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            -1 => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                e => Err(e),
            },
            n => Ok(Some(n as usize)),
        }
    }

    /// Writes one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is valid for reads of frame.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn ifindex(name: &str) -> Result<libc::c_uint> {
    let cname = CString::new(name).context("tap name contains a NUL byte")?;
    // SAFETY: cname is a valid C string.
    Ok(unsafe { libc::if_nametoindex(cname.as_ptr()) })
}

fn open_tun() -> Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: constant C string path.
    let fd =
        cvt(unsafe { libc::open(c"/dev/net/tun".as_ptr(), flags) }).context("cannot open /dev/net/tun")?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn attach_hint(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EBUSY) => format!("{e} (another process already holds it)"),
        Some(libc::EINVAL) => format!("{e} (it is not a tap device)"),
        Some(libc::EPERM) => format!("{e} (not allowed: run as root or the tap's owner)"),
        _ => e.to_string(),
    }
}

/// Catches the race where the tap vanished between the existence check and TUNSETIFF:
/// then we just created a private, non-persistent tap, which dies when `fd` is closed.
fn ensure_persistent(fd: &OwnedFd, name: &str) -> Result<()> {
    let mut req = ifreq(name);
    // SAFETY: valid fd and ifreq.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) })
        .with_context(|| format!("TUNGETIFF on {name} failed"))?;
    // SAFETY: TUNGETIFF fills ifru_flags.
    let flags = libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags });
    if flags & libc::IFF_PERSIST == 0 {
        bail!("tap device {name} disappeared while lab-vmm was attaching to it");
    }
    Ok(())
}

fn query_mtu(name: &str) -> Result<usize> {
    // SAFETY: plain socket(2) call.
    let sock = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .context("cannot open a socket to query the MTU")?;
    // SAFETY: sock was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut req = ifreq(name);
    // SAFETY: valid fd and ifreq.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) })
        .with_context(|| format!("cannot read the MTU of {name}"))?;
    // SAFETY: SIOCGIFMTU fills ifru_mtu.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).with_context(|| format!("{name} reports a negative MTU"))
}
