//! What detection saw: attempts that failed or came late, drops of a sandbox's packets; a
//! failed attempt opens an incident and asks for a zoom-in (or says at once why nothing can
//! be followed).
use super::*;

impl Watcher {
    pub(super) fn detected(&mut self, d: Detected, zoomed: bool) -> Result<()> {
        match d {
            Detected::Attempt(a) => {
                if self.registry.stale_for_host_ip(a.target, a.syn_ns) {
                    // A sandbox the scanner has not seen yet (a slot just handed over).
                    if self.unattributed.len() < MAX_UNATTRIBUTED {
                        let _ = self.ask_scan.send(());
                        self.unattributed
                            .push((a, Clock::now_mono_ns() + ATTRIBUTE_WAIT_NS));
                    }
                    return Ok(());
                }
                self.attempt(a)
            }
            Detected::Late(l) => {
                self.count_attempt("late");
                let key = self
                    .registry
                    .by_host_ip(l.target, Clock::now_mono_ns())
                    .map(|e| e.key);
                if let Some(key) = key {
                    self.incidents.late(key, l.reply_ms);
                }
                Ok(())
            }
            Detected::Drop { reason, hop } => {
                self.remember_drop(&reason, &hop);
                // A zoomed sandbox's drops are counted from its verdicts, with their place.
                if !zoomed && let Some(m) = self.metrics() {
                    m.drops
                        .get_or_create(&DropLabels {
                            netns_kind: self.netns_kind(hop.netns, hop.ts_ns).into(),
                            hook: "unknown".into(),
                            table: "unknown".into(),
                            reason: reason.name().into(),
                        })
                        .inc();
                }
                Ok(())
            }
        }
    }

    /// Keeps a detected drop on the incident of the sandbox it belongs to (by namespace, else
    /// by the host IP it was to or from).
    pub(super) fn remember_drop(&mut self, reason: &tracer_model::reason::DropReason, hop: &Hop) {
        let at = hop.ts_ns;
        let by_addr = |r: &Registry| {
            r.by_host_ip(hop.dst(), at)
                .or_else(|| r.by_host_ip(hop.src(), at))
                .map(|e| e.key)
        };
        let key = self
            .registry
            .by_netns(hop.netns, at)
            .map(|e| e.key)
            .or_else(|| by_addr(&self.registry));
        let Some(key) = key else { return };
        let mut hop = hop.clone();
        hop.kind = tracer_model::hop::HopKind::Drop {
            reason: reason.clone(),
        };
        let leg = if hop.pkt.dport == self.args.port {
            tracer_model::journey::Leg::Request
        } else {
            tracer_model::journey::Leg::Reply
        };
        self.incidents.drop_seen(key, incidents::SeenDrop { leg, hop });
    }

    /// The engine's record of a sandbox's failed attempts that were not followed (`why`),
    /// from the drop detection saw of them, if any.
    pub(super) fn not_followed(&self, key: Key, why: String) -> crate::report::record::JourneyRecord {
        let seen = self.incidents.seen_drop(&key).map(|d| (d.leg, d.hop));
        let target = self
            .incidents
            .get(&key)
            .and_then(|i| i.sandbox.host_ip.parse().ok())
            .map(|ip| (ip, self.args.port));
        crate::engine::judge::detection_record(seen, target, why, Clock::now_mono_ns())
    }

    pub(super) fn netns_kind(&self, inode: u32, at_ns: u64) -> &'static str {
        if self.is_host_ns(inode) {
            "host"
        } else if self.registry.by_netns(inode, at_ns).is_some() {
            "sandbox"
        } else {
            "other"
        }
    }

    pub(super) fn count_attempt(&self, outcome: &str) {
        if let Some(m) = self.metrics() {
            m.attempts
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc();
        }
    }

    /// One attributed attempt: a success may resolve an incident, a failure opens one.
    pub(super) fn attempt(&mut self, a: tracer_model::attempts::Attempt) -> Result<()> {
        let Some(e) = self.registry.by_host_ip(a.target, a.syn_ns).cloned() else {
            self.count_attempt(end_name(a.end));
            return Ok(());
        };
        self.count_attempt(end_name(a.end));
        let now_unix = self.clock.unix_ns(a.end_ns);
        match a.end {
            End::Connected => {
                if let Some(r) = self.incidents.success(e.key, now_unix) {
                    self.print(&r)?;
                }
                // A zoom-in that waited for this sandbox is not needed any more.
                self.queue.retain(|k| *k != e.key);
            }
            End::GaveUp | End::Refused => {
                let sb = sandbox_ref(&e, a.target);
                if self
                    .incidents
                    .failure(e.key, sb, a.end, self.clock.unix_ns(a.syn_ns))
                {
                    self.open(&e)?;
                }
            }
        }
        self.gauges();
        Ok(())
    }

    /// A new incident: zoom in, or say at once why nothing can be followed.
    pub(super) fn open(&mut self, e: &Entry) -> Result<()> {
        if let Some(why) = unreachable_sandbox(e) {
            let now = Clock::now_mono_ns();
            if let Some(v) = self.incidents.unlocalized(
                e.key,
                &self.not_followed(e.key, why),
                self.clock.unix_ns(now),
                now,
            ) {
                self.report(&v, None)?;
            }
            return Ok(());
        }
        if self.slots_used() < self.args.max_zoom {
            self.zoom(e.key, e.sandbox.clone());
        } else if self.queue.len() < MAX_QUEUE {
            self.queue.push_back(e.key);
            self.incidents.queued(e.key);
        }
        Ok(())
    }
}
