//! One hop of a journey as JSON, and the names and details the text output shows for it.
use serde::{Deserialize, Serialize};
use tracer_model::{
    hop::{Hop, HopKind},
    journey::Leg,
};

use super::{
    deep::DeepRecord,
    format::{Tuple, flags_str},
};

/// One hop in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HopRecord {
    /// µs since the journey's first event.
    pub t_us: f64,
    pub leg: Leg,
    pub netns: String,
    pub device: Option<String>,
    /// e.g. `tcx/ingress`, `nf/FORWARD`, `drop`, `xmit`.
    pub point: String,
    pub tuple: Option<String>,
    pub flags: Option<String>,
    pub detail: Option<String>,
    /// Deep mode (`--deep`): the packet and skb at this hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep: Option<DeepRecord>,
}

pub fn point_name(h: &Hop) -> String {
    match &h.kind {
        HopKind::Drop { .. } => "drop".into(),
        HopKind::Consumed => "consumed".into(),
        HopKind::Tcx { ingress: true } => "tcx/ingress".into(),
        HopKind::Tcx { ingress: false } => "tcx/egress".into(),
        HopKind::Xmit => "xmit".into(),
        HopKind::Receive => "receive".into(),
        HopKind::Netfilter { hook, .. } => format!("nf/{}", hook.name()),
        HopKind::Socket { .. } => "socket".into(),
        HopKind::SendReset { .. } => "send-reset".into(),
        HopKind::RecvReset => "recv-reset".into(),
        HopKind::Route { .. } => "route".into(),
        HopKind::Neigh { .. } => "neigh".into(),
    }
}

pub fn detail(h: &Hop) -> Option<String> {
    match &h.kind {
        HopKind::Drop { reason } => Some(format!(
            "{reason}{}",
            h.location
                .as_ref()
                .map(|l| format!(" at {l}"))
                .unwrap_or_default()
        )),
        HopKind::Consumed => h.location.as_ref().map(|l| format!("freed normally at {l}")),
        HopKind::Netfilter {
            priority,
            slot,
            in_dev,
            out_dev,
            ..
        } => Some(format!(
            "{}{}",
            match *slot as usize {
                0 => "entered the hook".to_string(),
                s if s + 1 == tracer_common::NF_SLOT_PRIORITIES.len() => "passed every table".to_string(),
                _ => format!("passed priority {priority}"),
            },
            match (in_dev, out_dev) {
                (Some(i), Some(o)) => format!(", {i} → {o}"),
                (Some(i), None) => format!(", in {i}"),
                (None, Some(o)) => format!(", out {o}"),
                _ => String::new(),
            }
        )),
        HopKind::Socket { old, new, .. } => Some(format!("{old} → {new}")),
        HopKind::SendReset { reason } => Some(format!("stack answers RST ({reason})")),
        HopKind::RecvReset => Some("socket received RST".into()),
        HopKind::Route { table, error, .. } => Some(if *error == 0 {
            format!("table {table}: found")
        } else {
            format!("table {table}: no route (err {error})")
        }),
        HopKind::Neigh {
            address, old, new, ..
        } => Some(format!("{address}: {old} → {new}")),
        _ => None,
    }
}

/// One hop as JSON; `deep`: with deep mode's packet and skb facts.
pub fn hop_record(leg: Leg, h: &Hop, t0: u64, deep: bool) -> HopRecord {
    HopRecord {
        t_us: (h.ts_ns.saturating_sub(t0)) as f64 / 1000.0,
        leg,
        netns: h.ns_label(),
        device: h.device.clone(),
        point: point_name(h),
        tuple: h.is_packet().then(|| Tuple(&h.pkt).to_string()),
        flags: h.is_packet().then(|| flags_str(h.pkt.flags)),
        detail: detail(h),
        deep: h.deep.as_deref().filter(|_| deep).map(DeepRecord::from_hop),
    }
}
