//! The one ring drain, for `trace` and the watcher alike: kernel records become named hops,
//! a bounded number per call so the event loop keeps answering timers and signals while the
//! kernel writes fast. Records that do not decode are counted (a bug, said at exit).
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tracer_model::hop::Hop;

use super::decode::{Names, Places, decode, decode_deep, hop_from_event};

/// Records turned into hops per call before the loop gets to run its other work.
pub const DRAIN_BUDGET: usize = 4096;

/// What turning records into hops needs, and what it counted.
pub struct Drain {
    pub names: Names,
    /// Slot priorities and device names, to complete netfilter hops.
    pub places: Places,
    /// Records that could not be decoded so far.
    pub decode_errors: u64,
    /// TRACER_DEBUG_EVENTS: every decoded event on stderr, for debugging the tracer itself.
    debug: bool,
}

impl Drain {
    pub fn new(names: Names, places: Places) -> Self {
        Self {
            names,
            places,
            decode_errors: 0,
            debug: std::env::var_os("TRACER_DEBUG_EVENTS").is_some(),
        }
    }

    /// Turns up to [`DRAIN_BUDGET`] records into hops, each handed to `sink`; `stack` reads a
    /// drop's kernel stack by id (deep mode). True when the ring is empty.
    pub fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        stack: impl Fn(u32) -> Vec<u64>,
        mut sink: impl FnMut(Hop) -> Result<()>,
    ) -> Result<bool> {
        for _ in 0..DRAIN_BUDGET {
            let Some(item) = ring.next() else {
                return Ok(true);
            };
            let Some(ev) = decode(&item) else {
                self.decode_errors += 1;
                continue;
            };
            let deep = decode_deep(&item, &self.names, &stack);
            // The ring's slot is given back before the hop is handled.
            drop(item);
            if let Some(mut hop) = hop_from_event(&ev, &mut self.names) {
                hop.deep = deep;
                if self.debug {
                    eprintln!("event: {hop:?}");
                }
                sink(self.places.name(hop))?;
            }
        }
        Ok(false)
    }
}
