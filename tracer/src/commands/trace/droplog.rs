//! The drop log: every dropped packet that matches the filter, one line each. This is what
//! `tracer trace` prints without a sandbox to model a path against.
use std::time::Duration;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tracer_common::Event;
use tracer_model::net::addr;

use crate::{
    cli::TraceArgs,
    events::decode::{Clock, Names, decode, ifname},
    output::{Format, Output},
    report::{Tuple, flags_str, hms},
};

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
    /// Events the kernel could not queue since the previous record (ring buffer full).
    pub lost_events: u64,
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
            lost_events: 0,
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

/// Prints each dropped packet until the duration ends or a signal arrives. Returns how many.
pub async fn run(
    events: RingBuf<MapData>,
    programs: &crate::attach::bpf::Programs,
    mut names: Names,
    args: &TraceArgs,
    mut out: Output,
) -> Result<u64> {
    let clock = Clock::new();
    let mut fd = crate::events::decode::ring_fd(events)?;
    let stop_signal = crate::events::decode::stop_signal()?;
    tokio::pin!(stop_signal);
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    eprintln!(
        "tracer: attached; following TCP port {} — Ctrl-C to stop",
        args.ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut count = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut lost_seen, mut lost_unreported, mut decode_errors) = (0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let lost = programs.lost_events().unwrap_or(lost_seen);
                if lost > lost_seen {
                    eprintln!("tracer: {} events lost (ring buffer full; {lost} in all)", lost - lost_seen);
                    lost_unreported += lost - lost_seen;
                    lost_seen = lost;
                }
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(ev) = decode(&item) else {
                        decode_errors += 1;
                        continue;
                    };
                    let mut rec = DropRecord::new(&ev, &mut names, &clock);
                    rec.lost_events = std::mem::take(&mut lost_unreported);
                    match out.format {
                        Format::Json => out.json_line(&rec)?,
                        Format::Text => {
                            let line = format!("{}\n", rec.line(&ev));
                            let line = out.plain(&line).into_owned();
                            out.text(&line)?
                        }
                    }
                    count += 1;
                }
                guard.clear_ready();
            }
            _ = &mut stop_signal => break,
            _ = &mut deadline => break,
        }
    }
    if decode_errors > 0 {
        eprintln!("tracer: {decode_errors} event records could not be decoded (a bug)");
    }
    Ok(count)
}
