//! The agent's side, run by `lab-agent` inside the target's namespace: load, attach, hold,
//! release.
use std::{
    fs::File,
    os::fd::{AsRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Kind, Ready, Spec, Target,
    asm::{self, PacketHook},
    sys::{self, Load},
    tc::{self, TcFilter},
};

// enum bpf_prog_type
const PROG_TYPE_SCHED_CLS: u32 = 3;
const PROG_TYPE_XDP: u32 = 6;
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
// enum bpf_attach_type
const CGROUP_INET4_CONNECT: u32 = 10;
const XDP: u32 = 37;
const TCX_INGRESS: u32 = 46;
const TCX_EGRESS: u32 = 47;
// Verdicts.
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const TC_ACT_SHOT: i32 = 2;
/// TCX_NEXT, and TC_ACT_UNSPEC for cls_bpf: let the next program (or the stack) decide.
const TC_NEXT: i32 = -1;
const XDP_FLAGS_SKB_MODE: u32 = 2;

/// A program attached; dropping it detaches (the link fd closes; a tc filter is deleted).
pub struct Attached {
    /// Held so the holder's fdinfo shows the program too (for tc it is all there is).
    _prog: OwnedFd,
    _link: Option<OwnedFd>,
    tc: Option<TcFilter>,
    pub ready: Ready,
}

impl Attached {
    /// Detaches now, reporting a tc filter that could not be deleted.
    pub fn release(mut self) -> Result<()> {
        match self.tc.take() {
            Some(f) => f.remove(None),
            None => Ok(()),
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(f) = self.tc.take()
            && let Err(e) = f.remove(None)
        {
            eprintln!("lab-agent: {e:#}");
        }
    }
}

/// Loads and attaches `spec`'s program. Device kinds act on the current network namespace:
/// the caller has entered the target's.
pub fn attach(spec: &Spec) -> Result<Attached> {
    match (&spec.target, spec.kind) {
        (Target::Cgroup(path), Kind::CgroupConnect4) => {
            let dir = File::open(path).with_context(|| format!("open cgroup {}", path.display()))?;
            connect4(spec, OwnedFd::from(dir))
        }
        (Target::Device { dev, .. }, kind) if kind.on_device() => on_device(spec, dev),
        _ => bail!("{} cannot attach to {:?}", spec.kind.name(), spec.target),
    }
}

fn on_device(spec: &Spec, dev: &str) -> Result<Attached> {
    let ifindex = ifindex(dev)?;
    let mut a = match spec.kind {
        Kind::Xdp => xdp(spec, ifindex)?,
        Kind::TcxIngress => tcx(spec, ifindex, TCX_INGRESS)?,
        Kind::TcxEgress => tcx(spec, ifindex, TCX_EGRESS)?,
        Kind::TcIngress => classic_tc(spec, dev, "ingress")?,
        Kind::TcEgress => classic_tc(spec, dev, "egress")?,
        Kind::CgroupConnect4 => unreachable!("a cgroup kind"),
    };
    a.ready.ifindex = Some(ifindex);
    Ok(a)
}

fn ifindex(dev: &str) -> Result<u32> {
    let c = std::ffi::CString::new(dev)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()).with_context(|| format!("no device {dev}")),
        i => Ok(i),
    }
}

/// Drops port P at the driver (or generic) hook, before the stack sees the frame.
fn xdp(spec: &Spec, ifindex: u32) -> Result<Attached> {
    let hook = PacketHook {
        data: asm::XDP_CTX.0,
        data_end: asm::XDP_CTX.1,
        on_match: if spec.inert { XDP_PASS } else { XDP_DROP },
        otherwise: XDP_PASS,
    };
    let prog = load(spec, PROG_TYPE_XDP, XDP, &asm::tcp_port_filter(hook, spec.port))?;
    // Flags 0 lets the kernel pick the driver's mode (veth and tap have one); generic is the
    // fallback any device takes.
    let (link, flags) = match sys::link_create(&prog, ifindex, XDP, 0) {
        Ok(l) => (l, 0),
        Err(native) => {
            let l = sys::link_create(&prog, ifindex, XDP, XDP_FLAGS_SKB_MODE)
                .with_context(|| format!("XDP link (driver mode: {native}; generic mode)"))?;
            (l, XDP_FLAGS_SKB_MODE)
        }
    };
    let mut a = held(spec, prog, Some(link), None)?;
    a.ready.xdp_flags = Some(flags);
    Ok(a)
}

/// The __sk_buff program tcx and cls_bpf share: SHOT for port P, else on to the next.
fn sched_cls(spec: &Spec, attach_type: u32) -> Result<OwnedFd> {
    let hook = PacketHook {
        data: asm::SKB_CTX.0,
        data_end: asm::SKB_CTX.1,
        on_match: if spec.inert { TC_NEXT } else { TC_ACT_SHOT },
        otherwise: TC_NEXT,
    };
    load(
        spec,
        PROG_TYPE_SCHED_CLS,
        attach_type,
        &asm::tcp_port_filter(hook, spec.port),
    )
}

fn tcx(spec: &Spec, ifindex: u32, attach_type: u32) -> Result<Attached> {
    let prog = sched_cls(spec, attach_type)?;
    let link = sys::link_create(&prog, ifindex, attach_type, 0).context("tcx link")?;
    held(spec, prog, Some(link), None)
}

fn classic_tc(spec: &Spec, dev: &str, direction: &str) -> Result<Attached> {
    let prog = sched_cls(spec, 0)?;
    let filter = tc::add(dev, direction, &prog)?;
    // The filter outlives this process unless deleted: on any error too.
    held(spec, prog, None, Some(filter.clone())).inspect_err(|_| {
        let _ = filter.remove(None);
    })
}

/// Refuses connect() to port P from the cgroup's sockets.
fn connect4(spec: &Spec, cgroup: OwnedFd) -> Result<Attached> {
    let deny = if spec.inert { 1 } else { 0 };
    let insns = asm::connect4_filter(spec.port, deny);
    let prog = load(spec, PROG_TYPE_CGROUP_SOCK_ADDR, CGROUP_INET4_CONNECT, &insns)?;
    let target = cgroup.as_raw_fd() as u32;
    let link = sys::link_create(&prog, target, CGROUP_INET4_CONNECT, 0).context("cgroup link")?;
    held(spec, prog, Some(link), None)
}

fn load(spec: &Spec, prog_type: u32, expected_attach_type: u32, insns: &[asm::Insn]) -> Result<OwnedFd> {
    sys::prog_load(&Load {
        prog_type,
        expected_attach_type,
        name: spec.prog_name(),
        insns,
    })
}

/// What the kernel says of it, as the ready line reports it.
fn held(spec: &Spec, prog: OwnedFd, link: Option<OwnedFd>, tc: Option<TcFilter>) -> Result<Attached> {
    let info = sys::prog_info(&prog).context("prog info")?;
    let link_id = link.as_ref().map(sys::link_id).transpose().context("link info")?;
    let ready = Ready {
        ready: true,
        prog_id: info.id,
        link_id,
        name: info.name,
        tag: info.tag,
        kind: spec.kind,
        attach_type: spec.kind.attach_type().to_string(),
        ifindex: None,
        xdp_flags: None,
        tc: tc.clone(),
    };
    Ok(Attached {
        _prog: prog,
        _link: link,
        tc,
        ready,
    })
}
