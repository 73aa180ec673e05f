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
            },
        );
        let _ = self.to_attacher.send(Cmd::Zoom { key, sandbox });
        if let Some(m) = self.metrics() {
            m.zooms.inc();
        }
    }

    pub(super) fn unzoom(&mut self, key: Key) {
        if self.zooms.remove(&key).is_some() {
            let _ = self.to_attacher.send(Cmd::Unzoom(key));
            let _ = self.to_judge.send(Work::Remove(key));
        }
        while self.zooms.len() < self.args.max_zoom {
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
                let judge = Judge::new(*path, sb, (host_ns, ns), None, reporter, baseline, false);
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
        let r = *d.record;
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
        }
        self.unzoom(d.key);
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
