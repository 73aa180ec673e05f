//! Zoom-ins as the loop sees them: asking the attacher, taking its answers, handing the
//! zoomed sandboxes' journeys to their judges, the judged verdicts and the incidents they
//! make, and the windows that end without one.
use super::*;

impl Watcher {
    pub(super) fn zoom(&mut self, key: Key, sandbox: Arc<crate::discovery::sandbox::Sandbox>) {
        self.incidents.localizing(key);
        self.zooms.insert(
            key,
            Zoom {
                sandbox: sandbox.clone(),
                asked_at: Instant::now(),
                attached: None,
                handed: false,
            },
        );
        // Others waiting too: a failure storm. Each tcx link waits for an RCU grace period
        // under the RTNL lock, which every judge's netlink read also needs; in a storm the
        // zoom-in follows the path by its netfilter hooks and the device tracepoints, and
        // says which devices it left without tcx.
        let tcx = self.queue.is_empty();
        let _ = self.to_attacher.send(Cmd::Zoom { key, sandbox, tcx });
        if let Some(m) = self.metrics() {
            m.zooms.inc();
        }
    }

    pub(super) fn unzoom(&mut self, key: Key) {
        if let Some(z) = self.zooms.remove(&key) {
            if !z.handed {
                let _ = self.to_attacher.send(Cmd::Unzoom(key));
            }
            let _ = self.to_judge.send(Work::Remove(key));
        }
        self.fill_slots();
    }

    /// Zooms in on the sandboxes waiting, while slots are free.
    fn fill_slots(&mut self) {
        while self.slots_used() < self.args.max_zoom {
            let Some(next) = self.queue.pop_front() else { break };
            let still = self
                .incidents
                .get(&next)
                .is_some_and(|i| i.state == incidents::State::Queued);
            if let (true, Some(e)) = (still, self.registry.get(&next).cloned()) {
                self.zoom(next, e.sandbox.clone());
            }
        }
        self.gauges();
    }

    pub(super) fn attacher_said(&mut self, r: Reply) -> Result<()> {
        match r {
            Reply::Zoomed {
                key,
                path,
                layout,
                ifnames,
                host_rules,
                blind_spots,
                took,
            } => {
                let Some(z) = self.zooms.get_mut(&key) else {
                    // Given up meanwhile.
                    let _ = self.to_attacher.send(Cmd::Unzoom(key));
                    return Ok(());
                };
                tracing::debug!(ms = took.as_millis() as u64, "zoomed in on {}", z.sandbox.label());
                self.drain.places.nf_layout = layout;
                self.drain.places.ifnames.extend(ifnames);
                let addrs: Vec<Ipv4Addr> = [Some(path.host_ip), path.host_veth_ip, path.ns_veth_ip]
                    .into_iter()
                    .flatten()
                    .collect();
                z.attached = Some(Attached {
                    host_ip: path.host_ip,
                    addrs,
                    netns: path.sandbox_ns.inode,
                    since_ns: Clock::now_mono_ns(),
                    until: Instant::now() + self.args.zoom_window,
                });
                let sb = (*z.sandbox).clone();
                let mut baseline = RuleBaseline::default();
                if let Some(r) = &sb.rules {
                    baseline.insert(sb.netns.inode, r.clone());
                }
                if let (Some(h), Some(rules)) = (path.host_inode(), host_rules) {
                    baseline.insert(h, rules);
                }
                if sb.host_ns.is_none()
                    && let Some(m) = self.metrics()
                {
                    m.host_side_unverified.inc();
                }
                let host_ns = sb.host_ns.clone();
                let out = Output::to_writer(Format::Json, Box::new(std::io::sink()));
                let reporter = Reporter::new(out, false, Some(&path)).with_blind_spots(blind_spots);
                let ns = sb.netns.clone();
                // The watcher follows the orchestrator's own attempts: it never probes.
                let judge = Judge::new(*path, sb, (host_ns, ns), None, reporter, baseline, false)
                    .for_watcher(self.host_cache.clone());
                let _ = self.to_judge.send(Work::Add(key, Box::new(judge)));
                self.gauges();
            }
            Reply::ZoomFailed { key, why } => {
                if let Some(m) = self.metrics() {
                    m.attach_failures.inc();
                }
                let now = Clock::now_mono_ns();
                let summary = format!("the tracer could not zoom in to follow them: {why}");
                if let Some(v) = self.incidents.unlocalized(
                    key,
                    &self.not_followed(key, summary),
                    self.clock.unix_ns(now),
                    now,
                ) {
                    self.report(&v, None)?;
                }
                self.zooms.remove(&key);
                self.unzoom(key);
            }
            Reply::Counters { lost, programs } => {
                if let Some(m) = self.metrics() {
                    metrics::catch_up(&m.events_lost, lost);
                    for (name, runs, ns) in programs {
                        let l = ProgramLabels { program: name };
                        metrics::catch_up(&m.program_runs.get_or_create(&l), runs);
                        let secs = m.program_run_seconds.get_or_create(&l);
                        let add = ns as f64 / 1e9 - secs.get();
                        if add > 0.0 {
                            secs.inc_by(add);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn judged(&mut self, d: Decided<Key>) -> Result<()> {
        if let Some(s) = d.shared {
            return self.shared(d.key, s);
        }
        let Some(r) = d.record.map(|r| *r) else {
            return Ok(());
        };
        if let (Some(m), Some(drop)) = (self.metrics(), &r.drop) {
            let netns_kind = match &r.sandbox {
                Some(s) if drop.netns.as_deref() == Some(s.netns.as_str()) => "sandbox",
                _ => "host",
            };
            m.drops
                .get_or_create(&DropLabels {
                    netns_kind: netns_kind.into(),
                    hook: drop.hook.map_or("none".into(), |h| h.name().to_string()),
                    table: drop.table.clone().unwrap_or_else(|| "none".into()),
                    reason: drop.reason.clone(),
                })
                .inc();
        }
        let now = Clock::now_mono_ns();
        if r.outcome == Outcome::Connected {
            // The zoom-in saw the sandbox answer: whatever failed before was passing.
            if let Some(v) = self.incidents.success(d.key, self.clock.unix_ns(now)) {
                self.print(&v)?;
            }
        } else if let Some(v) = self.incidents.localized(d.key, &r, self.clock.unix_ns(now), now) {
            self.report(&v, Some(&r))?;
            self.share(d.key, &r, d.host_inventory);
        }
        self.unzoom(d.key);
        Ok(())
    }

    /// A verdict whose cause is on the host side: the other sandboxes of that host side still
    /// waiting for theirs are handed to the judge thread, which confirms the actor on each
    /// one's own attempt (never by the verdict's signature alone).
    fn share(&mut self, from: Key, r: &JourneyRecord, inventory: Option<Arc<NsInventory>>) {
        let Some(inventory) = inventory else { return };
        let Some(source) = self.registry.get(&from).map(|e| e.sandbox.clone()) else {
            return;
        };
        let Some(host) = source.host_ns.as_ref() else {
            return;
        };
        let label = host.label();
        let Some(actor) = r
            .actors
            .iter()
            .find(|a| {
                a.role == Some(tracer_model::engine::Role::Cause)
                    && a.netns.as_deref() == Some(label.as_str())
            })
            .and_then(actor_of)
        else {
            return;
        };
        let candidates: Vec<(Key, share::Attempt)> = self
            .incidents
            .waiting()
            .filter(|k| *k != from)
            .filter_map(|k| {
                let sb = &self.registry.get(&k)?.sandbox;
                (sb.host_ns.as_ref()?.inode == host.inode).then_some(())?;
                let attempt = share::Attempt {
                    client: sb.host_veth_ip?,
                    host_ip: sb.host_ip?,
                    port: self.args.port,
                    host_veth: sb.host_veth.clone(),
                };
                Some((k, attempt))
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        if self.shared_sources.len() >= MAX_SHARED_SOURCES {
            self.shared_sources.clear();
        }
        self.shared_sources.insert(from, Arc::new(r.clone()));
        let _ = self.to_judge.send(Work::Confirm {
            from,
            actor: Box::new(actor),
            inventory,
            candidates,
        });
    }

    /// The judge thread confirmed another sandbox's host-side actor on this one: its incident
    /// rests on that confirmation.
    fn shared(&mut self, key: Key, s: Shared<Key>) -> Result<()> {
        let Some(source) = self.shared_sources.get(&s.from).cloned() else {
            return Ok(());
        };
        let target = self.registry.get(&key).and_then(|e| e.sandbox.host_ip);
        let record = shared_record(&source, &s, target.map(|ip| (ip, self.args.port)));
        let now = Clock::now_mono_ns();
        if let Some(v) = self
            .incidents
            .shared(key, &record, s.from, self.clock.unix_ns(now), now)
        {
            self.report(&v, Some(&record))?;
            if let Some(m) = self.metrics() {
                m.shared_localizations.inc();
            }
        }
        // Its zoom-in (if it had one) is no longer needed: the slot goes to the next.
        if self.zooms.contains_key(&key) {
            self.unzoom(key);
        }
        Ok(())
    }

    /// Writes an incident's report, prints it and counts it (the report exists by the time
    /// the line does; both have the record as stamped).
    pub(super) fn report(&mut self, v: &Value, record: Option<&JourneyRecord>) -> Result<()> {
        let v = &self.stamped(v);
        if let Some(rd) = &self.reports
            && let Err(e) = rd.write(v, record)
        {
            eprintln!("tracer: watch: report not written: {e:#}");
        }
        self.emit(v)?;
        if let Some(m) = self.metrics() {
            m.incidents
                .get_or_create(&OutcomeLabels {
                    outcome: v["outcome"].as_str().unwrap_or("unknown").into(),
                })
                .inc();
        }
        self.gauges();
        Ok(())
    }

    /// Journeys that are due, zoom-ins whose window ended, repeats, expiries.
    pub(super) fn timers(&mut self) -> Result<()> {
        let now = Clock::now_mono_ns();
        for j in self.correlator.take_due(now) {
            self.hand_over(j);
        }
        self.tracker.expire(now);
        let late: Vec<Key> = self
            .zooms
            .iter()
            .filter(|(_, z)| match &z.attached {
                // A handed one ends with its verdict; a judge that never answers, later.
                Some(a) if z.handed => Instant::now() >= a.until + self.args.zoom_window,
                Some(a) => Instant::now() >= a.until,
                // An attach that never answered.
                None => z.asked_at.elapsed() > self.args.zoom_window * 2,
            })
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.window_ended(key)?;
        }
        // Unattributed attempts whose scan never explained them are dropped (counted).
        self.unattributed.retain(|(a, deadline)| {
            let keep = now < *deadline;
            if !keep && let Some(m) = self.metrics.as_deref() {
                m.attempts
                    .get_or_create(&OutcomeLabels {
                        outcome: format!("{}_unknown_sandbox", end_name(a.end)),
                    })
                    .inc();
            }
            keep
        });
        for r in self.incidents.repeats(now, false) {
            self.print(&r)?;
        }
        Ok(())
    }

    /// A zoom-in's window ended without a failed attempt judged: the incident says what is
    /// known.
    pub(super) fn window_ended(&mut self, key: Key) -> Result<()> {
        let localizing = self
            .incidents
            .get(&key)
            .is_some_and(|i| i.state == incidents::State::Localizing);
        if localizing {
            let now = Clock::now_mono_ns();
            let secs = self.args.zoom_window.as_secs_f64();
            let summary = format!(
                "none was made while the path was followed ({secs:.1} s after the first failure): the orchestrator may have given up"
            );
            if let Some(v) = self.incidents.unlocalized(
                key,
                &self.not_followed(key, summary),
                self.clock.unix_ns(now),
                now,
            ) {
                self.report(&v, None)?;
            }
        }
        self.unzoom(key);
        Ok(())
    }

    /// A finished journey goes to the judge of the zoom-in it belongs to.
    pub(super) fn hand_over(&mut self, j: Journey) {
        let target = match j.id {
            JourneyId::Conn(_) => j.target.map(|(ip, _)| ip),
            JourneyId::NoRoute { dst, .. }
            | JourneyId::NotSent { dst, .. }
            | JourneyId::Withheld { dst, .. } => Some(dst),
        };
        // Only attempts followed from their start: one that began while the programs were
        // being attached lacks its first hops (its late reply alone would read as a drop).
        let key = self.zooms.iter().find_map(|(k, z)| {
            let a = z.attached.as_ref()?;
            let ours = target == Some(a.host_ip) || j.hops.iter().any(|(_, h)| h.netns == a.netns);
            (ours && j.first_ns >= a.since_ns && starts_here(&j)).then_some(*k)
        });
        let Some(key) = key else { return };
        // The zoom-in ends at its first verdict: later attempts would only be judged in vain
        // (and in a storm, each costs a judge the reads another sandbox is waiting for).
        match self.zooms.get_mut(&key) {
            Some(z) if !z.handed => z.handed = true,
            _ => return,
        }
        // Its programs are no longer needed: the slot goes to the next while this one is
        // judged.
        let _ = self.to_attacher.send(Cmd::Unzoom(key));
        self.fill_slots();
        let guest_neigh = None;
        let item = Item::Journey {
            journey: Box::new(j),
            guest_neigh,
            lost_events: 0,
            request_unanswered: false,
        };
        let _ = self.to_judge.send(Work::Judge(key, item));
    }
}

/// The engine's actor back from its record.
fn actor_of(a: &crate::report::record::ActorRecord) -> Option<tracer_model::engine::Actor> {
    Some(tracer_model::engine::Actor {
        role: a.role?,
        how: a.how?,
        netns: a.netns.clone(),
        device: a.device.clone(),
        place: a.place.clone().unwrap_or_default(),
        does: a.does.clone().unwrap_or_default(),
        id: a.id.clone()?,
    })
}

/// The record of a sandbox whose verdict is shared from `source`'s: the same outcome and
/// actor, confirmed on its own attempt; no hops (its attempts were not followed), no device
/// of the source's path.
fn shared_record(
    source: &JourneyRecord,
    s: &Shared<Key>,
    target: Option<(std::net::Ipv4Addr, u16)>,
) -> JourneyRecord {
    use crate::report::{
        evidence::EvidenceRecord,
        record::{ActorRecord, ClauseRecord},
    };
    let a = &s.actor;
    let mut r = source.clone();
    let name = a.id.name();
    let at = a.netns.as_deref().unwrap_or("the host side");
    r.summary = format!(
        "{name} in {at}, which stopped another sandbox's attempt, acts on this sandbox's too: {}; its own attempts were not followed",
        s.confirmation
    );
    r.evidence = vec![EvidenceRecord {
        id: 0,
        kind: "read".into(),
        about: "shared".into(),
        hop: None,
        source: Some("the engine's evaluators, over the host side's inventory".into()),
        text: s.confirmation.clone(),
    }];
    r.actors = vec![ActorRecord {
        role: Some(tracer_model::engine::Role::Cause),
        how: Some(tracer_model::engine::How::Evaluated),
        kind: Some(crate::report::evidence::id_kind(&a.id).into()),
        netns: a.netns.clone(),
        device: None,
        place: Some(a.place.clone()),
        does: Some(a.does.clone()),
        text: Some(name.clone()),
        id: Some(a.id.clone()),
        evidence: Some(0),
    }];
    r.clauses = vec![ClauseRecord {
        part: crate::report::sentences::Part::Effect,
        text: r.summary.clone(),
        evidence: vec![0],
    }];
    r.hops = Vec::new();
    r.failing_hop = None;
    r.divergence = None;
    r.explained_by = Vec::new();
    r.client = None;
    r.target = target.map(|(ip, p)| format!("{ip}:{p}"));
    r.lost_events = 0;
    if let Some(d) = r.drop.as_mut() {
        // The source's devices are not this sandbox's.
        d.device = None;
        d.out_device = None;
    }
    r
}
