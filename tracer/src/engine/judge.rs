//! The judge: decides each finished journey, names the rule of a netfilter drop, asks the
//! doctor why, and reports. It runs on its own thread: rule naming and the doctor run tools
//! and netlink dumps that take milliseconds to seconds (or hang until their timeout), and the
//! event loop must keep draining the ring buffer and answering signals meanwhile.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_model::{
    facts::{LinkFact, NeighFact, ProbeRoute, ReadFacts, RouteBlock},
    hook::Hook,
    journey::Journey,
    path::ExpectedPath,
    reason::ReasonClass,
    rule::RuleName,
    tcp::nud_bits,
    verdict::{self, Outcome, Verdict},
};

pub use super::reads::HostCache;
use super::reads::{Snapshots, reader, routing_point};
use crate::{
    diagnose::Check,
    discovery::sandbox::Sandbox,
    report::pcapng::Capture,
    report::{Judged, Reporter, deep::DeepContext, record::JourneyRecord},
    system::connect::ProbeSite,
    system::conntrack::CtTuple,
    system::firewall::{
        Rulesets,
        naming::{Place, RuleBaseline},
    },
    system::netns::Netns,
    system::netstate,
};

/// How long the doctor's checks and a fresh ruleset read stay valid for later failures.
const FRESH: Duration = Duration::from_secs(5);

/// One attempt to judge.
pub enum Item {
    /// A finished journey, with the neighbour state the events last showed for the guest (the
    /// fallback when the live table says nothing) and the events lost while it ran.
    Journey {
        journey: Box<Journey>,
        guest_neigh: Option<u32>,
        lost_events: u64,
        /// A probe's request after the handshake got no answer.
        request_unanswered: bool,
    },
    /// A probe that was not sent, with what the guard read.
    Withheld {
        journey: Box<Journey>,
        probe_route: Option<Box<ProbeRoute>>,
        host_side_problem: Option<String>,
    },
}

/// Where a netfilter drop happened: namespace inode, hook, priority window.
type DropPlace = (u32, Hook, Option<(i32, i32)>);

pub struct Judge {
    /// Host-side inventories shared with the watcher's other judges (None: read each time).
    host_cache: Option<Arc<HostCache>>,
    /// The doctor's tie-in only when the engine named no cause.
    doctor_only_unnamed: bool,
    /// The host side's inventory read for the last verdict (taken by the judge thread).
    pub host_inventory: Option<Arc<tracer_model::engine::inventory::NsInventory>>,
    pub path: ExpectedPath,
    pub sandbox: Sandbox,
    /// The verified host side (None: not known, nothing read there).
    pub host_ns: Option<Netns>,
    pub sandbox_ns: Netns,
    /// Where `--nft-trace` may make its attempt from (None: nowhere).
    pub site: Option<ProbeSite>,
    pub reporter: Reporter,
    pub baseline: RuleBaseline,
    pub nft_trace: bool,
    /// The rulesets read after a failure, per namespace inode, with when: shared by rule
    /// naming and the doctor, so a failure costs one read per namespace.
    rules_now: HashMap<u32, (Instant, Arc<Rulesets>)>,
    /// When the journey being judged was handed in: rulesets read since are after its
    /// packets, so rule naming reuses the ones the inventory read.
    judging_since: Instant,
    /// Rules already named, by place: counters only grow, so once is enough (and a watch must
    /// not run iptables-save per attempt).
    named: HashMap<DropPlace, RuleName>,
    /// The doctor's checks of the sandbox, taken at the first failure and refreshed after a
    /// while (configuration changes while watching).
    doctor: Option<(Instant, Vec<Check>)>,
    /// Deep mode: read conntrack, routes and neighbours at each verdict.
    deep: bool,
    /// `--pcapng`: where each judged journey's packets go.
    capture: Option<Capture>,
}

impl Judge {
    pub fn new(
        path: ExpectedPath,
        sandbox: Sandbox,
        (host_ns, sandbox_ns): (Option<Netns>, Netns),
        site: Option<ProbeSite>,
        reporter: Reporter,
        baseline: RuleBaseline,
        nft_trace: bool,
    ) -> Self {
        Self {
            path,
            sandbox,
            host_ns,
            sandbox_ns,
            site,
            reporter,
            baseline,
            nft_trace,
            rules_now: HashMap::new(),
            judging_since: Instant::now(),
            host_inventory: None,
            host_cache: None,
            doctor_only_unnamed: false,
            named: HashMap::new(),
            doctor: None,
            deep: false,
            capture: None,
        }
    }

    /// The watcher's judges: host-side inventories shared with the others, and the doctor's
    /// tie-in only for verdicts the engine found no cause for (it costs a verdict as much
    /// again, and in a storm every judge's time is another sandbox's wait).
    pub fn for_watcher(mut self, cache: Arc<HostCache>) -> Self {
        self.host_cache = Some(cache);
        self.doctor_only_unnamed = true;
        self
    }

    /// Deep mode, with a capture file or not.
    pub fn with_deep(mut self, capture: Option<Capture>) -> Self {
        self.deep = true;
        self.capture = capture;
        self
    }

    /// Judges one item: the verdict printed by its reporter, and its record.
    pub(super) fn judge_item(&mut self, item: Item) -> Result<(Outcome, JourneyRecord)> {
        match item {
            Item::Journey {
                journey,
                guest_neigh,
                lost_events,
                request_unanswered,
            } => {
                let given = ReadFacts {
                    request_unanswered,
                    ..Default::default()
                };
                self.judge(&journey, guest_neigh, lost_events, given)
            }
            Item::Withheld {
                journey,
                probe_route,
                host_side_problem,
            } => {
                let given = ReadFacts {
                    probe_route: probe_route.map(|r| *r),
                    host_side_problem,
                    ..Default::default()
                };
                self.judge(&journey, None, 0, given)
            }
        }
    }

    /// What a judge says at its end: how often each failure repeated, where the capture is.
    pub(super) fn finish(&mut self) -> Result<()> {
        self.reporter.print_repeats()?;
        if let Some(c) = &self.capture {
            eprintln!(
                "tracer: the packets are in {}{}",
                c.path().display(),
                if c.capped > 0 {
                    format!(" ({} copies left out by its caps)", c.capped)
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    fn judge(
        &mut self,
        j: &Journey,
        guest_neigh: Option<u32>,
        lost_events: u64,
        given: ReadFacts,
    ) -> Result<(Outcome, JourneyRecord)> {
        let mut capture = self.capture.take();
        let r = self.with_judged(j, guest_neigh, lost_events, given, |reporter, judged| {
            // The capture comes first, so that the record printed says what it holds.
            let mut context = judged.context.cloned();
            if let (Some(c), Some(ctx)) = (capture.as_mut(), context.as_mut()) {
                let record = reporter.record(judged).1;
                let verdict = format!("{} {}", record.outcome.name().to_uppercase(), record.summary);
                match c.write_journey(j, &verdict) {
                    Ok(w) => {
                        ctx.captured_packets = w.packets;
                        ctx.capped_packets = w.capped;
                    }
                    Err(e) => eprintln!("tracer: {e:#}"),
                }
            }
            let judged = Judged {
                context: context.as_ref(),
                ..judged
            };
            let record = reporter.add(judged)?;
            Ok((judged.verdict.outcome, record))
        });
        self.capture = capture;
        r
    }

    /// Decides `j`, names its rule, asks the doctor, and hands the result to `f`.
    fn with_judged<T>(
        &mut self,
        j: &Journey,
        guest_neigh: Option<u32>,
        lost_events: u64,
        given: ReadFacts,
        f: impl FnOnce(&mut Reporter, Judged<'_>) -> Result<T>,
    ) -> Result<T> {
        // Both namespaces' links, addresses, routes and neighbours, read once per journey: the
        // facts a failure rests on and deep mode's routing points come from the same read.
        // A handshake whose request went unanswered failed too: its facts are read alike.
        let failed = !verdict::is_connected(j) || given.request_unanswered;
        let t0 = Instant::now();
        self.judging_since = t0;
        let snaps = (failed || self.deep).then(|| self.snapshots());
        let t1 = Instant::now();
        let v = self.decide(j, guest_neigh, snaps.as_ref(), given);
        let t2 = Instant::now();
        let rule = self.name_rule(j, &v);
        let t3 = Instant::now();
        let named = v
            .actors
            .iter()
            .any(|a| a.role == tracer_model::engine::Role::Cause);
        let explained_by = match v.outcome {
            Outcome::Connected => Vec::new(),
            _ if named && self.doctor_only_unnamed => Vec::new(),
            _ => crate::diagnose::explain(&v, self.doctor_checks()),
        };
        tracing::debug!(
            snapshots_ms = (t1 - t0).as_millis() as u64,
            decide_ms = (t2 - t1).as_millis() as u64,
            rule_ms = (t3 - t2).as_millis() as u64,
            doctor_ms = t3.elapsed().as_millis() as u64,
            "judged"
        );
        let context = match (self.deep, &snaps) {
            (true, Some(snaps)) => Some(self.deep_context(j, &v, snaps)),
            _ => None,
        };
        let judged = Judged {
            journey: j,
            verdict: &v,
            rule: rule.as_ref(),
            explained_by: &explained_by,
            lost_events,
            context: context.as_ref(),
        };
        f(&mut self.reporter, judged)
    }

    /// The host side's and the sandbox's network state, read now (None where unreadable).
    fn snapshots(&self) -> Snapshots {
        Snapshots {
            host: self.host_ns.as_ref().and_then(|h| netstate::snapshot(h).ok()),
            sandbox: netstate::snapshot(&self.sandbox_ns).ok(),
        }
    }

    /// `given`: facts read before the journey reached the judge (a withheld probe's route).
    fn decide(
        &mut self,
        j: &Journey,
        guest_neigh: Option<u32>,
        snaps: Option<&Snapshots>,
        given: ReadFacts,
    ) -> Verdict {
        let failed = !verdict::is_connected(j) || given.request_unanswered;
        let Some(snaps) = snaps.filter(|_| failed) else {
            return verdict::decide(j, Some(&self.path), &given);
        };
        let mut facts = self.read_facts(j, snaps);
        facts.probe_route = given.probe_route;
        facts.host_side_problem = given.host_side_problem;
        facts.request_unanswered = given.request_unanswered;
        // The last neighbour change the events showed, when the table has no entry any more.
        if let Some(state) = guest_neigh
            && facts
                .neighbour(self.sandbox_ns.inode, self.path.guest_ip)
                .is_none()
        {
            facts.neighbours.push(NeighFact {
                netns: self.sandbox_ns.inode,
                device: self.path.guest_side_dev().to_string(),
                address: self.path.guest_ip,
                state,
                mac: None,
            });
        }
        let v = verdict::decide(j, Some(&self.path), &facts);
        // What the host side's inventory was, for the watcher to confirm a host-side actor
        // on other sandboxes (see `thread::Work::Confirm`).
        let host = self.host_ns.as_ref().map(|h| h.inode);
        self.host_inventory = facts
            .namespaces
            .into_iter()
            .find(|n| Some(n.netns) == host)
            .map(Arc::new);
        v
    }

    /// The state the packets found, read now: both namespaces' devices and neighbours, the
    /// rules or routes that refuse the path's destinations, and the VMM that should read the
    /// tap.
    fn read_facts(&mut self, j: &Journey, snaps: &Snapshots) -> ReadFacts {
        let mut facts = ReadFacts::default();
        let client = j.client().map(|(a, _)| a).or(self.path.host_veth_ip);
        // What each namespace routes, as (destination, source): the request toward the
        // sandbox, the reply back to the client.
        let guest = Some(self.path.guest_ip);
        let host_routes = [(Some(self.path.host_ip), client)];
        let sandbox_routes = [(guest, client), (client, guest)];
        let host = self
            .host_ns
            .as_ref()
            .map(|h| (h, &snaps.host, host_routes.as_slice()));
        let sides = host
            .into_iter()
            .chain([(&self.sandbox_ns, &snaps.sandbox, sandbox_routes.as_slice())]);
        for (ns, snap, routes) in sides {
            let Some(snap) = snap else {
                continue;
            };
            for (dst, src) in routes {
                let Some(dst) = dst else { continue };
                if let Some(b) = netstate::route_blocker(&snap.rules, &snap.routes, *dst, *src) {
                    facts.route_blocks.push(RouteBlock {
                        netns: ns.inode,
                        dst: *dst,
                        what: b.text(),
                    });
                }
            }
            let name_of = |i: u32| snap.link_by_index(i).map(|l| l.name.clone()).unwrap_or_default();
            facts.neighbours.extend(snap.neighbours.iter().map(|n| NeighFact {
                netns: ns.inode,
                device: name_of(n.ifindex),
                address: n.addr,
                state: nud_bits(&n.state),
                mac: n.mac.clone(),
            }));
            facts.links.extend(snap.links.iter().map(|l| LinkFact {
                netns: ns.inode,
                name: l.name.clone(),
                up: l.up,
                carrier: l.carrier,
                mac: l.mac.clone(),
            }));
        }
        facts.reader = self.sandbox.pid.and_then(|pid| reader(pid, &self.path.tap));
        self.read_inventory(j, &mut facts);
        facts
    }

    /// Everything that can act on the journey's packets, in each namespace it crossed (the
    /// path's, and any other it reached), and on the client's connect().
    fn read_inventory(&mut self, j: &Journey, facts: &mut ReadFacts) {
        let namespaces = self
            .host_ns
            .iter()
            .chain([&self.sandbox_ns])
            .cloned()
            .chain(super::other_namespaces(j, &self.path));
        // The devices that matter: the path's, and every one the journey's packets were seen
        // on (a redirect to `lo`, a route out another veth).
        let devices: std::collections::BTreeSet<String> = [
            self.path.host_veth.clone(),
            self.path.ns_veth.clone(),
            self.path.tap.clone(),
            "lo".to_string(),
        ]
        .into_iter()
        .chain(self.path.bridge.clone())
        .chain(j.hops.iter().flat_map(|(_, h)| {
            let nf = match &h.kind {
                tracer_model::hop::HopKind::Netfilter { in_dev, out_dev, .. } => {
                    [in_dev.clone(), out_dev.clone()]
                }
                _ => [None, None],
            };
            h.device.clone().into_iter().chain(nf.into_iter().flatten())
        }))
        .filter(|d| !d.is_empty())
        .collect();
        let decided = j.decided_at.unwrap_or(j.last_ns);
        let mut read = Vec::new();
        let host = self.host_ns.as_ref().map(|h| h.inode);
        for ns in namespaces {
            let now = crate::events::decode::Clock::now_mono_ns();
            let shared = self.host_cache.as_ref().filter(|_| Some(ns.inode) == host);
            if let Some(inv) = shared.and_then(|c| c.get(ns.inode, decided, now)) {
                facts.namespaces.push(inv);
                continue;
            }
            let before = self.baseline.get(ns.inode).map(|r| r.as_ref());
            let rules = Arc::new(Rulesets::read(&ns));
            let inv = super::read_namespace(&ns, before, Some(&rules), &devices);
            if let Some(c) = shared {
                c.put(ns.inode, now, &inv);
            }
            facts.namespaces.push(inv);
            read.push((ns.inode, rules));
        }
        for (inode, rules) in read {
            self.rules_now.insert(inode, (Instant::now(), rules));
        }
        facts.client = super::programs::on_client_cgroup();
    }

    /// The doctor's read-only checks of this sandbox (no connection attempt: the trace is
    /// making its own). They reuse the rulesets rule naming just read.
    fn doctor_checks(&mut self) -> &[Check] {
        let stale = self.doctor.as_ref().is_none_or(|(at, _)| at.elapsed() > FRESH);
        if stale {
            let fresh: HashMap<u32, Arc<Rulesets>> = self
                .rules_now
                .iter()
                .filter(|(_, (at, _))| at.elapsed() < FRESH)
                .map(|(inode, (_, r))| (*inode, r.clone()))
                .collect();
            let report = crate::diagnose::check_with_rules(&self.sandbox, false, fresh);
            self.doctor = Some((Instant::now(), report.checks));
        }
        self.doctor
            .as_ref()
            .map(|(_, c)| c.as_slice())
            .unwrap_or_default()
    }

    /// The rule of a netfilter drop (named once per place), by counters, else by an nft trace
    /// when asked for.
    fn name_rule(&mut self, j: &Journey, v: &Verdict) -> Option<RuleName> {
        let d = v.drop.as_ref()?;
        let hook = d.hook.filter(|_| d.reason.is(ReasonClass::Netfilter))?;
        let inode = v.failing_hop.and_then(|i| j.hops.get(i)).map(|(_, h)| h.netns)?;
        let key = (inode, hook, d.priority_window);
        if let Some(done) = self.named.get(&key) {
            return Some(done.clone());
        }
        let ns = self.netns_by_inode(inode)?;
        let read = self
            .rules_now
            .get(&inode)
            .filter(|(at, _)| *at >= self.judging_since)
            .map(|(_, r)| r.clone());
        let now = read.unwrap_or_else(|| {
            let now = Arc::new(Rulesets::read(&ns));
            self.rules_now.insert(inode, (Instant::now(), now.clone()));
            now
        });
        let place = Place {
            hook,
            table: d.table.as_deref(),
            window: d.priority_window,
        };
        let mut rule = self.baseline.name(inode, &now, place);
        if self.nft_trace
            && rule.rule.is_none()
            && let Some(site) = &self.site
            && let Some(traced) = crate::system::firewall::nftrace::resolve(&ns, site, &self.path)
        {
            rule = traced;
        }
        self.named.insert(key, rule.clone());
        Some(rule)
    }

    /// Deep mode's reads at the verdict: the flow's conntrack entries where it was dropped
    /// (else in the sandbox's namespace), and the route and neighbour at each routing point.
    fn deep_context(&self, j: &Journey, v: &Verdict, snaps: &Snapshots) -> DeepContext {
        let ct_ns = v
            .failing_hop
            .and_then(|i| j.hops.get(i))
            .and_then(|(_, h)| self.netns_by_inode(h.netns))
            .unwrap_or_else(|| self.sandbox_ns.clone());
        let mut ctx = DeepContext {
            conntrack_netns: ct_ns.label(),
            ..Default::default()
        };
        // The flow as the client sent it: the original tuple in every namespace it crosses.
        if let (Some((src, sport)), Some((dst, dport))) = (j.client(), j.target) {
            let orig = CtTuple {
                src,
                dst,
                sport,
                dport,
            };
            match crate::system::conntrack::flow_entry(&ct_ns, &orig) {
                Ok(e) => ctx.conntrack = e.into_iter().collect(),
                Err(e) => ctx.conntrack_error = Some(format!("{e:#}")),
            }
        }
        let client = j.client().map(|(a, _)| a);
        let host = self
            .host_ns
            .as_ref()
            .map(|h| (h, &snaps.host, "request", Some(self.path.host_ip)));
        let points = [
            (
                &self.sandbox_ns,
                &snaps.sandbox,
                "request",
                Some(self.path.guest_ip),
            ),
            (&self.sandbox_ns, &snaps.sandbox, "reply", client),
        ];
        for (ns, snap, direction, dst) in host.into_iter().chain(points) {
            let (Some(dst), Some(snap)) = (dst, snap) else {
                continue;
            };
            ctx.routing.push(routing_point(snap, ns, direction, dst));
        }
        ctx
    }

    fn netns_by_inode(&self, inode: u32) -> Option<Netns> {
        self.host_ns
            .iter()
            .chain([&self.sandbox_ns])
            .find(|n| n.inode == inode)
            .cloned()
    }
}

/// The record of attempts the watcher could not follow (it could not zoom in, or none came
/// while it did): decided by the engine from the one event detection saw of them, a drop of
/// one of their packets, or from nothing, with why they were not followed.
pub fn detection_record(
    seen: Option<(tracer_model::journey::Leg, tracer_model::hop::Hop)>,
    target: Option<(std::net::Ipv4Addr, u16)>,
    why: String,
    at_ns: u64,
) -> JourneyRecord {
    let j = Journey::detected(seen, target, at_ns);
    let facts = ReadFacts {
        not_followed: Some(why),
        ..Default::default()
    };
    let v = verdict::decide(&j, None, &facts);
    let out = crate::output::Output::to_writer(crate::output::Format::Json, Box::new(std::io::sink()));
    let judged = Judged {
        journey: &j,
        verdict: &v,
        rule: None,
        explained_by: &[],
        lost_events: 0,
        context: None,
    };
    Reporter::new(out, false, None).record(judged).1
}

#[cfg(test)]
mod tests {
    use tracer_model::{
        fixtures::{hop, syn},
        hop::HopKind,
        journey::Leg,
        reason::DropReason,
        verdict::Outcome,
    };

    use super::*;

    /// Without a zoom-in, the engine decides from the drop detection saw (place and kernel
    /// reason, no hook or rule) and says why it knows no more; from nothing, unknown.
    #[test]
    fn attempts_not_followed_are_decided_from_what_detection_saw() {
        let mut d = hop(
            1,
            "ns-1",
            "eth0",
            HopKind::Drop {
                reason: DropReason::new("NETFILTER_DROP"),
            },
            syn(),
        );
        d.function = Some("nft_do_chain".into());
        let target = Some(("10.11.0.1".parse().unwrap(), 49983));
        let r = detection_record(Some((Leg::Request, d)), target, "no zoom slot".into(), 1);
        assert_eq!(r.outcome, Outcome::Dropped);
        assert_eq!(r.drop.as_ref().and_then(|d| d.device.as_deref()), Some("eth0"));
        assert!(
            r.summary
                .starts_with("the SYN to 10.11.0.1:49983 was dropped in ns-1, device eth0")
                && r.summary
                    .ends_with("not followed, so the hook and rule are not known: no zoom slot"),
            "{}",
            r.summary
        );
        assert!(
            r.evidence.iter().any(|e| e.about == "watcher"),
            "{:?}",
            r.evidence
        );
        let r = detection_record(None, target, "the VMM is gone".into(), 1);
        assert_eq!(r.outcome, Outcome::Unknown);
        assert_eq!(
            r.summary,
            "attempts to envd failed and were not followed: the VMM is gone"
        );
    }
}
