//! What a judge reads at a verdict besides the inventory: both sides' network state, the
//! routing point of each leg, the tap's reader; and the host side's inventory shared by a
//! watcher's judges.
use std::{collections::HashMap, sync::Arc};

use tracer_model::{engine::inventory::NsInventory, facts::ReaderFact};

use crate::{
    report::deep::RoutingPoint,
    system::{netns::Netns, netstate},
};

/// How long a host side's inventory serves the verdicts of other sandboxes.
const HOST_FRESH_NS: u64 = 2_000_000_000;

/// Host-side inventories shared by every judge of a watcher: all sandboxes of a node have the
/// same host side, and in a failure storm each verdict would read it (its rulesets, its
/// hundreds of links) again. One is reused only when it was read after the journey was
/// decided, so its counters include what the journey's packets did.
#[derive(Default)]
pub struct HostCache(std::sync::Mutex<HashMap<u32, (u64, Arc<NsInventory>)>>);

impl HostCache {
    pub(super) fn get(&self, inode: u32, not_before_ns: u64, now_ns: u64) -> Option<NsInventory> {
        let map = self.0.lock().ok()?;
        let (at, inv) = map.get(&inode)?;
        (*at >= not_before_ns && now_ns.saturating_sub(*at) < HOST_FRESH_NS).then(|| (**inv).clone())
    }

    pub(super) fn put(&self, inode: u32, at_ns: u64, inv: &NsInventory) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(inode, (at_ns, Arc::new(inv.clone())));
        }
    }
}

/// The network state of both sides of the path, as read for one journey.
pub(super) struct Snapshots {
    pub(super) host: Option<netstate::Snapshot>,
    pub(super) sandbox: Option<netstate::Snapshot>,
}

/// The route a namespace has for `dst` and the neighbour entry of its next hop.
pub(super) fn routing_point(
    snap: &netstate::Snapshot,
    ns: &Netns,
    direction: &str,
    dst: std::net::Ipv4Addr,
) -> RoutingPoint {
    let dev = |i: Option<u32>| {
        i.and_then(|i| snap.link_by_index(i))
            .map_or("?".to_string(), |l| l.name.clone())
    };
    let route = snap.route_to(dst);
    let next = route.and_then(|r| r.gateway).unwrap_or(dst);
    let neighbour = route.and_then(|r| {
        snap.neighbours
            .iter()
            .find(|n| n.addr == next && Some(n.ifindex) == r.oif)
    });
    RoutingPoint {
        netns: ns.label(),
        direction: direction.into(),
        destination: dst.to_string(),
        route: route.map(|r| {
            format!(
                "{}/{}{} dev {} ({})",
                r.dst,
                r.prefix,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                dev(r.oif),
                r.kind
            )
        }),
        neighbour: neighbour.map(|n| {
            format!(
                "{} lladdr {} {} on {}",
                n.addr,
                n.mac.as_deref().unwrap_or("-"),
                n.state,
                dev(Some(n.ifindex))
            )
        }),
    }
}

/// The VMM process as /proc shows it now; None when it is gone.
pub(super) fn reader(pid: u32, tap: &str) -> Option<ReaderFact> {
    let stat = crate::system::proc::stat(pid).filter(|s| !s.is_dead())?;
    Some(ReaderFact {
        pid,
        comm: stat.comm,
        state: stat.state,
        holds_tap: crate::discovery::sandbox::taps_held_by(pid)
            .iter()
            .any(|t| t == tap),
    })
}
