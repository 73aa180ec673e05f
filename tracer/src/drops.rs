//! The drop log: every dropped packet that matches the filter, one line each. This is what
//! `tracer trace` prints without a sandbox to model a path against.
use serde::Serialize;
use tracer_common::Event;

use crate::events::{Clock, Names, Tuple, addr, flags_str, hms, ifname};

/// One dropped packet, named.
#[derive(Debug, Serialize)]
pub struct DropRecord {
    pub time: String,
    pub ts_unix_ns: u64,
    pub netns: NetnsRef,
    pub device: Option<String>,
    pub saddr: String,
    pub sport: u16,
    pub daddr: String,
    pub dport: u16,
    pub flags: String,
    pub reason: String,
    pub location: String,
    pub function: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NetnsRef {
    pub inode: u32,
    pub name: Option<String>,
}

impl DropRecord {
    pub fn new(ev: &Event, names: &mut Names, clock: &Clock) -> Self {
        let unix = clock.unix_ns(ev.ts_ns);
        let dev = ifname(ev);
        Self {
            time: hms(unix),
            ts_unix_ns: unix,
            netns: NetnsRef {
                inode: ev.netns,
                name: names.netns(ev.netns),
            },
            device: (!dev.is_empty()).then_some(dev),
            saddr: addr(ev.pkt.saddr).to_string(),
            sport: ev.pkt.sport,
            daddr: addr(ev.pkt.daddr).to_string(),
            dport: ev.pkt.dport,
            flags: flags_str(ev.pkt.flags),
            reason: names.reasons.drop_name(ev.reason),
            location: names.kallsyms.describe(ev.location),
            function: names.kallsyms.function(ev.location),
        }
    }

    /// One human line.
    pub fn line(&self, ev: &Event) -> String {
        let ns = match &self.netns.name {
            Some(n) => format!("{n} ({})", self.netns.inode),
            None => format!("netns {}", self.netns.inode),
        };
        format!(
            "{}  {ns}  {}  {} [{}]  {}  at {}",
            self.time,
            self.device.as_deref().unwrap_or("-"),
            Tuple(&ev.pkt),
            self.flags,
            self.reason,
            self.location
        )
    }
}
