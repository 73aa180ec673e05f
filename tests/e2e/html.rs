//! `tracer report --format html` in a real browser: Debian's headless Chromium opens the page
//! of two saved lab records (a SYN dropped in FORWARD, a SYN-ACK dropped in FORWARD) and the
//! test reads what it *rendered*, over the DevTools protocol: the namespace boxes have a size
//! and run left to right without overlapping, each failure mark is red and inside the box of
//! the namespace where the packet died, no text overflows its callout, and the page asked for
//! nothing but its own file. A screenshot is kept in target/test-artifacts/. No root, no lab.
//!
//! Without Chromium the test says so and passes, except under CI=true, where it fails.
use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Every wait of this test ends by then: Chromium starts in about a second here.
const BUDGET: Duration = Duration::from_secs(60);

/// A directory for this test's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("tracer-html-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless Chromium in a process group of its own: on drop (success or panic) the whole
/// group is killed and reaped.
struct Chromium {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Chromium {
    fn launch(binary: &Path, profile: &Path) -> Self {
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        // Chromium's stderr, line by line, read until it closes (so it never blocks on a full
        // pipe); the test waits on the channel with a deadline.
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The browser's DevTools websocket, from the line Chromium prints when it listens.
    fn endpoint(&self, deadline: Instant) -> String {
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.split_once("DevTools listening on ") {
                    Some((_, url)) => return url.trim().to_string(),
                    None => seen.push(line),
                },
                Err(e) => panic!("chromium printed no DevTools endpoint ({e}): {}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: a signal to the process group this test created (its id is the child's).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The DevTools protocol over one websocket: commands with ids, answers matched by id, events
/// kept until asked for.
struct DevTools {
    ws: WebSocket<TcpStream>,
    next: u64,
    session: Option<String>,
    events: Vec<Value>,
    deadline: Instant,
}

impl DevTools {
    fn connect(url: &str, deadline: Instant) -> Self {
        let rest = url.strip_prefix("ws://").expect("a ws:// endpoint");
        let (authority, _) = rest.split_once('/').expect("a path");
        let addr: SocketAddr = authority.parse().expect("an IP:port endpoint");
        assert!(
            addr.ip().is_loopback(),
            "DevTools must listen on loopback: {addr}"
        );
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to DevTools");
        let (ws, _) = tungstenite::client(url, tcp).expect("websocket handshake");
        Self {
            ws,
            next: 0,
            session: None,
            events: Vec::new(),
            deadline,
        }
    }

    /// The next message, waiting no longer than the deadline.
    fn read(&mut self) -> Value {
        let left = self.deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "DevTools: out of time");
        self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
        match self.ws.read().expect("DevTools message (or the deadline passed)") {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("DevTools JSON"),
            _ => Value::Null,
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send to DevTools");
        loop {
            let v = self.read();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Waits for an event (or takes it from those already received).
    fn event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i);
        }
        loop {
            let v = self.read();
            if v["method"] == method {
                return v;
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }
}

fn chromium_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// The page of both saved records, written by the tracer binary.
fn page(dir: &Path) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/fixtures/report");
    let mut jsonl = String::new();
    for name in ["forward-drop.json", "reply-drop.json"] {
        jsonl.push_str(&std::fs::read_to_string(fixtures.join(name)).unwrap());
    }
    let input = dir.join("records.json");
    std::fs::write(&input, jsonl).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["report", input.to_str().unwrap(), "--format", "html"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = dir.join("report.html");
    std::fs::write(&html, &out.stdout).unwrap();
    html
}

/// What the browser drew, per journey: boxes, the failure mark, its colour, the callout.
const MEASURE: &str = r#"
(() => {
  const box = (el) => { if (!el) return null; const r = el.getBoundingClientRect();
    return { x: r.x, y: r.y, w: r.width, h: r.height }; };
  return JSON.stringify([...document.querySelectorAll('section.journey')].map((s, i) => {
    const fail = document.getElementById(`j${i}-fail`);
    const circle = fail && fail.querySelector('circle');
    const callout = document.getElementById(`j${i}-callout`);
    return {
      zones: ['host', 'sandbox', 'guest'].map(k => box(document.querySelector(`#j${i}-ns-${k} rect.zone-box`))),
      nodes: [...s.querySelectorAll('g.node rect')].map(box),
      fail: box(circle),
      failZone: fail && fail.dataset.zone,
      failLane: fail && fail.dataset.lane,
      failFill: circle && getComputedStyle(circle).fill,
      callout: box(callout && callout.querySelector('rect')),
      calloutText: callout ? [...callout.querySelectorAll('text')].map(box) : [],
      failedRows: s.querySelectorAll('table.hops tr.failed').length,
    };
  }));
})()
"#;

#[test]
fn the_html_report_renders_the_path_in_a_browser() {
    let Some(binary) = chromium_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed: `cargo xtask setup` installs it, and CI needs it"
        );
        eprintln!("skipped: no chromium on PATH (`cargo xtask setup` installs it)");
        return;
    };
    let deadline = Instant::now() + BUDGET;
    let dir = TempDir::new();
    let html = page(&dir.0);
    let browser = Chromium::launch(&binary, &dir.0.join("profile"));
    let mut dt = DevTools::connect(&browser.endpoint(deadline), deadline);
    let target = dt.call("Target.createTarget", json!({"url": "about:blank"}));
    let session = dt.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    dt.session = Some(session["sessionId"].as_str().unwrap().to_string());
    dt.call("Page.enable", json!({}));
    dt.call("Network.enable", json!({}));
    dt.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    );
    let url = format!("file://{}", html.display());
    let nav = dt.call("Page.navigate", json!({"url": url}));
    assert!(nav.get("errorText").is_none(), "{nav}");
    dt.event("Page.loadEventFired");

    let drawn = dt.call(
        "Runtime.evaluate",
        json!({"expression": MEASURE, "returnByValue": true}),
    );
    let journeys: Vec<Value> = serde_json::from_str(drawn["result"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(journeys.len(), 2, "{journeys:?}");
    for (j, lane) in journeys.iter().zip(["request", "reply"]) {
        check_journey(j, lane);
    }

    let scripts = dt.call(
        "Runtime.evaluate",
        json!({"expression": "document.scripts.length", "returnByValue": true}),
    );
    assert_eq!(scripts["result"]["value"], 0, "the page runs nothing");

    // Nothing but the page itself was asked for.
    let requests: Vec<String> = dt
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .map(|e| {
            e["params"]["request"]["url"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(requests, [url], "the page fetched something else");

    let png = screenshot(&mut dt);
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let path = artifacts.join("html-report.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot of the rendered report: {}", path.display());
    drop(browser);
}

fn check_journey(j: &Value, lane: &str) {
    let rect =
        |v: &Value| ["x", "y", "w", "h"].map(|k| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}")));
    let zones: Vec<[f64; 4]> = j["zones"].as_array().unwrap().iter().map(rect).collect();
    for z in &zones {
        assert!(
            z[2] > 50.0 && z[3] > 50.0,
            "a namespace box has no size: {zones:?}"
        );
    }
    for w in zones.windows(2) {
        assert!(
            w[0][0] + w[0][2] < w[1][0],
            "boxes overlap or are out of order: {zones:?}"
        );
        assert!((w[0][1] - w[1][1]).abs() < 1.0, "boxes on one row: {zones:?}");
    }
    for n in j["nodes"].as_array().unwrap().iter().map(rect) {
        assert!(
            n[2] > 0.0 && zones.iter().any(|z| n[0] >= z[0] && n[0] + n[2] <= z[0] + z[2]),
            "{n:?}"
        );
    }
    assert_eq!(j["failZone"], "sandbox", "{j}");
    assert_eq!(j["failLane"], lane, "{j}");
    assert_eq!(j["failFill"], "rgb(220, 38, 38)", "the failure mark is red: {j}");
    let fail = rect(&j["fail"]);
    let (cx, cy) = (fail[0] + fail[2] / 2.0, fail[1] + fail[3] / 2.0);
    let sb = zones[1];
    assert!(
        fail[2] > 0.0 && cx > sb[0] && cx < sb[0] + sb[2] && cy > sb[1] && cy < sb[1] + sb[3],
        "the failure mark {fail:?} is not inside the sandbox's box {sb:?}"
    );
    let callout = rect(&j["callout"]);
    for t in j["calloutText"].as_array().unwrap().iter().map(rect) {
        assert!(
            t[0] + t[2] <= callout[0] + callout[2],
            "callout text overflows: {t:?} in {callout:?}"
        );
    }
    assert_eq!(j["failedRows"], 1, "{j}");
}

/// The whole page as PNG.
fn screenshot(dt: &mut DevTools) -> Vec<u8> {
    let m = dt.call("Page.getLayoutMetrics", json!({}));
    let size = &m["cssContentSize"];
    let clip = json!({"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1});
    let shot = dt.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true, "clip": clip}),
    );
    let data = shot["data"].as_str().expect("screenshot data");
    let png = data_encoding::BASE64.decode(data.as_bytes()).expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    png
}
