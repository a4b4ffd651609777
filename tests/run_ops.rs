//! Operations of `vmpulse run` through the real binary on KVM: the API socket and
//! `vmpulse ctl`, the metrics listener (checked with the real `promtool` and scraped by a
//! real Prometheus server), the events file, the summary and `--exit-code-from-phase`,
//! clients that try to stall the loop, and the example Pod manifest through `kubectl`.

#[path = "common/qga.rs"]
mod qga;
mod run_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use run_util::{fast_guest, kvm_or_skip, manifest, spawn, Live, Vm, LIMIT};
use serde_json::Value;

/// One HTTP request on a stream; the status code and the body.
fn exchange(mut s: impl Read + Write, method: &str, target: &str) -> (u16, String) {
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

fn unix_request(socket: &Path, method: &str, target: &str) -> (u16, String) {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(s, method, target)
}

fn tcp_request(addr: SocketAddr, target: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(s, "GET", target)
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .arg("ctl")
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run vmpulse ctl")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_socket(socket: &Path) {
    let end = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < end,
            "no API socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(socket: &Path) -> Value {
    let (code, body) = unix_request(socket, "GET", "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A manifest whose readiness probe is a TCP connect to `port`.
fn vm_with_readiness(port: u16) -> String {
    let extra = format!(
        "      readinessProbe:\n        tcpSocket:\n          port: {port}\n        periodSeconds: 1\n        timeoutSeconds: 1\n"
    );
    Vm {
        strategy: "Always",
        action: Some("reset"),
        extra: &extra,
        ..Vm::default()
    }
    .yaml()
}

#[test]
fn status_control_and_the_events_file_through_the_api_socket() {
    if !kvm_or_skip("status_control_and_the_events_file_through_the_api_socket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let events_file = dir.path().join("events.jsonl");
    // The readiness probe's target: connects succeed as long as this listener lives.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let m = manifest(&vm_with_readiness(target.local_addr().unwrap().port()));
    let mut args = fast_guest("1000");
    let socket_arg = socket.to_str().unwrap().to_string();
    let events_arg = events_file.to_str().unwrap().to_string();
    args.extend(["--run-for", "50s", "--api-socket", &socket_arg]);
    args.extend(["--events-file", &events_arg]);
    let mut live = spawn(&m.path, &args, LIMIT);
    live.until(|e| e["type"] == "ready" && e["ready"] == true)
        .expect("the VM becomes ready");
    wait_for_socket(&socket);

    // ctl status: the human table names the VM.
    let out = ctl(&socket, &["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("VM        testvm"), "{table}");
    assert!(table.contains("PHASE     Running"), "{table}");
    assert!(table.contains("readiness"), "{table}");
    // --json prints the raw object.
    let out = ctl(&socket, &["status", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vm"], "testvm");
    assert_eq!(v["phase"], "Running");
    assert_eq!(v["ready"], true);
    assert_eq!(v["paused"], false);
    assert_eq!(
        (v["boots"].as_u64(), v["restarts"].as_u64()),
        (Some(1), Some(0))
    );
    let w = &v["watchdog"];
    assert_eq!(w["action"], "reset");
    assert_eq!(w["timeout_flag"], false);
    assert!(w["expiries"].is_object(), "{w}");
    let p = &v["probes"][0];
    assert_eq!(
        (p["kind"].as_str(), p["type"].as_str()),
        (Some("tcpSocket"), Some("readiness"))
    );
    assert!(p["consecutive_successes"].as_u64().unwrap() >= 1, "{p}");
    let last = p["last_results"].as_array().unwrap();
    assert!(!last.is_empty() && last.len() <= 10, "{p}");
    assert_eq!(last[0]["result"], "success");
    assert!(last[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(last[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(unix_request(&socket, "GET", "/readyz").0, 200);
    assert_eq!(unix_request(&socket, "GET", "/livez").0, 200);

    // Pause: not ready, the watchdog frozen; resume: ready again.
    assert!(ctl(&socket, &["pause"]).status.success());
    let v = status(&socket);
    assert_eq!(
        (v["paused"].as_bool(), v["ready"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(unix_request(&socket, "GET", "/readyz").0, 503);
    assert!(ctl(&socket, &["resume"]).status.success());
    assert_eq!(status(&socket)["paused"], false);
    live.until(|e| e["type"] == "ready" && e["ready"] == true)
        .expect("ready again after resume");
    // Reset: the guest boots again.
    assert!(ctl(&socket, &["reset"]).status.success());
    live.until(|e| e["type"] == "started" && e["boot"] == 2)
        .expect("a second boot after the reset");
    // Wrong method and unknown path.
    assert_eq!(unix_request(&socket, "GET", "/vm/stop").0, 405);
    assert_eq!(unix_request(&socket, "GET", "/nothing").0, 404);
    // Stop: the run ends, runStrategy Always does not restart (as `virtctl stop`).
    assert!(ctl(&socket, &["stop"]).status.success());
    let run = live.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.assert_story_ends(&["started 2", "stopped api", "finished 0"]);
    let n = run.events.len();
    let summary = &run.events[n - 2];
    assert_eq!(summary["type"], "summary", "{}", run.dump());
    assert_eq!(summary["phase"], "Succeeded");
    assert_eq!(summary["boots"], 2);
    assert!(summary["ready_ms"].as_u64().unwrap() > 0);
    assert_eq!(summary["probes"][0]["type"], "readiness");
    assert!(summary["probes"][0]["attempts"].as_u64().unwrap() >= 2);
    // Every JSON event has vm and timestamp; probe events a float duration.
    for e in &run.events {
        assert_eq!(e["vm"], "testvm", "{e}");
        let t = e["timestamp"].as_str().unwrap();
        assert_eq!((t.len(), t.ends_with('Z')), (24, true), "{e}");
    }
    assert!(run.first_probe("success")["duration_ms"].is_f64());
    // The events file holds the same events as stdout, as JSON lines.
    let text = std::fs::read_to_string(&events_file).unwrap();
    let file: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types = |events: &[Value]| -> Vec<String> {
        events.iter().map(|e| e["type"].to_string()).collect()
    };
    assert_eq!(types(&file), types(&run.events));
    assert_eq!(file.last().unwrap()["exit_code"], 0);
    // The API socket is removed at the end; ctl then says it cannot connect.
    assert!(!socket.exists());
    let out = ctl(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// `vmpulse run` with human output on stdout and the JSON events in a file.
fn run_human(
    manifest: &Path,
    args: &[&str],
    events_file: &Path,
) -> (Option<i32>, String, Vec<Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .arg("run")
        .arg(manifest)
        .args(args)
        .arg("--events-file")
        .arg(events_file)
        .stdin(Stdio::null())
        .output()
        .expect("run vmpulse");
    let events = std::fs::read_to_string(events_file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        events,
    )
}

#[test]
fn a_watchdog_stop_is_a_failed_phase_and_exit_code_3_on_request() {
    if !kvm_or_skip("a_watchdog_stop_is_a_failed_phase_and_exit_code_3_on_request") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(&Vm::with("Once", "poweroff").yaml());
    let mut args = fast_guest("1");
    args.push("--exit-code-from-phase");
    let file = dir.path().join("with-flag.jsonl");
    let (code, human, events) = run_human(&m.path, &args, &file);
    assert_eq!(code, Some(3), "{human}");
    // Human output on stdout, JSON in the file.
    assert!(human.contains("VM stopped: watchdog"), "{human}");
    assert!(
        human.contains("summary: VM Failed, 1 boot(s), 0 restart(s)"),
        "{human}"
    );
    assert!(human.contains("watchdog expiries: poweroff 1"), "{human}");
    assert!(!human.contains("\"type\""), "{human}");
    let n = events.len();
    assert_eq!(events[n - 2]["type"], "summary");
    assert_eq!(events[n - 2]["phase"], "Failed");
    assert_eq!(events[n - 2]["watchdog_expiries"]["poweroff"], 1);
    assert_eq!(events[n - 1]["type"], "finished");
    assert_eq!(events[n - 1]["exit_code"], 3);

    // Without the flag the exit code stays 0; the file is appended to.
    let (code, _, events) = run_human(&m.path, &fast_guest("1"), &file);
    assert_eq!(code, Some(0));
    let finished: Vec<&Value> = events.iter().filter(|e| e["type"] == "finished").collect();
    assert_eq!(finished.len(), 2);
    assert_eq!(finished[1]["exit_code"], 0);

    // A guest that powers itself off (runtime end here) is Succeeded: 0 even with the flag.
    let m = manifest(&Vm::with("Once", "poweroff").yaml());
    let mut args = fast_guest("1000");
    args.extend(["--run-for", "1500ms", "--exit-code-from-phase"]);
    let (code, human, _) = run_human(&m.path, &args, &dir.path().join("ok.jsonl"));
    assert_eq!(code, Some(0), "{human}");
    assert!(human.contains("summary: VM Succeeded"), "{human}");
}

/// Reads until the peer closes or 3 s pass; what arrived.
fn read_some(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_clients_do_not_stall_the_vm() {
    if !kvm_or_skip("hostile_clients_do_not_stall_the_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = manifest(&Vm::with("Once", "poweroff").yaml());
    // Heartbeat 1 s; the guest hangs 4 s after boot: the watchdog fires about 5 s after it.
    let mut args = fast_guest("4");
    let (socket_arg, addr_arg) = (socket.to_str().unwrap().to_string(), addr.to_string());
    args.extend(["--api-socket", &socket_arg, "--metrics-addr", &addr_arg]);
    let mut live: Live = spawn(&m.path, &args, LIMIT);
    let started = live
        .until(|e| e["type"] == "started")
        .expect("the VM starts");
    wait_for_socket(&socket);
    let t0 = Instant::now();

    // Silent clients on both listeners, within the connection limit.
    let silent_unix: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let silent_tcp: Vec<TcpStream> = (0..12).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // A client that sends its request one byte every 100 ms.
    let slow_socket = socket.clone();
    let slow = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&slow_socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for b in b"GET /status HTTP/1.1\r\nHost: slow\r\n\r\n" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        read_some(&mut s)
    });
    // A client that sends a huge request.
    let huge_socket = socket.clone();
    let huge = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&huge_socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = b"GET /status HTTP/1.1\r\nX-Fill: ".to_vec();
        request.extend(std::iter::repeat(b'x').take(4 << 20));
        let _ = s.write_all(&request);
        read_some(&mut s)
    });
    std::thread::sleep(Duration::from_millis(200));

    // Meanwhile, others are served at once, on both listeners.
    let asked = Instant::now();
    let v = status(&socket);
    assert_eq!(v["vm"], "testvm");
    let (code, metrics) = tcp_request(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("vmpulse_vm_boots_total{vm=\"testvm\"} 1"),
        "{metrics}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // A flood beyond the limit is refused at once (503), not left hanging.
    let mut flood: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut refused = 0;
    for s in &mut flood {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 12];
        if let Ok(12) = s.read(&mut buf) {
            if &buf == b"HTTP/1.1 503" {
                refused += 1;
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "no connection was refused with 503");
    drop(flood);

    // The slow and huge clients are cut off (408, 413).
    let slow = slow.join().unwrap();
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow:?}");
    let huge = huge.join().unwrap();
    assert!(
        huge.is_empty() || huge.starts_with("HTTP/1.1 413"),
        "{huge:?}"
    );
    // Silent clients are cut off at the deadline, with 408.
    for mut s in silent_unix {
        let answer = read_some(&mut s);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
    drop(silent_tcp);
    // After the deadlines, the API serves again.
    assert_eq!(status(&socket)["phase"], "Running");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "the checks took too long"
    );

    // The VM's run was not stalled: the watchdog fired on time.
    let fired = live
        .until(|e| e["type"] == "watchdog")
        .expect("the watchdog fires");
    let run = live.finish();
    let after = fired["time_ms"].as_u64().unwrap() - started["time_ms"].as_u64().unwrap();
    assert!(
        (4_300..=6_500).contains(&after),
        "the watchdog fired {after} ms after the start: {}",
        run.dump()
    );
    run.assert_story(&[
        "started 1",
        "watchdog poweroff",
        "stopped watchdog",
        "finished 0",
    ]);
}

/// Whether the Prometheus tools are here: under CI=true they must be; elsewhere the test
/// skips loudly.
fn prometheus_tools() -> bool {
    let ok = Path::new("/usr/bin/prometheus").exists() && which("promtool").is_some();
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but prometheus/promtool are missing (apt-get install prometheus)"
        );
        eprintln!("SKIP: prometheus and promtool are not installed (Debian package prometheus)");
    }
    ok
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// Kills the child on drop.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn promtool_accepts_the_metrics_and_prometheus_scrapes_them() {
    if !kvm_or_skip("promtool_accepts_the_metrics_and_prometheus_scrapes_them")
        || !prometheus_tools()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let m = manifest(&vm_with_readiness(target.local_addr().unwrap().port()));
    let mut args = fast_guest("2");
    let addr_arg = addr.to_string();
    args.extend(["--run-for", "50s", "--metrics-addr", &addr_arg]);
    let mut live = spawn(&m.path, &args, LIMIT);
    // Let some of everything happen: probe results, an expiry, a reset.
    live.until(|e| e["type"] == "watchdog")
        .expect("the watchdog fires");
    live.until(|e| e["type"] == "probe")
        .expect("a probe result");

    let (code, text) = tcp_request(addr, "/metrics");
    assert_eq!(code, 200);
    for series in [
        "vmpulse_vm_boots_total",
        "vmpulse_vm_restarts_total",
        "vmpulse_vm_ready",
        "vmpulse_vm_phase{phase=\"Running\",vm=\"testvm\"} 1",
        "vmpulse_watchdog_expiries_total{action=\"reset\",vm=\"testvm\"} 1",
        "vmpulse_watchdog_guest_kicks_total",
        "vmpulse_probe_results_total{probe=\"tcpSocket\",result=\"success\",type=\"readiness\",vm=\"testvm\"}",
        "vmpulse_probe_duration_seconds_bucket{probe=\"tcpSocket\",type=\"readiness\",vm=\"testvm\",le=\"0.001\"}",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    // promtool reads the text on stdin.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A broken exposition fails the same check: promtool does check.
    let mut broken = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    broken
        .stdin
        .take()
        .unwrap()
        .write_all(b"# TYPE x counter\nx{ 1\n")
        .unwrap();
    assert!(!broken.wait().unwrap().success());

    // The same listener answers the Pod's health checks.
    assert_eq!(tcp_request(addr, "/livez").0, 200);
    assert_eq!(tcp_request(addr, "/readyz").0, 200);

    // A real Prometheus server scrapes vmpulse every second.
    let web = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: vmpulse\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Reaper(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let web: SocketAddr = web.parse().unwrap();
    let end = Instant::now() + Duration::from_secs(45);
    let answer = loop {
        assert!(
            Instant::now() < end,
            "Prometheus never answered a query for vmpulse_vm_boots_total"
        );
        std::thread::sleep(Duration::from_millis(500));
        let Ok(s) = TcpStream::connect(web) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (code, body) = exchange(s, "GET", "/api/v1/query?query=vmpulse_vm_boots_total");
        if code != 200 {
            continue;
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break v;
        }
    };
    let sample = &answer["data"]["result"][0];
    assert_eq!(sample["metric"]["__name__"], "vmpulse_vm_boots_total");
    assert_eq!(sample["metric"]["vm"], "testvm");
    let boots: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
    assert!(boots >= 2.0, "{answer}");
    drop(live);
}

/// A fake Kubernetes API server that only answers discovery, so that `kubectl create
/// --dry-run=client` can map the manifest's kinds without a cluster.
fn fake_discovery() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head
                .split(' ')
                .nth(1)
                .unwrap_or("")
                .split('?')
                .next()
                .unwrap_or("");
            let body = match path {
                "/api" => serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
                "/apis" => {
                    serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
                }
                "/api/v1" => {
                    serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                    {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["create", "get"]},
                    {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap", "verbs": ["create", "get"]}]})
                }
                _ => Value::Null,
            };
            let (status, body) = if body.is_null() {
                ("404 Not Found", "{}".to_string())
            } else {
                ("200 OK", body.to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn kubectl_accepts_the_example_pod() {
    let pod = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes/vmpulse-pod.yaml");
    let text = std::fs::read_to_string(&pod).unwrap();
    // What the Pod must carry, read as YAML.
    let docs: Vec<serde_yaml_ng::Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    let pod_doc = docs.iter().find(|d| d["kind"] == "Pod").expect("a Pod");
    let ann = &pod_doc["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9100");
    let c = &pod_doc["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.iter().any(|a| a.starts_with("--api-socket=")));
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9100"));
    assert!(text.contains("path: /dev/kvm"));
    // The VM manifest in the ConfigMap validates.
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vm.yaml");
    std::fs::write(&vm, cm["data"]["vm.yaml"].as_str().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .arg("validate")
        .arg(&vm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl itself. It is not in the CI image's apt install, so this part skips loudly
    // wherever kubectl is absent, CI included.
    let Some(kubectl) = which("kubectl") else {
        eprintln!("SKIP: kubectl is not installed: the example Pod was not checked by kubectl");
        return;
    };
    // Without a cluster, kubectl still needs API discovery to map kinds: a fake API
    // server answers it. Schema validation would need the cluster's OpenAPI document,
    // hence --validate=false; the structure is checked above.
    let server = fake_discovery();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{server}\"}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, namespace: default}}}}]\ncurrent-context: fake\nusers: []\n"
        ),
    )
    .unwrap();
    let check = |file: &Path| {
        Command::new(&kubectl)
            .args(["create", "--dry-run=client", "--validate=false", "-f"])
            .arg(file)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    let out = check(&pod);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("pod/vmpulse-testvm created (dry run)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("configmap/vmpulse-testvm created (dry run)"),
        "{stdout}"
    );
    // kubectl refuses what it cannot map: the check can fail.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text.replace("kind: Pod", "kind: Pood")).unwrap();
    assert!(!check(&bad).status.success());
}

#[test]
fn the_agent_probes_example_reports_exec_results_in_the_status() {
    if !kvm_or_skip("the_agent_probes_example_reports_exec_results_in_the_status")
        || !qga::available_or_skip()
    {
        return;
    }
    let agent = qga::TempQga::start();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent-probes.yaml");
    let (agent_arg, socket_arg) = (
        agent.sock.to_str().unwrap().to_string(),
        socket.to_str().unwrap().to_string(),
    );
    let mut args = fast_guest("1000");
    args.extend([
        "--guest-agent",
        &agent_arg,
        "--api-socket",
        &socket_arg,
        "--run-for",
        "20s",
    ]);
    let mut live = spawn(&example, &args, LIMIT);
    live.until(|e| e["type"] == "ready" && e["ready"] == true)
        .expect("the exec readiness probe succeeds");
    live.until(|e| e["type"] == "probe" && e["probe"] == "liveness")
        .expect("a liveness ping");
    let v = status(&socket);
    assert_eq!(v["vm"], "agent-probes");
    let probes = v["probes"].as_array().unwrap();
    let exec = probes.iter().find(|p| p["kind"] == "exec").expect("{v}");
    assert_eq!(exec["type"], "readiness");
    let last = exec["last_results"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["result"], "success", "{last}");
    assert_eq!(last["exit_code"], 0, "{last}");
    // /proc/loadavg: three load figures, a running/total count and a pid.
    assert!(
        last["output"].as_str().unwrap().split(' ').count() >= 5,
        "{last}"
    );
    let ping = probes
        .iter()
        .find(|p| p["kind"] == "guestAgentPing")
        .expect("{v}");
    assert_eq!(ping["type"], "liveness");
    assert!(ping["successes"].as_u64().unwrap() >= 1, "{ping}");
    assert!(ctl(&socket, &["shutdown"]).status.success());
    let run = live.finish();
    run.assert_story_ends(&["stopped shutdown", "finished 0"]);
}

#[test]
fn unusable_addresses_and_files_are_clear_errors() {
    // Checked before any VM is created: no KVM needed.
    let m = manifest(&Vm::default().yaml());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .args(["run", "--events", "json", "--metrics-addr", &addr])
        .arg(&m.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let error = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["type"] == "error")
        .unwrap_or_else(|| panic!("no error event: {stdout}"));
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with("cannot listen: "), "{message}");
    assert!(message.contains(&addr), "{message}");

    // A regular file where the API socket should go is left alone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .args(["run", "--api-socket"])
        .arg(&file)
        .arg(&m.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // Bad --metrics-addr and --events-file values are flag errors (exit 2).
    for (flag, value, expected) in [
        ("--metrics-addr", "no-port", "--metrics-addr"),
        (
            "--events-file",
            "/nonexistent/dir/events.jsonl",
            "--events-file",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vmpulse"))
            .args(["run", flag, value])
            .arg(&m.path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expected),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
