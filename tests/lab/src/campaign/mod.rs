//! The fault campaign: random faults from a grammar ([`grammar`]) injected one at a time into
//! the lab, each judged by an independent client (curl from the host side) and by the tracer
//! (`trace --vm ID --probe --json`, run in a namespace of its own with only loopback, so no
//! fault can make it send anything off the machine), and the verdict graded against what was
//! injected ([`grade`]). The lab is healed and checked between faults; nothing stays behind.
pub mod claims;
pub mod grade;
pub mod grammar;
pub mod report;
pub mod rng;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    GuestKind, IptablesBackend, Lab, LabConfig, Network,
    agent::{self, Agent, ScratchCgroup, ScratchNetns},
    sh::{run_in, run_in_with_input},
};
use grade::{Grade, Truth};
use grammar::{Can, Family, Fault, Ident, Step, Topo};

/// How to run a campaign.
#[derive(Debug, Clone)]
pub struct Options {
    pub faults: u32,
    pub seed: u64,
    pub network: Network,
    pub iptables: IptablesBackend,
    pub guest: GuestKind,
    /// Run only this fault (`--replay S:K`).
    pub replay: Option<(u64, u32)>,
    /// The tracer binary under test.
    pub tracer: PathBuf,
    /// Each attempt's timeout, the client's and the probe's.
    pub timeout: Duration,
    /// Print each fault as it is graded.
    pub verbose: bool,
}

/// One graded fault.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub key: String,
    pub fault: Fault,
    pub truth: Truth,
    pub grade: Grade,
    pub why: String,
    pub outcome: String,
    pub summary: String,
    pub ms: u64,
    /// The tracer's record, as it printed it.
    pub verdict: serde_json::Value,
}

/// Everything a campaign found.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub seed: u64,
    pub cases: Vec<Case>,
    /// Families this machine could not inject, and why.
    pub skipped: Vec<(String, String)>,
    /// Faults that could not be injected or healed (generator or lab bugs), with why.
    pub errors: Vec<(String, String)>,
}

/// Runs a campaign on a lab of its own.
pub fn run(opts: &Options) -> Result<Results> {
    let config = LabConfig {
        sandboxes: 2,
        guest: opts.guest,
        iptables: opts.iptables,
        network: opts.network,
        ..Default::default()
    };
    let mut lab = Lab::up(config.clone()).context("bring the campaign's lab up")?;
    // The tracer's own namespace (only loopback) and the cgroup the client and the tracer
    // run in (cgroup faults attach to it and nothing else).
    let iso = ScratchNetns::new("tcamp").context("the tracer's namespace")?;
    let cgroup = ScratchCgroup::new("tcamp").context("the campaign's cgroup")?;
    let (mut can, mut skipped) = probe_machine();
    can.guest_delay = opts.guest == GuestKind::Userspace;
    if !can.guest_delay {
        skipped.push((
            "a guest that answers late".into(),
            "only the userspace guest can be slowed".into(),
        ));
    }
    let families: Vec<Family> = Family::ALL
        .iter()
        .copied()
        .filter(|f| *f != Family::Bpf || !can.bpf.is_empty())
        .collect();
    // On a mixed node the faults alternate between the v1 and the v2 sandbox.
    let slots: Vec<u32> = if opts.network == Network::Mixed {
        vec![1, 2]
    } else {
        vec![1]
    };
    let topos: Vec<Topo> = slots
        .iter()
        .map(|s| topo(opts, *s, cgroup.path(), can.clone()))
        .collect();
    let mut results = Results {
        seed: opts.replay.map_or(opts.seed, |(s, _)| s),
        cases: Vec::new(),
        skipped,
        errors: Vec::new(),
    };
    let keys: Vec<(u64, u32)> = match opts.replay {
        Some(k) => vec![k],
        None => (0..opts.faults).map(|k| (opts.seed, k)).collect(),
    };
    for (seed, k) in keys {
        let pick = k as usize % slots.len();
        let topo = &topos[pick];
        let index = (slots[pick] - 1) as usize;
        let id = lab.sandbox_ids()[index].clone();
        let env = Env {
            tracer: &opts.tracer,
            iso: iso.name(),
            cgroup: cgroup.path(),
            timeout: opts.timeout,
            id: &id,
            index,
            topo,
        };
        let fault = grammar::generate(seed, k, topo, &families);
        let outcome = one(&mut lab, &env, fault.clone());
        match outcome {
            Ok(case) => {
                if opts.verbose {
                    eprintln!("{}", report::line(&case));
                }
                results.cases.push(case);
                continue;
            }
            Err(e) => {
                eprintln!("faults: {} ({}): {e:#}", fault.key(), fault.what);
                results
                    .errors
                    .push((fault.key(), format!("{}: {e:#}", fault.what)));
            }
        }
        // Whatever the fault left behind, the next one starts from a lab as built.
        if restore(&mut lab, &env).is_err() {
            eprintln!("faults: rebuilding the lab after {}", fault.key());
            lab.down()?;
            lab = Lab::up(config.clone()).context("rebuild the campaign's lab")?;
        }
    }
    drop(iso);
    lab.down()?;
    drop(cgroup);
    Ok(results)
}

/// What every fault needs.
struct Env<'a> {
    tracer: &'a Path,
    iso: &'a str,
    cgroup: &'a Path,
    timeout: Duration,
    id: &'a str,
    /// The target sandbox's index in the lab.
    index: usize,
    topo: &'a Topo,
}

fn topo(opts: &Options, slot: u32, cgroup: &Path, can: Can) -> Topo {
    let s = crate::Slot(slot);
    let o = crate::Slot(3 - slot);
    Topo {
        host_ns: crate::topology::HOST_NS.into(),
        ns: s.netns(),
        other_ns: o.netns(),
        host_veth: s.veth(),
        ns_veth: "eth0".into(),
        tap: crate::topology::TAP_NAME.into(),
        other_veth: o.veth(),
        host_ip: s.host_ip().to_string(),
        guest_ip: crate::topology::GUEST_IP.to_string(),
        client_ip: s.veth_ip().to_string(),
        ns_veth_ip: s.peer_ip().to_string(),
        other_ns_veth_ip: o.peer_ip().to_string(),
        tap_ip: crate::topology::TAP_IP.to_string(),
        port: crate::topology::ENVD_PORT,
        datapath: opts.network.datapath(s),
        backend: opts.iptables,
        cgroup: cgroup.to_path_buf(),
        can,
    }
}

/// Injects, judges, reverts and grades one fault.
fn one(lab: &mut Lab, env: &Env<'_>, mut fault: Fault) -> Result<Case> {
    let started = Instant::now();
    ensure_healthy(lab, env)?;
    let mut agents = Vec::new();
    let applied = apply(lab, env.index, &fault.apply, &mut agents);
    if let Err(e) = applied {
        drop(agents);
        revert(lab, env.index, &fault.revert);
        return Err(e.context("inject"));
    }
    resolve_handles(&mut fault);
    let before = ground_truth(env);
    let verdict = run_tracer(env);
    // The client again, after the tracer: a fault whose effect changed meanwhile (a neighbour
    // learned from the sandbox's own ARP, an entry expired) was true both ways and is mixed.
    let truth = if ground_truth(env) == before {
        before
    } else {
        Truth::Mixed
    };
    // What the verdict names is checked while the fault is still in place.
    let false_claims = verdict.as_ref().map(claims::false_claims).unwrap_or_default();
    drop(agents);
    revert(lab, env.index, &fault.revert);
    // Healed before the next one, or said to be this fault's leftover.
    ensure_healthy(lab, env).with_context(|| format!("{} did not heal", fault.key()))?;
    let verdict = verdict?;
    let (grade, why) = grade::grade(&fault, truth, &verdict, &false_claims);
    Ok(Case {
        key: fault.key(),
        truth,
        grade,
        why,
        outcome: verdict["outcome"].as_str().unwrap_or("").to_string(),
        summary: verdict["summary"].as_str().unwrap_or("").to_string(),
        ms: started.elapsed().as_millis() as u64,
        fault,
        verdict,
    })
}

fn apply(lab: &mut Lab, i: usize, steps: &[Step], agents: &mut Vec<Agent>) -> Result<()> {
    for s in steps {
        match s {
            Step::Cmd { netns, argv } => {
                let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
                run_in(netns.as_deref(), &argv[0], &args)?;
            }
            Step::Input { netns, argv, stdin } => {
                let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
                run_in_with_input(netns.as_deref(), &argv[0], &args, stdin)?;
            }
            Step::Agent(spec) => agents.push(Agent::start(spec)?),
            Step::Guest(c) => {
                lab.control(i, c)?;
            }
            Step::Signal(sig) => lab.signal(i, *sig)?,
            Step::HealSandbox => lab.heal(i)?,
        }
    }
    Ok(())
}

/// Reverts what a fault did, every step tried (one that fails does not stop the others).
fn revert(lab: &mut Lab, i: usize, steps: &[Step]) {
    let mut none = Vec::new();
    for s in steps {
        if let Err(e) = apply(lab, i, std::slice::from_ref(s), &mut none) {
            eprintln!("faults: revert: {e:#}");
        }
    }
}

/// Reads the handle of an injected nft rule (found by its comment).
fn resolve_handles(f: &mut Fault) {
    let ns = f.netns.clone();
    if let Ident::NftRule {
        family,
        table,
        comment,
        handle,
        ..
    } = &mut f.actor
        && let Ok(out) = run_in(Some(&ns), "nft", &["-a", "list", "table", family, table])
    {
        *handle = out
            .lines()
            .find(|l| l.contains(comment.as_str()))
            .and_then(|l| l.rsplit_once("# handle "))
            .and_then(|(_, h)| h.trim().parse().ok());
    }
}

/// The lab as built: healthy before every fault (healed, or rebuilt, if not).
fn ensure_healthy(lab: &mut Lab, env: &Env<'_>) -> Result<()> {
    if ground_truth(env) == Truth::Works {
        return Ok(());
    }
    restore(lab, env)
}

fn restore(lab: &mut Lab, env: &Env<'_>) -> Result<()> {
    lab.heal(env.index)?;
    // A path just restored may need a moment (ARP resolved again, a route re-added).
    let healthy = crate::testing::wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        (ground_truth(env) == Truth::Works).then_some(())
    });
    if healthy.is_some() {
        return Ok(());
    }
    bail!("the lab does not work after a heal: fix the revert of the last fault")
}

/// Attempts from the host side with curl, in the campaign's cgroup, each with the probe's
/// timeout: all connect (works), none (broken), or some (mixed).
fn ground_truth(env: &Env<'_>) -> Truth {
    const ATTEMPTS: usize = 5;
    let t = env.topo;
    let url = format!("http://{}:{}/health", t.host_ip, t.port);
    let secs = format!("{:.3}", env.timeout.as_secs_f64());
    let ok = (0..ATTEMPTS)
        .filter(|_| {
            let script = format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} curl -s -o /dev/null --max-time {secs} {url}",
                env.cgroup.display(),
                t.host_ns
            );
            Command::new("sh")
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .count();
    match ok {
        0 => Truth::Broken,
        ATTEMPTS => Truth::Works,
        _ => Truth::Mixed,
    }
}

/// `tracer trace --vm ID --probe --json`, in the tracer's own namespace and the campaign's
/// cgroup, killed if it takes more than 30 s.
fn run_tracer(env: &Env<'_>) -> Result<serde_json::Value> {
    // nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup2 mount the
    // tracer reads the client's cgroup programs from.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net=/var/run/netns/{} {} trace --vm {} --probe --json --timeout {}ms",
        env.cgroup.display(),
        env.iso,
        env.tracer.display(),
        env.id,
        env.timeout.as_millis()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run the tracer")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the tracer did not answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.trim_start().starts_with('{'));
    match line {
        Some(l) => serde_json::from_str(l).context("the tracer's verdict is not JSON"),
        None => bail!(
            "the tracer printed no verdict: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// What this kernel and these tools can inject; what they cannot is skipped, and said.
fn probe_machine() -> (Can, Vec<(String, String)>) {
    let mut can = Can::default();
    let mut skipped = Vec::new();
    let scratch = ScratchNetns::new("tprobe");
    let ok = |ns: &str, script: &str| run_in_with_input(Some(ns), "nft", &["-f", "-"], script).is_ok();
    if let Ok(ns) = &scratch {
        let _ = run_in(
            Some(ns.name()),
            "ip",
            &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
        );
        can.nft_netdev_ingress = ok(
            ns.name(),
            "table netdev p {\n chain c {\n  type filter hook ingress device \"d0\" priority 0;\n }\n}\n",
        );
        can.nft_netdev_egress = ok(
            ns.name(),
            "table netdev q {\n chain c {\n  type filter hook egress device \"d0\" priority 0;\n }\n}\n",
        );
        let _ = run_in(Some(ns.name()), "tc", &["qdisc", "add", "dev", "d0", "clsact"]);
        can.tc_u32_mirred = run_in(
            Some(ns.name()),
            "tc",
            &[
                "filter", "add", "dev", "d0", "egress", "protocol", "ip", "u32", "match", "ip", "dport", "1",
                "0xffff", "action", "mirred", "egress", "redirect", "dev", "lo",
            ],
        )
        .is_ok();
    }
    for (what, have) in [
        ("nft netdev ingress chains", can.nft_netdev_ingress),
        ("tc u32 filters with mirred", can.tc_u32_mirred),
    ] {
        if !have {
            skipped.push((what.to_string(), "refused by this kernel or tool".into()));
        }
    }
    skipped.push((
        "tc gact, flower, matchall, netem, prio, plug".into(),
        "not built into this kernel (modules cannot be loaded)".into(),
    ));
    for k in agent::Kind::ALL {
        match agent::available(*k) {
            Ok(()) => can.bpf.push(*k),
            Err(e) => skipped.push((format!("bpf {}", k.name()), e)),
        }
    }
    (can, skipped)
}
