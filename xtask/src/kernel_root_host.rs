//! `xtask kernel-selftest --root-host`: the production layout, inside the kernel-matrix VM
//! (`cargo xtask test --kernel 6.12 --root-host`).
//!
//! On an E2B node the orchestrator, the veths' host ends, the routes to 10.11.x.y and the host
//! firewall live in the node's root (init) namespace, which has no name under /var/run/netns.
//! The lab's usual `e2b-host` namespace is a stand-in for it; here the VM's own root namespace
//! plays the node's (the VM has no network device, and the lab refuses this mode anywhere
//! else). Both layouts are built in turn, and the same faults probed in each:
//!
//! 1. the `e2b-host` lab: `trace --vm --probe --json` on the healthy path and on each fault
//!    (the reference), doctor, and `--host-netns` pinning the host side;
//! 2. the root-host lab: the layout itself, `list`, `doctor`, the same probes (each verdict
//!    must equal the reference's, with `e2b-host` read as `root` and no `ip netns exec` in
//!    its commands), `--host-netns root|/proc/1/ns/net|NAME`, a probe by a tracer in another
//!    namespace, and a `tracer watch` that reports an incident; then nothing of the lab may be
//!    left in the root namespace, and no BPF program loaded.
use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use lab::{Fault, HostNs, Lab, LabConfig, topology::ROOT_LABEL};
use serde_json::{Value, json};

use crate::kernel_selftest::{
    PROBE, Running, Steps, expect_field, field, nothing_loaded, probe_with, run_ok, tracer_out,
};

/// The faults probed in both layouts (None: the healthy path): a host-side drop (INPUT drops
/// envd's SYN-ACK in the host), a host-side route gone, a sandbox-side FORWARD drop, a
/// reply-path drop and a missing DNAT.
const FAULTS: &[Option<Fault>] = &[
    None,
    Some(Fault::HostInputDrop),
    Some(Fault::HostRouteMissing),
    Some(Fault::ForwardDrop),
    Some(Fault::ReplyDrop),
    Some(Fault::NoDnat),
];

/// A namespace the tracer runs in for one probe: not the host side, so the root namespace
/// must still be found as it.
const OTHER_NS: &str = "ktest-tracer";

/// What one layout's verdicts were, by fault name.
type Shapes = BTreeMap<&'static str, Value>;

pub fn run(tracer: &Path) -> Result<()> {
    let mut t = Steps::default();
    t.step("modprobe tun", || run_ok(Command::new("modprobe").arg("tun")));
    let reference = layout(&mut t, tracer, HostNs::Named, None);
    let forward_before = sysctl_forward();
    t.step(
        "root-host mode allowed here",
        || match lab::lab::root_host_refusal() {
            None => Ok(()),
            Some(why) => Err(anyhow!(why)),
        },
    );
    layout(&mut t, tracer, HostNs::Root, Some(&reference));
    t.step("root namespace clean", || root_clean(forward_before.as_deref()));
    t.step("detach", nothing_loaded);
    println!("KTEST done passed={} failed={}", t.passed, t.failed);
    Ok(())
}

/// One layout: the lab up, its steps, the lab down. Returns the verdicts' shapes.
fn layout(t: &mut Steps, tracer: &Path, host: HostNs, reference: Option<&Shapes>) -> Shapes {
    let h = host.label();
    let mut shapes = Shapes::new();
    let config = LabConfig {
        host,
        ..LabConfig::default()
    };
    let mut lab = match Lab::up(config) {
        Ok(lab) => {
            t.ok(&format!("{h}: lab up"));
            lab
        }
        Err(e) => {
            t.fail(&format!("{h}: lab up"), &format!("{e:#}"));
            return shapes;
        }
    };
    let id = lab.sandbox_ids()[0].clone();
    if host == HostNs::Root {
        t.step("root: the host side is the root namespace", || root_layout(&lab));
        t.step("root: list", || list(tracer, &id));
    }
    t.step(&format!("{h}: doctor"), || doctor(&mut lab, tracer, &id, h));
    for fault in FAULTS {
        let name = fault.map_or("healthy", Fault::name);
        t.step(&format!("{h}: probe {name}"), || {
            if let Some(f) = fault {
                lab.break_fault(0, *f)?;
            }
            let result = probe_fault(tracer, &id, *fault, h).and_then(|shape| {
                if let Some(want) = reference.and_then(|r| r.get(name)) {
                    ensure!(
                        &shape == want,
                        "the verdict differs from the e2b-host lab's:\n  root:     {shape}\n  e2b-host: {want}"
                    );
                }
                shapes.insert(name, shape);
                Ok(())
            });
            lab.heal(0)?;
            result
        });
    }
    match host {
        HostNs::Named => t.step("e2b-host: --host-netns pins the host side", || {
            pinned_named(tracer, &id)
        }),
        HostNs::Root => {
            t.step("root: --host-netns root|/proc/1/ns/net|NAME", || {
                pinned_root(tracer, &id)
            });
            t.step("root: probe by a tracer in another namespace", || {
                from_another_namespace(tracer, &id)
            });
            t.step("root: watch reports an incident", || watch(&mut lab, tracer, &id));
        }
    }
    t.step(&format!("{h}: lab down"), || lab.down());
    shapes
}

/// The verdict of a probe with `fault` in place, checked; its shape for the comparison.
fn probe_fault(tracer: &Path, id: &str, fault: Option<Fault>, h: &'static str) -> Result<Value> {
    let (code, v) = probe_with(tracer, id, &[])?;
    println!(
        "KTEST| {h:>8} {:<18} {}",
        fault.map_or("healthy", Fault::name),
        verdict_line(&v)
    );
    ensure!(code == if fault.is_some() { 1 } else { 0 }, "exit {code}: {v}");
    for (path, want) in expected(fault, h) {
        expect_field(&v, path, want)?;
    }
    match fault {
        None => ensure!(
            field(&v, "cause_actor").is_null(),
            "a cause on a working path: {v}"
        ),
        Some(Fault::HostInputDrop) => {
            let rule = field(&v, "drop.rule").as_str().unwrap_or("");
            ensure!(rule.starts_with("-A INPUT -i veth-1"), "drop.rule {rule:?}: {v}");
        }
        Some(Fault::ReplyDrop) => {
            let rule = field(&v, "drop.rule").as_str().unwrap_or("");
            ensure!(rule.contains("--sport 49983"), "drop.rule {rule:?}: {v}");
        }
        _ => {}
    }
    host_places(&v, h)?;
    commands_fit(&v, h)?;
    Ok(shape(&v, h))
}

/// What the verdict of each fault must say (`h`: the host side's label).
fn expected(fault: Option<Fault>, h: &'static str) -> Vec<(&'static str, &'static str)> {
    match fault {
        None => vec![("outcome", "connected")],
        Some(Fault::HostInputDrop) => vec![
            ("outcome", "dropped"),
            ("drop.direction", "reply"),
            ("drop.netns", h),
            ("drop.hook", "INPUT"),
            ("drop.chain", "INPUT"),
            ("cause_actor.id.kind", "firewall_rule"),
            ("cause_actor.netns", h),
        ],
        Some(Fault::HostRouteMissing) => vec![
            ("outcome", "unreachable"),
            ("unreachable.kind", "no_route"),
            ("unreachable.netns", h),
            ("unreachable.address", "10.11.0.1"),
            ("cause_actor.id.kind", "missing_route"),
            ("cause_actor.netns", h),
        ],
        Some(Fault::ForwardDrop) => vec![
            ("outcome", "dropped"),
            ("drop.direction", "request"),
            ("drop.netns", "ns-1"),
            ("drop.hook", "FORWARD"),
            ("drop.table", "filter"),
            ("drop.reason", "NETFILTER_DROP"),
            (
                "drop.rule",
                "-A FORWARD -i eth0 -o tap0 -p tcp -m tcp --dport 49983 -j DROP",
            ),
            ("cause_actor.id.kind", "firewall_rule"),
            ("cause_actor.netns", "ns-1"),
        ],
        Some(Fault::ReplyDrop) => vec![
            ("outcome", "dropped"),
            ("drop.direction", "reply"),
            ("drop.netns", "ns-1"),
            ("drop.hook", "FORWARD"),
            ("cause_actor.id.kind", "firewall_rule"),
            ("cause_actor.netns", "ns-1"),
        ],
        // The missing DNAT is the cause; the unrewritten SYN then dies on the host side.
        Some(Fault::NoDnat) => vec![
            ("divergence.field", "destination"),
            ("divergence.netns", "ns-1"),
            ("cause_actor.id.kind", "missing_rule"),
            ("cause_actor.id.table", "nat"),
            ("cause_actor.id.chain", "PREROUTING"),
            ("drop.netns", h),
        ],
        Some(other) => unreachable!("{} is not probed here", other.name()),
    }
}

/// Every hop on a veth-N (the host's end) is in the host side, named `h`.
fn host_places(v: &Value, h: &str) -> Result<()> {
    for hop in v["hops"].as_array().into_iter().flatten() {
        if hop["device"].as_str().is_some_and(|d| d.starts_with("veth-")) {
            ensure!(hop["netns"] == h, "a hop on the host's veth is not in {h}: {hop}");
        }
    }
    Ok(())
}

/// The record's commands suit the namespace they run in: in the root namespace no
/// `ip netns exec` and no `ip -n`; and a root-host record never names `e2b-host`.
fn commands_fit(v: &Value, h: &str) -> Result<()> {
    if h != ROOT_LABEL {
        return Ok(());
    }
    let text = v.to_string();
    for bad in [
        "netns exec root",
        "ip -n root",
        "nsenter --net=/proc/1",
        "e2b-host",
    ] {
        ensure!(!text.contains(bad), "the record says {bad:?}: {text}");
    }
    Ok(())
}

/// The fields both layouts must agree on, with the host side's name and its command prefix
/// made neutral (`e2b-host` reads `root`; `ip netns exec e2b-host CMD` reads `CMD`).
fn shape(v: &Value, h: &str) -> Value {
    let pick = |paths: &[&str]| -> Value {
        paths
            .iter()
            .map(|p| (p.to_string(), field(v, p).clone()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let actors: Vec<Value> = v["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| json!([a["role"], a["id"]["kind"], a["netns"], a["device"], a["place"]]))
        .collect();
    let shape = json!({
        "outcome": v["outcome"],
        "drop": pick(&["drop.direction", "drop.netns", "drop.device", "drop.hook", "drop.table", "drop.chain", "drop.rule", "drop.reason"]),
        "reset": v["reset"]["by"],
        "unreachable": pick(&["unreachable.kind", "unreachable.netns", "unreachable.device", "unreachable.address"]),
        "divergence": pick(&["divergence.field", "divergence.netns", "divergence.device", "divergence.point"]),
        "actors": actors,
        "fix": v["fix"],
    });
    if h == ROOT_LABEL {
        return shape;
    }
    let text = shape
        .to_string()
        .replace(&format!("ip netns exec {h} "), "")
        .replace(&format!("ip -n {h} "), "ip ")
        .replace(&format!("\"{h}\""), &format!("\"{ROOT_LABEL}\""));
    serde_json::from_str(&text).unwrap_or(shape)
}

/// One line per verdict for the log: outcome, place, cause, fix.
fn verdict_line(v: &Value) -> String {
    let s = |p: &str| field(v, p).as_str().unwrap_or("-").to_string();
    let place = match s("outcome").as_str() {
        "dropped" => format!(
            "{} at {} {} {}",
            s("drop.direction"),
            s("drop.netns"),
            s("drop.hook"),
            s("drop.device")
        ),
        "unreachable" => format!("{} in {}", s("unreachable.kind"), s("unreachable.netns")),
        _ => String::new(),
    };
    let cause = match field(v, "cause_actor") {
        Value::Null => "no cause".to_string(),
        _ => format!("cause {} in {}", s("cause_actor.id.kind"), s("cause_actor.netns")),
    };
    format!("{} {place}; {cause}; fix: {}", s("outcome"), s("fix"))
}

/// The lab's host side really is the root namespace: the veth's host end, the route to the
/// host IP and E2B's host rules are there, and no `e2b-host` namespace exists.
fn root_layout(lab: &Lab) -> Result<()> {
    ensure!(lab.host_ns() == HostNs::Root, "the lab is not in root-host mode");
    let out = |program: &str, args: &[&str]| lab::sh::run_in(None, program, args);
    out("ip", &["link", "show", "veth-1"]).context("veth-1 in the root namespace")?;
    let route = out("ip", &["route", "get", "10.11.0.1"])?;
    ensure!(route.contains("dev veth-1"), "route to 10.11.0.1: {route}");
    let forward = out("iptables", &["-S", "FORWARD"])?;
    ensure!(forward.contains("-i veth-1"), "host FORWARD rules: {forward}");
    let named = out("ip", &["netns", "list"])?;
    ensure!(!named.contains(lab::topology::HOST_NS), "ip netns list: {named}");
    Ok(())
}

/// `tracer list` shows the host side as `root`.
fn list(tracer: &Path, id: &str) -> Result<()> {
    let (code, out, err) = tracer_out(tracer, &["list", "--json"])?;
    ensure!(code == 0, "exit {code}: {err}");
    let rows: Value = serde_json::from_str(&out).context("list --json")?;
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == id))
        .with_context(|| format!("{id} not listed: {out}"))?;
    for (path, want) in [
        ("netns", "ns-1"),
        ("host_ns", ROOT_LABEL),
        ("host_veth", "veth-1"),
    ] {
        expect_field(row, path, want)?;
    }
    let (_, text, _) = tracer_out(tracer, &["list"])?;
    ensure!(text.contains("root/veth-1"), "host side in the table: {text}");
    println!("KTEST| list: {}", text.lines().nth(1).unwrap_or("").trim());
    Ok(())
}

/// Doctor: healthy, then with the host-side drop: the host firewall check names it in the
/// host side, and its fix runs there (no `ip netns exec` in the root namespace).
fn doctor(lab: &mut Lab, tracer: &Path, id: &str, h: &str) -> Result<()> {
    let (code, out, err) = tracer_out(tracer, &["doctor", "--vm", id, "--json"])?;
    ensure!(code == 0, "healthy: exit {code}: {out} {err}");
    let v: Value = serde_json::from_str(&out).context("doctor --json")?;
    expect_field(&v, "host_ns", h)?;
    commands_fit(&v, h)?;
    lab.break_fault(0, Fault::HostInputDrop)?;
    let result = tracer_out(tracer, &["doctor", "--vm", id, "--json"]).and_then(|(code, out, _)| {
        let v: Value = serde_json::from_str(&out).context("doctor --json")?;
        let check = v["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == "host_firewall"))
            .with_context(|| format!("no host_firewall check: {v}"))?;
        ensure!(code == 1 && check["status"] == "problem", "exit {code}: {check}");
        expect_field(check, "netns", h)?;
        commands_fit(&v, h)?;
        println!(
            "KTEST| {h:>8} doctor host-input-drop: {}; fix: {}",
            check["evidence"].as_str().unwrap_or("-"),
            check["fix"].as_str().unwrap_or("-")
        );
        Ok(())
    });
    lab.heal(0)?;
    result
}

/// The `e2b-host` lab: `--host-netns` given as a name or a path finds the host side; `root`
/// (where it is not) leaves it unknown, and then nothing is sent.
fn pinned_named(tracer: &Path, id: &str) -> Result<()> {
    for ns in ["e2b-host", "/var/run/netns/e2b-host"] {
        let (code, v) = probe_with(tracer, id, &["--host-netns", ns])?;
        ensure!(code == 0, "--host-netns {ns}: exit {code}: {v}");
        expect_field(&v, "outcome", "connected")?;
    }
    let (code, v) = probe_with(tracer, id, &["--host-netns", "root"])?;
    ensure!(code == 1, "--host-netns root: exit {code}: {v}");
    expect_field(&v, "outcome", "unreachable")?;
    expect_field(&v, "unreachable.kind", "host_side_unknown")?;
    ensure!(
        !v["hops"].to_string().contains("SYN_SENT"),
        "a probe was sent: {v}"
    );
    Ok(())
}

/// The root-host lab: `--host-netns root` and `/proc/1/ns/net` are the host side; a name
/// that does not exist, a process that does not, a file that is no namespace: exit 2, one
/// sentence.
fn pinned_root(tracer: &Path, id: &str) -> Result<()> {
    for ns in [ROOT_LABEL, "/proc/1/ns/net"] {
        let (code, v) = probe_with(tracer, id, &["--host-netns", ns])?;
        ensure!(code == 0, "--host-netns {ns}: exit {code}: {v}");
        expect_field(&v, "outcome", "connected")?;
    }
    let (code, out, err) = tracer_out(tracer, &["doctor", "--vm", id, "--host-netns", ROOT_LABEL])?;
    ensure!(code == 0, "doctor --host-netns root: exit {code}: {out} {err}");
    for (ns, says) in [
        ("e2b-host", "there is no /var/run/netns/e2b-host"),
        ("/proc/4294967294/ns/net", "there is no process 4294967294"),
        ("/etc/hostname", "is not a network namespace file"),
        ("a/b", "is not a namespace name"),
    ] {
        for cmd in [
            vec!["trace", "--vm", id, "--probe", "--host-netns", ns],
            vec!["doctor", "--vm", id, "--host-netns", ns],
            vec!["watch", "--host-netns", ns],
        ] {
            let (code, _, err) = tracer_out(tracer, &cmd)?;
            ensure!(code == 2, "{cmd:?}: exit {code}, expected 2: {err}");
            ensure!(
                err.trim().lines().count() == 1 && err.contains(says) && err.contains("--host-netns"),
                "{cmd:?}: {err}"
            );
        }
    }
    Ok(())
}

/// A tracer in a namespace of its own (only loopback) still finds the root namespace as the
/// host side and probes from there.
fn from_another_namespace(tracer: &Path, id: &str) -> Result<()> {
    run_ok(Command::new("ip").args(["netns", "add", OTHER_NS]))?;
    let result = (|| {
        run_ok(Command::new("ip").args(["-n", OTHER_NS, "link", "set", "lo", "up"]))?;
        let bin = tracer.to_str().context("non-UTF-8 path")?;
        let mut args = vec![
            "netns", "exec", OTHER_NS, bin, "trace", "--vm", id, "--probe", "--json",
        ];
        args.extend_from_slice(PROBE);
        let (code, out, err) = tracer_out(Path::new("ip"), &args)?;
        let v: Value =
            serde_json::from_str(out.trim()).with_context(|| format!("not one JSON verdict: {out} {err}"))?;
        ensure!(code == 0, "exit {code}: {v}");
        expect_field(&v, "outcome", "connected")?;
        host_places(&v, ROOT_LABEL)?;
        ensure!(
            v["hops"].to_string().contains("\"netns\":\"root\""),
            "no hop in root: {v}"
        );
        Ok(())
    })();
    run_ok(Command::new("ip").args(["netns", "del", OTHER_NS]))?;
    result
}

/// `tracer watch` in the root namespace, the orchestrator stand-in failing against a host-side
/// drop: one incident for the sandbox, placed in `root`.
fn watch(lab: &mut Lab, tracer: &Path, id: &str) -> Result<()> {
    lab.break_fault(0, Fault::HostInputDrop)?;
    let result = (|| {
        let mut run = Running::start(tracer, &["watch"])?;
        let found = Instant::now() + Duration::from_secs(60);
        while !run.stderr().contains("sandboxes (scan") {
            ensure!(Instant::now() < found, "no scan: {}", run.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let orchestrator = lab.orchestrator_loop();
        let deadline = started + Duration::from_secs(60);
        let incident = loop {
            if Instant::now() > deadline {
                break None;
            }
            match run.next_json(Duration::from_secs(1)) {
                Some(v) if v["type"] == "incident" => break Some(v),
                _ => {}
            }
        };
        orchestrator.stop()?;
        let code = run.stop()?;
        let v = incident.with_context(|| format!("no incident in 60 s; stderr: {}", run.stderr()))?;
        println!(
            "KTEST| {:>8} watch incident after {} ms: {}",
            ROOT_LABEL,
            started.elapsed().as_millis(),
            verdict_line(&v)
        );
        ensure!(code == 0, "watch exit {code}");
        for (path, want) in [
            ("sandbox.id", id),
            ("outcome", "dropped"),
            ("drop.direction", "reply"),
            ("drop.netns", ROOT_LABEL),
            ("drop.hook", "INPUT"),
            ("cause_actor.id.kind", "firewall_rule"),
            ("cause_actor.netns", ROOT_LABEL),
        ] {
            expect_field(&v, path, want)?;
        }
        host_places(&v, ROOT_LABEL)?;
        commands_fit(&v, ROOT_LABEL)
    })();
    lab.heal(0)?;
    result
}

fn sysctl_forward() -> Option<String> {
    lab::sh::sysctl_get_in(None, "net.ipv4.ip_forward").ok()
}

/// After the root-host lab is down, the root namespace holds nothing of it: no veth, no route
/// to a host IP, no host rule, forwarding as before.
fn root_clean(forward_before: Option<&str>) -> Result<()> {
    let out = |program: &str, args: &[&str]| lab::sh::run_in(None, program, args);
    let links = out("ip", &["-o", "link", "show"])?;
    ensure!(!links.contains("veth-"), "links left: {links}");
    let routes = out("ip", &["route", "show", "table", "all"])?;
    ensure!(!routes.contains("10.11.0."), "routes left: {routes}");
    let rules = out("iptables-save", &[])?;
    ensure!(
        !rules.contains("veth-") && !rules.contains("uplink0"),
        "rules left: {rules}"
    );
    let policy = out("ip", &["rule", "show"])?;
    ensure!(!policy.contains("10.11.0."), "policy rules left: {policy}");
    ensure!(
        sysctl_forward().as_deref() == forward_before,
        "ip_forward is {:?}, was {forward_before:?}",
        sysctl_forward()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_read_e2b_host_as_root() {
        let named = json!({
            "outcome": "dropped",
            "drop": {"direction": "reply", "netns": "e2b-host", "hook": "INPUT"},
            "actors": [{"role": "cause", "id": {"kind": "firewall_rule"}, "netns": "e2b-host"}],
            "fix": "remove or narrow that rule: ip netns exec e2b-host iptables -t filter -D INPUT -i veth-1 -j DROP",
        });
        let root = json!({
            "outcome": "dropped",
            "drop": {"direction": "reply", "netns": "root", "hook": "INPUT"},
            "actors": [{"role": "cause", "id": {"kind": "firewall_rule"}, "netns": "root"}],
            "fix": "remove or narrow that rule: iptables -t filter -D INPUT -i veth-1 -j DROP",
        });
        assert_eq!(shape(&named, "e2b-host"), shape(&root, ROOT_LABEL));
        assert!(commands_fit(&root, ROOT_LABEL).is_ok());
        let wrong = json!({"fix": "ip netns exec root iptables -D INPUT 1"});
        assert!(commands_fit(&wrong, ROOT_LABEL).is_err());
    }
}
