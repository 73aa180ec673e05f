//! lab::agent: each kind of foreign program drops what its drop variant should, passes
//! everything in its inert variant, and is gone (program, link, tc filter, qdisc) once its
//! agent exits. Traffic runs only between two namespaces each test makes and deletes.
//!
//! Needs root. The tests take [`agent::lock_names`]: a program's name must be absent after
//! its agent exits, and the probes load the inert programs' names too.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use lab::{
    agent::{self, Agent, Kind, ScratchCgroup, ScratchNetns, Spec, Target},
    bpf,
    sh::{ip, run_in},
    testing::{require_root, wait_for},
};

/// Documentation addresses (TEST-NET-1), only ever inside the test's own namespaces.
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The port the drop variants drop, and one they must leave alone.
const PORT: u16 = 8080;
const OTHER: u16 = 8081;
/// A veth answers in well under a millisecond; a dropped SYN is only retried after 1 s.
const WORKS_WITHIN: Duration = Duration::from_secs(2);
const DROPPED_AFTER: Duration = Duration::from_millis(300);
/// A released program leaves the kernel's table within an RCU grace period or so.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// One test at a time, threads (cargo test) and processes (nextest) alike.
fn serial() -> agent::NamesLock {
    agent::lock_names().unwrap()
}

/// Server namespace `a` (veth `va`, 192.0.2.1) and client namespace `b` (`vb`, 192.0.2.2):
/// both deleted on drop, which takes the veth with them.
struct Pair {
    a: ScratchNetns,
    b: ScratchNetns,
}

impl Pair {
    fn new() -> Self {
        let a = ScratchNetns::new("lab-agent-test").unwrap();
        let b = ScratchNetns::new("lab-agent-test").unwrap();
        // Made in `a` with its peer in `b`: nothing appears in the root namespace.
        ip(
            Some(a.name()),
            &[
                "link",
                "add",
                "va",
                "type",
                "veth",
                "peer",
                "name",
                "vb",
                "netns",
                b.name(),
            ],
        )
        .unwrap();
        for (ns, dev, addr) in [(&a, "va", SERVER), (&b, "vb", CLIENT)] {
            ip(
                Some(ns.name()),
                &["addr", "add", &format!("{addr}/24"), "dev", dev],
            )
            .unwrap();
            ip(Some(ns.name()), &["link", "set", dev, "up"]).unwrap();
        }
        Self { a, b }
    }

    /// Listening sockets on the server (the kernel completes handshakes without accept()).
    fn listen(&self) -> Vec<TcpListener> {
        [PORT, OTHER]
            .into_iter()
            .map(|p| in_netns(self.a.name(), move || TcpListener::bind((SERVER, p))).unwrap())
            .collect()
    }

    /// A connect from the client namespace.
    fn connect(&self, port: u16, timeout: Duration) -> io::Result<()> {
        let to = SocketAddrV4::new(SERVER, port).into();
        in_netns(self.b.name(), move || {
            TcpStream::connect_timeout(&to, timeout).map(|_| ())
        })
    }

    /// The device a kind acts on to cut the client off: the SYN on its way in at the server,
    /// or on its way out at the client.
    fn target(&self, kind: Kind) -> Target {
        let (ns, dev) = match kind {
            Kind::TcxEgress | Kind::TcEgress => (&self.b, "vb"),
            _ => (&self.a, "va"),
        };
        Target::Device {
            netns: Some(ns.name().to_string()),
            dev: dev.to_string(),
        }
    }

    /// Neither device has a qdisc or filter left (tcx and XDP never show there).
    fn assert_no_tc_left(&self) {
        for (ns, dev) in [(&self.a, "va"), (&self.b, "vb")] {
            let q = run_in(Some(ns.name()), "tc", &["qdisc", "show", "dev", dev]).unwrap();
            assert!(!q.contains("clsact") && !q.contains("ingress"), "{dev}: {q}");
            for dir in ["ingress", "egress"] {
                let args = ["filter", "show", "dev", dev, dir];
                // No clsact, no filters: tc says so with an error or with nothing.
                let f = run_in(Some(ns.name()), "tc", &args).unwrap_or_default();
                assert!(f.trim().is_empty(), "{dev} {dir}: {f}");
            }
        }
    }
}

/// Runs `f` on a thread that entered `ns`: sockets it makes stay in that namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap();
        // SAFETY: plain syscall; only this thread moves.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        f()
    })
    .join()
    .unwrap()
}

fn assert_works(r: io::Result<()>, what: &str) {
    if let Err(e) = r {
        panic!("{what}: should connect, got {e}");
    }
}

fn assert_dropped(r: io::Result<()>, what: &str) {
    match r {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("{what}: the SYN should be dropped (timeout), got {other:?}"),
    }
}

fn spec(kind: Kind, target: Target, inert: bool) -> Spec {
    Spec {
        kind,
        target,
        port: PORT,
        inert,
    }
}

/// What the tracer will rely on: the agent's pid holds the program (and its link) by fd.
fn assert_held_by_its_pid(agent: &Agent) {
    let dir = format!("/proc/{}/fdinfo", agent.pid());
    let all: String = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let prog = format!("prog_id:\t{}\n", agent.prog_id());
    assert!(all.contains(&prog), "{dir} has no {prog:?}");
    if let Some(link) = agent.link_id() {
        let link = format!("link_id:\t{link}\n");
        assert!(all.contains(&link), "{dir} has no {link:?}");
    }
}

fn assert_ready_line(agent: &Agent) {
    let r = agent.ready();
    let spec = agent.spec();
    assert_eq!(r.name, spec.prog_name());
    assert_eq!(
        (r.kind, r.attach_type.as_str()),
        (spec.kind, spec.kind.attach_type())
    );
    assert!(
        r.tag.len() == 16 && r.tag.chars().all(|c| c.is_ascii_hexdigit()),
        "{}",
        r.tag
    );
    let classic = matches!(spec.kind, Kind::TcIngress | Kind::TcEgress);
    assert_eq!(r.link_id.is_none(), classic, "link id {:?}", r.link_id);
    assert_eq!(r.tc.is_some(), classic);
    assert_eq!(r.ifindex.is_some(), spec.kind.on_device());
    assert_eq!(r.xdp_flags.is_some(), spec.kind == Kind::Xdp);
}

/// Stops it (it must exit 0: it detached by itself), then its program leaves the kernel.
fn stop_and_gone(agent: Agent) {
    let (id, name) = (agent.prog_id(), agent.name().to_string());
    agent.stop().unwrap();
    assert_prog_gone(id, &name);
}

fn assert_prog_gone(id: u32, name: &str) {
    let gone = wait_for(GONE_WITHIN, Duration::from_millis(10), || {
        let left = bpf::loaded();
        (!left.iter().any(|p| p.id == id || p.name == name)).then_some(())
    });
    assert!(gone.is_some(), "program {name} (id {id}) still loaded");
}

/// The whole story on a device: works, drop variant drops port P only, works again once
/// its agent has gone, inert variant drops nothing, nothing left.
fn device_kind(test: &str, kind: Kind) {
    if !require_root(test) {
        return;
    }
    let _serial = serial();
    let net = Pair::new();
    let _listeners = net.listen();
    assert_works(net.connect(PORT, WORKS_WITHIN), "before any agent");

    let agent = Agent::start(&spec(kind, net.target(kind), false)).unwrap();
    assert_ready_line(&agent);
    assert_held_by_its_pid(&agent);
    assert_dropped(net.connect(PORT, DROPPED_AFTER), "drop variant, its port");
    assert_works(net.connect(OTHER, WORKS_WITHIN), "drop variant, another port");
    stop_and_gone(agent);
    net.assert_no_tc_left();
    assert_works(
        net.connect(PORT, WORKS_WITHIN),
        "after the drop variant's agent exited",
    );

    let agent = Agent::start(&spec(kind, net.target(kind), true)).unwrap();
    assert_ready_line(&agent);
    assert_works(net.connect(PORT, WORKS_WITHIN), "inert variant, its port");
    stop_and_gone(agent);
    net.assert_no_tc_left();
}

#[test]
fn xdp_drops_the_port_and_leaves_nothing() {
    device_kind("xdp_drops_the_port_and_leaves_nothing", Kind::Xdp);
}

#[test]
fn tcx_ingress_drops_the_port_and_leaves_nothing() {
    device_kind("tcx_ingress_drops_the_port_and_leaves_nothing", Kind::TcxIngress);
}

#[test]
fn tcx_egress_drops_the_port_and_leaves_nothing() {
    device_kind("tcx_egress_drops_the_port_and_leaves_nothing", Kind::TcxEgress);
}

#[test]
fn tc_ingress_drops_the_port_and_leaves_nothing() {
    device_kind("tc_ingress_drops_the_port_and_leaves_nothing", Kind::TcIngress);
}

#[test]
fn tc_egress_drops_the_port_and_leaves_nothing() {
    device_kind("tc_egress_drops_the_port_and_leaves_nothing", Kind::TcEgress);
}

/// Connects from a forked child that first joins `cgroup` (and the client namespace): a
/// cgroup hook judges the sockets of its members only. The child makes only raw syscalls
/// (this process has threads). Its exit code is the connect's errno.
fn connect_in_cgroup(ns: &str, cgroup: &Path, port: u16, timeout: Duration) -> io::Result<()> {
    let netns = File::open(format!("/var/run/netns/{ns}"))?;
    let procs = OpenOptions::new().write(true).open(cgroup.join("cgroup.procs"))?;
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(SERVER).to_be(),
        },
        sin_zero: [0; 8],
    };
    // connect() gives up after SO_SNDTIMEO with EINPROGRESS.
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: fork; the child only makes async-signal-safe syscalls on data prepared above.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above; "0" moves the writer itself.
        unsafe { child_connect(procs.as_raw_fd(), netns.as_raw_fd(), &to, &tv) }
    }
    assert!(pid > 0, "fork: {}", io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "helper died: {status:#x}");
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        libc::EINPROGRESS => Err(io::ErrorKind::TimedOut.into()),
        code if code >= SETUP_FAILED => panic!("helper could not set up: step {}", code - SETUP_FAILED),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Exit codes from here on are the child's own failures (errno values stay below).
const SETUP_FAILED: i32 = 200;

/// The forked child: join the cgroup, then the namespace, then connect; never returns.
unsafe fn child_connect(procs: i32, netns: i32, to: &libc::sockaddr_in, tv: &libc::timeval) -> ! {
    // SAFETY: raw syscalls on valid fds and buffers; _exit only.
    unsafe {
        if libc::write(procs, c"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(SETUP_FAILED);
        }
        if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
            libc::_exit(SETUP_FAILED + 1);
        }
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        if s < 0
            || libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (tv as *const libc::timeval).cast(),
                tv_len,
            ) != 0
        {
            libc::_exit(SETUP_FAILED + 2);
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::connect(s, (to as *const libc::sockaddr_in).cast(), len);
        libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() })
    }
}

fn assert_refused(r: io::Result<()>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        other => panic!("{what}: connect() should get EPERM, got {other:?}"),
    }
}

#[test]
fn cgroup_connect4_refuses_the_port_in_its_cgroup_only_and_leaves_nothing() {
    if !require_root("cgroup_connect4_refuses_the_port_in_its_cgroup_only_and_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let net = Pair::new();
    let _listeners = net.listen();
    let cg = ScratchCgroup::new("lab-agent-test").unwrap();
    let member = |port, t| connect_in_cgroup(net.b.name(), cg.path(), port, t);
    assert_works(member(PORT, WORKS_WITHIN), "before any agent");

    let target = Target::Cgroup(cg.path().to_path_buf());
    let agent = Agent::start(&spec(Kind::CgroupConnect4, target.clone(), false)).unwrap();
    assert_ready_line(&agent);
    assert_held_by_its_pid(&agent);
    assert_refused(member(PORT, WORKS_WITHIN), "deny variant, its port");
    assert_works(member(OTHER, WORKS_WITHIN), "deny variant, another port");
    assert_works(
        net.connect(PORT, WORKS_WITHIN),
        "deny variant, outside the cgroup",
    );
    stop_and_gone(agent);
    assert_works(
        member(PORT, WORKS_WITHIN),
        "after the deny variant's agent exited",
    );

    let agent = Agent::start(&spec(Kind::CgroupConnect4, target, true)).unwrap();
    assert_works(member(PORT, WORKS_WITHIN), "allow variant, its port");
    stop_and_gone(agent);
}

/// An agent killed outright cannot delete its tc filter: the handle does it for it.
#[test]
fn a_killed_tc_agent_still_leaves_nothing() {
    if !require_root("a_killed_tc_agent_still_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let net = Pair::new();
    let _listeners = net.listen();
    let agent = Agent::start(&spec(Kind::TcIngress, net.target(Kind::TcIngress), false)).unwrap();
    let (id, name) = (agent.prog_id(), agent.name().to_string());
    // SAFETY: our own child, alive (its handle has not reaped it).
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) }, 0);
    assert!(agent.stop().is_err(), "a killed agent is no clean exit");
    assert_prog_gone(id, &name);
    net.assert_no_tc_left();
    assert_works(net.connect(PORT, WORKS_WITHIN), "after the killed agent");
}

/// An agent whose parent dies exits and detaches, even with its stdin still open elsewhere:
/// PR_SET_PDEATHSIG alone stops it.
#[test]
fn an_orphaned_agent_detaches() {
    if !require_root("an_orphaned_agent_detaches") {
        return;
    }
    let _serial = serial();
    let net = Pair::new();
    let spec = spec(Kind::TcxIngress, net.target(Kind::TcxIngress), false);
    // sh is the parent and says the agent's pid. The agent gets our stdin pipe through fd 3
    // (sh gives a background job /dev/null as stdin before any redirection), and we keep
    // that pipe open, so only its parent's death can stop it.
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg("exec 3<&0; \"$0\" \"$@\" <&3 3<&- & echo $! >&2; wait")
        .arg(agent::binary().unwrap())
        .args(spec.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Out of `sh`: Child::wait would close it.
    let stdin = sh.stdin.take().unwrap();
    let pid = first_line(sh.stderr.take().unwrap());
    let ready: agent::Ready = serde_json::from_str(&first_line(sh.stdout.take().unwrap())).unwrap();
    let ours = std::fs::read_link(format!("/proc/self/fd/{}", stdin.as_raw_fd()));
    let its = std::fs::read_link(format!("/proc/{}/fd/0", pid.trim()));
    assert_eq!(its.unwrap(), ours.unwrap(), "the agent's stdin is our pipe");
    sh.kill().unwrap();
    sh.wait().unwrap();
    assert_prog_gone(ready.prog_id, &ready.name);
    drop(stdin);
}

/// A child's first line, within the agent's ready timeout.
fn first_line(pipe: impl io::Read + Send + 'static) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(pipe).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(agent::READY_TIMEOUT)
        .expect("a line from the child")
}

#[test]
fn every_kind_is_available_here_and_the_probe_leaves_nothing() {
    if !require_root("every_kind_is_available_here_and_the_probe_leaves_nothing") {
        return;
    }
    let _serial = serial();
    for kind in Kind::ALL {
        assert_eq!(agent::available(*kind), Ok(()));
        assert_prog_gone(0, kind.prog_name(true));
    }
    let prefix = format!("lab-agent-probe-{}-", std::process::id());
    let left = ip(None, &["netns", "list"]).unwrap();
    assert!(!left.contains(&prefix), "probe namespaces left: {left}");
    let cgroups = std::fs::read_dir(agent::cgroup2_mount().unwrap()).unwrap();
    let left: Vec<PathBuf> = cgroups
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(&prefix))
        .collect();
    assert!(left.is_empty(), "probe cgroups left: {left:?}");
}

#[test]
fn a_refused_program_shows_the_verifier_log() {
    if !require_root("a_refused_program_shows_the_verifier_log") {
        return;
    }
    // XDP, reading the packet's first byte with no bounds check: the verifier says no.
    let mut a = agent::asm::Asm::default();
    a.load(agent::asm::Size::W, 2, 1, 0)
        .load(agent::asm::Size::B, 0, 2, 0)
        .exit();
    let insns = a.finish();
    let load = agent::sys::Load {
        prog_type: 6,
        expected_attach_type: 37,
        name: "agent_bad",
        insns: &insns,
    };
    let e = format!("{:#}", agent::sys::prog_load(&load).unwrap_err());
    assert!(
        e.contains("verifier log") && e.contains("invalid access to packet"),
        "{e}"
    );
}

#[test]
fn the_binary_is_found_next_to_the_tests() {
    let found = agent::binary().unwrap().canonicalize().unwrap();
    assert_eq!(
        found,
        Path::new(env!("CARGO_BIN_EXE_lab-agent")).canonicalize().unwrap()
    );
}

/// A device that already has an ingress qdisc (someone else's): an ingress filter goes on
/// it and the qdisc stays after; an egress filter, which needs clsact, is refused cleanly.
#[test]
fn tc_uses_an_existing_ingress_qdisc_and_refuses_egress_on_it() {
    if !require_root("tc_uses_an_existing_ingress_qdisc_and_refuses_egress_on_it") {
        return;
    }
    let _serial = serial();
    let net = Pair::new();
    let _listeners = net.listen();
    let qdisc = |verb| run_in(Some(net.a.name()), "tc", &["qdisc", verb, "dev", "va", "ingress"]);
    qdisc("add").unwrap();
    let on_va = Target::Device {
        netns: Some(net.a.name().to_string()),
        dev: "va".to_string(),
    };
    let e = Agent::start(&spec(Kind::TcEgress, on_va.clone(), false)).err();
    let e = format!("{:#}", e.expect("egress on an ingress qdisc"));
    assert!(e.contains("needs clsact"), "{e}");
    assert_prog_gone(0, Kind::TcEgress.prog_name(false));

    let agent = Agent::start(&spec(Kind::TcIngress, on_va, false)).unwrap();
    assert!(!agent.ready().tc.as_ref().unwrap().created_qdisc);
    assert_dropped(net.connect(PORT, DROPPED_AFTER), "on the ingress qdisc");
    stop_and_gone(agent);
    let shown = run_in(Some(net.a.name()), "tc", &["qdisc", "show", "dev", "va"]).unwrap();
    assert!(
        shown.contains("qdisc ingress"),
        "the ingress qdisc was not ours: {shown}"
    );
    let filters = run_in(
        Some(net.a.name()),
        "tc",
        &["filter", "show", "dev", "va", "ingress"],
    )
    .unwrap();
    assert!(filters.trim().is_empty(), "{filters}");
    qdisc("del").unwrap();
    net.assert_no_tc_left();
}
