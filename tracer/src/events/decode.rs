//! Decoding kernel events into hops, naming what they refer to (drop and RST reasons from
//! BTF, kernel functions from kallsyms, namespaces from /var/run/netns), and the kernel clock.
use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracer_common::{CT_NONE, Deep, DeepEvent, Event, NF_SLOT_PRIORITIES, SNAP_LEN, point};
use tracer_model::{
    deep::{CtRef, HopDeep},
    hook::Hook,
    hop::{Hop, HopKind},
    net::addr,
    path::slot_window,
    reason::DropReason,
    tcp::{nud_name, tcp_state_name},
};

use crate::{
    attach::bpf::{btf::ReasonNames, kallsyms::Kallsyms},
    system::netns,
};

/// Decodes one ring buffer record: an [`Event`], or the event part of a [`DeepEvent`]. None
/// when the size is wrong (a bug, never silent: the caller counts it).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != size_of::<Event>() && bytes.len() != size_of::<DeepEvent>() {
        return None;
    }
    // SAFETY: both records start with an Event, plain-old-data; unaligned read.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// The kernel's frames of a stack taken in a tracepoint program: what comes before the
/// tracepoint's `bpf_trace_run*` is the tracer's own program, not the kernel's path.
fn kernel_frames(frames: Vec<String>) -> Vec<String> {
    match frames.iter().position(|f| f.starts_with("bpf_trace_run")) {
        Some(i) => frames[i + 1..].to_vec(),
        None => frames,
    }
}

/// What deep mode adds to a record (None for a plain event). `stack` symbolizes a stack id.
pub fn decode_deep(bytes: &[u8], names: &Names, stack: impl Fn(u32) -> Vec<u64>) -> Option<Box<HopDeep>> {
    if bytes.len() != size_of::<DeepEvent>() {
        return None;
    }
    // SAFETY: a DeepEvent is plain-old-data of exactly this size; unaligned read.
    let d: Deep = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DeepEvent>()) }.deep;
    let ct = (d.ct_info != CT_NONE).then_some(CtRef {
        info: d.ct_info,
        status: d.ct_status,
        zone: u16::try_from(d.ct_zone).ok(),
        mark: d.ct_mark,
    });
    let stack = u32::try_from(d.stack_id)
        .map(|id| {
            kernel_frames(
                stack(id)
                    .into_iter()
                    .map(|ip| names.kallsyms.describe(ip))
                    .collect(),
            )
        })
        .unwrap_or_default();
    let n = (d.snap_len as usize).min(SNAP_LEN);
    Some(Box::new(HopDeep {
        len: d.len,
        mark: d.mark,
        ct,
        stack,
        snap: d.snap[..n].to_vec(),
        l3_off: d.l3_off,
    }))
}

/// The device name carried in an event.
pub fn ifname(ev: &Event) -> String {
    let end = ev.ifname.iter().position(|&b| b == 0).unwrap_or(ev.ifname.len());
    String::from_utf8_lossy(&ev.ifname[..end]).into_owned()
}

/// The hop a kernel event records, named; None for events of no known kind.
pub fn hop_from_event(ev: &Event, names: &mut Names) -> Option<Hop> {
    let kind = hop_kind(ev, names)?;
    let dev = ifname(ev);
    let (location, function) = match ev.point {
        point::DROP | point::CONSUME if ev.location != 0 => (
            Some(names.kallsyms.describe(ev.location)),
            names.kallsyms.function(ev.location),
        ),
        _ => (None, None),
    };
    Some(Hop {
        ts_ns: ev.ts_ns,
        netns: ev.netns,
        netns_name: names.netns(ev.netns),
        ifindex: ev.ifindex,
        device: (!dev.is_empty()).then_some(dev),
        kind,
        pkt: ev.pkt,
        skb: ev.skb,
        sk: ev.sk,
        location,
        function,
        deep: None,
    })
}

fn hop_kind(ev: &Event, names: &Names) -> Option<HopKind> {
    Some(match ev.point {
        point::DROP => HopKind::Drop {
            reason: DropReason::new(names.reasons.drop_name(ev.reason)),
        },
        point::CONSUME => HopKind::Consumed,
        point::TCX_INGRESS => HopKind::Tcx { ingress: true },
        point::TCX_EGRESS => HopKind::Tcx { ingress: false },
        point::XMIT => HopKind::Xmit,
        point::RECEIVE => HopKind::Receive,
        point::NETFILTER => {
            let hook = Hook::from_num(ev.hook)?;
            HopKind::Netfilter {
                hook,
                slot: ev.slot,
                priority: *NF_SLOT_PRIORITIES.get(ev.slot as usize)?,
                in_ifindex: ev.aux,
                out_ifindex: ev.aux2,
                window_end: slot_window(hook, ev.slot).1,
                in_dev: None,
                out_dev: None,
            }
        }
        point::SOCK_STATE => HopKind::Socket {
            old: tcp_state_name(ev.aux),
            new: tcp_state_name(ev.reason),
            old_state: ev.aux,
            new_state: ev.reason,
        },
        point::SEND_RESET => HopKind::SendReset {
            reason: names
                .reasons
                .rst
                .get(&ev.reason)
                .cloned()
                .unwrap_or_else(|| format!("reason#{}", ev.reason)),
        },
        point::RECV_RESET => HopKind::RecvReset,
        point::FIB_LOOKUP => HopKind::Route {
            table: ev.aux,
            error: ev.reason as i32,
            iif: ev.aux2,
        },
        point::NEIGH => HopKind::Neigh {
            address: addr(ev.pkt.daddr),
            old: nud_name(ev.aux),
            new: nud_name(ev.reason),
            new_state: ev.reason,
        },
        _ => return None,
    })
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    /// Wall clock minus monotonic clock, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Self {
            offset_ns: wall - mono,
        }
    }

    /// Monotonic ns now (same clock as bpf_ktime_get_ns).
    pub fn now_mono_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u64;
        UNIX_EPOCH + Duration::from_nanos(ns)
    }

    /// Unix time in ns.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything needed to put names on events: drop reasons, kernel symbols, namespace names.
pub struct Names {
    pub reasons: ReasonNames,
    pub kallsyms: Kallsyms,
    netns: HashMap<u32, String>,
    /// When /var/run/netns was last read: an unnamed namespace (production's root one) must
    /// not cost a directory scan per event.
    netns_read: std::time::Instant,
}

/// How often an unknown namespace inode may trigger a re-read of /var/run/netns.
const NETNS_REREAD: Duration = Duration::from_secs(1);

impl Names {
    pub fn new(reasons: ReasonNames, kallsyms: Kallsyms) -> Self {
        Self::with_netns(reasons, kallsyms, netns::names())
    }

    /// With the namespace names given (tests and fuzzing: no directory is read until a second
    /// has passed).
    pub fn with_netns(reasons: ReasonNames, kallsyms: Kallsyms, netns: HashMap<u32, String>) -> Self {
        Self {
            reasons,
            kallsyms,
            netns,
            netns_read: std::time::Instant::now(),
        }
    }

    /// Name of a namespace inode (re-reading /var/run/netns, at most once a second, for
    /// ones created since).
    pub fn netns(&mut self, inode: u32) -> Option<String> {
        if inode == 0 {
            return None;
        }
        if !self.netns.contains_key(&inode) && self.netns_read.elapsed() >= NETNS_REREAD {
            self.netns = netns::names();
            self.netns_read = std::time::Instant::now();
        }
        match self.netns.get(&inode) {
            Some(name) => Some(name.clone()),
            // The node's root namespace has no name under /var/run/netns.
            None if netns::root_inode() == Some(inode) => Some(netns::ROOT_LABEL.to_string()),
            None => None,
        }
    }
}

/// The event ring buffer as something tokio can wait on.
pub fn ring_fd(
    events: aya::maps::RingBuf<aya::maps::MapData>,
) -> anyhow::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    unsafe { tokio::io::unix::AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("poll ring buffer: {e}"))
}

/// The event loop's runtime (one thread) with [`stop_signal`] installed in it.
pub fn runtime_with_stop() -> anyhow::Result<(tokio::runtime::Runtime, impl std::future::Future<Output = ()>)>
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = {
        let _context = rt.enter();
        stop_signal()?
    };
    Ok((rt, stop))
}

/// Resolves at the first SIGINT, SIGTERM, SIGHUP (a lost ssh session) or SIGQUIT: each ends
/// a trace cleanly (links detach when the programs drop, temporary nft tables are removed).
/// The handlers are installed by this call, before anything is awaited, so a signal right
/// after "attached" is never lost to the default action.
pub fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = quit.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event kind of the hook table has a decoder (a hook is its program, its decoder
    /// and its row).
    #[test]
    fn every_hook_of_the_table_decodes() {
        let mut names = Names::with_netns(Default::default(), Kallsyms::parse(""), HashMap::new());
        for h in tracer_common::hooks::HOOKS {
            let ev = Event {
                point: h.point,
                ..Default::default()
            };
            assert!(
                hop_from_event(&ev, &mut names).is_some(),
                "{}: no decoder for point {}",
                h.name,
                h.point
            );
        }
    }

    #[test]
    fn decode_checks_the_size() {
        assert!(decode(&[0u8; 10]).is_none());
        let ev = Event {
            point: point::DROP,
            reason: 12,
            ..Default::default()
        };
        // SAFETY: viewing a POD struct as bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), size_of::<Event>()) };
        let back = decode(bytes).unwrap();
        assert_eq!((back.point, back.reason), (point::DROP, 12));
    }

    #[test]
    fn deep_records_carry_bytes_conntrack_and_the_kernel_part_of_the_stack() {
        let mut rec = DeepEvent {
            ev: Event {
                point: point::DROP,
                ..Default::default()
            },
            deep: Deep {
                len: 60,
                mark: 7,
                ct_info: 2,
                ct_status: 1 << 5,
                ct_mark: 0,
                ct_zone: 3,
                stack_id: 4,
                snap_len: 3,
                l3_off: 0,
                snap: [0xab; SNAP_LEN],
            },
        };
        // SAFETY: viewing a POD struct as bytes.
        let bytes = |r: &DeepEvent| {
            unsafe {
                std::slice::from_raw_parts((r as *const DeepEvent).cast::<u8>(), size_of::<DeepEvent>())
            }
            .to_vec()
        };
        let names = Names::with_netns(
            ReasonNames::default(),
            Kallsyms::parse("ffffffff81000000 T bpf_trace_run2\nffffffff81a00000 t nf_hook_slow\n"),
            HashMap::new(),
        );
        let stack = |id: u32| {
            assert_eq!(id, 4);
            vec![
                0xffff_ffff_c000_0000,
                0xffff_ffff_8100_0010,
                0xffff_ffff_81a0_0043,
            ]
        };
        assert_eq!(decode(&bytes(&rec)).unwrap().point, point::DROP);
        let d = decode_deep(&bytes(&rec), &names, stack).unwrap();
        assert_eq!(
            (d.len, d.mark, d.snap.as_slice()),
            (60, 7, &[0xab, 0xab, 0xab][..])
        );
        let ct = d.ct.unwrap();
        assert_eq!(
            (ct.state(), ct.zone, ct.status_names()),
            ("NEW", Some(3), vec!["DST_NAT"])
        );
        assert_eq!(d.stack, ["nf_hook_slow+0x43"], "the tracer's own frames are cut");
        rec.deep.ct_info = CT_NONE;
        rec.deep.stack_id = -1;
        let d = decode_deep(&bytes(&rec), &names, |_| unreachable!()).unwrap();
        assert!(d.ct.is_none() && d.stack.is_empty());
        assert!(decode_deep(&bytes(&rec)[..size_of::<Event>()], &names, |_| vec![]).is_none());
    }
}

/// What completes a netfilter hop: where its slot sits (the priority window) and the names
/// of its in/out devices, per namespace. Filled as programs attach.
#[derive(Debug, Clone, Default)]
pub struct Places {
    pub nf_layout: crate::attach::bpf::NfLayout,
    /// ifindex → device name, per namespace inode.
    pub ifnames: std::collections::HashMap<u32, std::collections::HashMap<u32, String>>,
}

impl Places {
    /// Fills in a netfilter hop's priority window and device names.
    pub fn name(&self, mut hop: Hop) -> Hop {
        if let HopKind::Netfilter {
            hook,
            slot,
            priority,
            window_end,
            in_ifindex,
            out_ifindex,
            in_dev,
            out_dev,
        } = &mut hop.kind
        {
            let (ns, h) = (hop.netns, *hook as u8);
            if let Some(p) = self.nf_layout.priority(ns, h, *slot) {
                *priority = p;
            }
            if let Some(end) = self.nf_layout.window_end(ns, h, *slot) {
                *window_end = end;
            }
            if let Some(names) = self.ifnames.get(&hop.netns) {
                *in_dev = names.get(in_ifindex).cloned();
                *out_dev = names.get(out_ifindex).cloned();
            }
        }
        hop
    }
}
