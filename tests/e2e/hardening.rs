//! Issue 10: a hostile guest, a recycled slot, a hung `nft`, two tracers at once — none may
//! fool or stop the tracer. Each test is named after the defect it guards against. Root; the
//! lab lock serializes these tests.
mod common;

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::Tracer;
use lab::{LabConfig, testing::lab_up};
use serde_json::Value;

/// Runs `f` on a thread inside the lab namespace `ns`, pinned to CPU 0.
fn in_ns_on_cpu0<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        // SAFETY: plain syscalls on this thread only.
        unsafe {
            assert_eq!(libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET), 0, "setns");
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
                0,
                "pin to CPU 0"
            );
        }
        f()
    })
    .join()
    .expect("thread panicked")
}

/// A connect that is dropped in OUTPUT, then closed: its SYN's skb is freed right away on
/// this CPU, and the next connection's SYN is likely allocated at the same address.
fn dropped_syn(port: u16) {
    // SAFETY: a plain non-blocking socket, closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        libc::close(fd);
    }
}

/// Defect 2: a per-CPU "not ours" mark left by a dropped, freed foreign skb must not hide a
/// followed skb that reuses its address: every followed SYN is seen at OUTPUT.
#[test]
fn stale_skip_mark_hides_no_followed_hop() {
    let Some(lab) = lab_up("stale_skip_mark", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    let host_ip = lab.sandboxes()[0].slot.host_ip();
    // Foreign SYNs are dropped in the host's OUTPUT, inside the tracer's namespaces.
    lab::sh::run_in(
        Some("e2b-host"),
        "iptables",
        &[
            "-I", "OUTPUT", "-o", "lo", "-p", "tcp", "--dport", "7001", "-j", "DROP",
        ],
    )
    .unwrap();
    let t = Tracer::start(&["trace", "--vm", &id, "--json", "--all-hops"]);
    const ROUNDS: usize = 60;
    let ok = in_ns_on_cpu0("e2b-host", move || {
        let target = SocketAddr::from((host_ip, 49983));
        let mut ok = 0;
        for _ in 0..ROUNDS {
            dropped_syn(7001);
            if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                let _ = s.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
                let _ = s.read(&mut [0u8; 256]);
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, ROUNDS, "the path works");
    let journeys: Vec<Value> = (0..ROUNDS)
        .map(|_| t.next_json(Duration::from_secs(10), |v| v["type"] == "journey").0)
        .collect();
    assert!(
        journeys.iter().all(|j| j["outcome"] == "connected"),
        "{journeys:?}"
    );
    let blind: Vec<&Value> = journeys
        .iter()
        .filter(|j| {
            !j["hops"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["point"] == "nf/OUTPUT" && h["netns"] == "e2b-host" && h["flags"] == "S")
        })
        .collect();
    assert!(
        blind.is_empty(),
        "{} of {} SYNs went unseen at OUTPUT, e.g. {}",
        blind.len(),
        journeys.len(),
        blind[0]
    );
}

/// Defect 1: a guest that answers envd's port with endless bytes and no line end can neither
/// hang an attempt (each ends at its deadline) nor grow the tracer's memory (the read is
/// capped): `trace --probe` and `doctor` finish on their own.
#[test]
fn a_guest_streaming_garbage_cannot_hang_the_tool() {
    let Some(lab) = lab_up("garbage_guest", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.control(0, "respond garbage").unwrap();
    let limit = Duration::from_secs(20);
    let (code, out, err) = common::tracer_bounded(&["trace", "--vm", &id, "--probe", "--json"], limit);
    assert!(code.is_some(), "trace --probe did not finish in {limit:?}: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["outcome"], "connected", "the path itself works: {v}");
    let (code, out, err) = common::tracer_bounded(&["doctor", "--vm", &id, "--json"], limit);
    assert!(code.is_some(), "doctor did not finish in {limit:?}: {err}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let envd = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "envd")
        .expect("the envd check");
    assert_ne!(envd["status"], "ok", "garbage is not a healthy envd: {envd}");
}

/// Defect 5: a hung `nft` (stopped with SIGSTOP) while a failure is being judged neither
/// blocks the event loop nor keeps the tracer from answering SIGTERM within 1 s, and is not
/// left behind.
#[test]
fn a_stopped_nft_does_not_stop_the_tracer() {
    let Some(mut lab) = lab_up("stopped_nft", LabConfig::default()) else {
        return;
    };
    let id = lab.sandbox_ids()[0].clone();
    lab.break_fault(0, lab::Fault::ForwardDrop).unwrap();
    // An `nft` that stops itself once the flag file exists.
    let dir = std::env::temp_dir().join(format!("tracer-hung-nft-{}", std::process::id()));
    let _cleanup = common::RemoveOnDrop(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let flag = dir.join("stop");
    let real = common::sh(&["sh", "-c", "command -v nft"]).trim().to_string();
    std::fs::write(
        dir.join("nft"),
        format!(
            "#!/bin/sh\n[ -e {} ] && kill -STOP $$\nexec {real} \"$@\"\n",
            flag.display()
        ),
    )
    .unwrap();
    common::sh(&["chmod", "+x", &dir.join("nft").display().to_string()]);
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let t = Tracer::start_with_env(&["trace", "--vm", &id, "--json"], &[("PATH", &path)]);
    std::fs::write(&flag, b"").unwrap();
    lab.connect(0, 3).unwrap();
    let stopped = lab::testing::wait_for(Duration::from_secs(10), Duration::from_millis(10), || {
        common::descendants(t.pid())
            .into_iter()
            .find(|p| common::proc_state(*p) == Some('T'))
    })
    .unwrap_or_else(|| panic!("no stopped nft under the tracer; stderr: {}", t.stderr()));
    let start = Instant::now();
    // SAFETY: signals to our own children.
    unsafe { libc::kill(t.pid() as i32, libc::SIGTERM) };
    let stop_guard = common::KillOnDrop(stopped);
    let code = t.wait_at_most(Duration::from_secs(10));
    let took = start.elapsed();
    assert!(code.is_some(), "SIGTERM not answered in 10 s");
    assert!(took < Duration::from_secs(1), "SIGTERM answered after {took:?}");
    let gone = lab::testing::wait_for(Duration::from_secs(2), Duration::from_millis(10), || {
        (!Path::new(&format!("/proc/{stopped}")).exists() || common::proc_state(stopped) == Some('Z'))
            .then_some(())
    });
    drop(stop_guard);
    assert!(gone.is_some(), "the stopped nft {stopped} was left behind");
}
