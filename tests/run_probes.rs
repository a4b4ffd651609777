//! Liveness and readiness probes in `vmpulse run` on /dev/kvm, against real servers the
//! tests start on loopback.

#[path = "common/qga.rs"]
mod qga;
mod run_util;

use std::net::TcpListener;

use qga::TempQga;
use run_util::{answer_ok, kvm_or_skip, manifest, spawn, Manifest, Vm, LIMIT};

fn probe_yaml(kind: &str, handler: &str, failure_threshold: u32) -> String {
    format!(
        "      {kind}:\n{handler}        initialDelaySeconds: 0\n        periodSeconds: 1\n        timeoutSeconds: 1\n        failureThreshold: {failure_threshold}\n"
    )
}

/// The test guest's manifest (runStrategy Once) with one probe.
fn probe_manifest(kind: &str, handler: &str, failure_threshold: u32) -> Manifest {
    manifest(
        &Vm {
            strategy: "Once",
            extra: &probe_yaml(kind, handler, failure_threshold),
            ..Vm::default()
        }
        .yaml(),
    )
}

fn tcp_handler(port: u16) -> String {
    format!("        tcpSocket:\n          port: {port}\n")
}

fn http_handler(port: u16) -> String {
    format!("        httpGet:\n          path: /healthz\n          port: {port}\n")
}

/// A tiny HTTP server answering 200 to every request, on its own thread for the test's life.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    serve(listener);
    port
}

/// The same server on 127.0.0.1 and ::1, one port number.
fn http_server_both() -> u16 {
    for _ in 0..20 {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = TcpListener::bind(("::1", port)) {
            serve(v4);
            serve(v6);
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            answer_ok(s);
        }
    });
}

#[test]
fn liveness_tcp_failure_stops_the_vm() {
    if !kvm_or_skip("liveness_tcp_failure_stops_the_vm") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let m = probe_manifest("livenessProbe", &tcp_handler(port), 2);
    let mut live = spawn(
        &m.path,
        &["--guest-timeout", "5", "--run-for", "40s"],
        LIMIT,
    );
    let ok = live.until(|e| e["type"] == "probe" && e["result"] == "success");
    assert!(ok.is_some(), "no successful probe: {:?}", live.events);
    let ok = ok.unwrap();
    assert_eq!(ok["probe"], "liveness");
    assert_eq!(ok["address"], format!("127.0.0.1:{port}"));
    // The service dies: connections are refused from now on.
    drop(listener);
    let r = live.finish();
    r.assert_story_ends(&["liveness stop", "stopped liveness", "finished 0"]);
    let failures: Vec<_> = r
        .of("probe")
        .into_iter()
        .filter(|e| e["result"] == "failure")
        .collect();
    assert!(failures.len() >= 2, "{}", r.dump());
    assert_eq!(r.of("stopped")[0]["trigger"], "liveness");
    assert_eq!(r.code, Some(0), "{}", r.dump());
}

#[test]
fn liveness_action_reset_reboots_in_place() {
    if !kvm_or_skip("liveness_action_reset_reboots_in_place") {
        return;
    }
    // Nothing listens on this port: every attempt is refused.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let m = manifest(
        &Vm {
            strategy: "Once",
            annotations: &[("vmpulse.io/liveness-action", "reset")],
            extra: &probe_yaml("livenessProbe", &tcp_handler(port), 1),
            ..Vm::default()
        }
        .yaml(),
    );
    let mut live = spawn(&m.path, &["--guest-timeout", "5", "--run-for", "6s"], LIMIT);
    let second = live.until(|e| e["type"] == "started" && e["boot"] == 2);
    drop(second);
    let r = live.finish();
    let story = r.story();
    let at = story
        .iter()
        .position(|s| s == "liveness reset")
        .unwrap_or_else(|| panic!("no liveness reset: {}", r.dump()));
    assert_eq!(story[at + 1], "started 2", "{}", r.dump());
    assert!(!story.contains(&"stopped liveness".to_string()));
}

#[test]
fn readiness_http_success_makes_the_vm_ready() {
    if !kvm_or_skip("readiness_http_success_makes_the_vm_ready") {
        return;
    }
    let port = http_server();
    let m = probe_manifest("readinessProbe", &http_handler(port), 3);
    let r =
        spawn(&m.path, &["--guest-timeout", "5", "--run-for", "5s"], LIMIT).finish_first_ready();
    let ok = r.first_probe("success");
    assert_eq!(ok["probe"], "readiness");
    assert_eq!(ok["address"], format!("127.0.0.1:{port}"));
    // Not ready any more once the VM is stopped by --run-for.
    let readiness: Vec<bool> = r
        .of("ready")
        .iter()
        .map(|e| e["ready"].as_bool().unwrap())
        .collect();
    assert_eq!(readiness, [true, false], "{}", r.dump());
    // The VM turns not ready before the event that ends its run.
    let not_ready = r
        .events
        .iter()
        .position(|e| e["type"] == "ready" && e["ready"] == false)
        .unwrap();
    let stopped = r
        .events
        .iter()
        .position(|e| e["type"] == "stopped")
        .unwrap();
    assert!(not_ready < stopped, "{}", r.dump());
    assert_eq!(
        r.story()[r.story().len() - 2..],
        ["stopped runtime", "finished 0"]
    );
    assert_eq!(r.code, Some(0));
}

/// The end of a run is in order: `ready: false` before `stopped`, `summary` just before
/// `finished`, nothing after `finished` — also when `--run-for` ends the run while a
/// readiness result is still on its way (`--restart-backoff 0s --run-for 1s`; before the fix: `started`, `stopped`, `ready: true`,
/// `ready: false` in 12 of 12 tries).
#[test]
fn the_end_of_a_run_with_restart_backoff_0s_is_in_order() {
    if !kvm_or_skip("the_end_of_a_run_with_restart_backoff_0s_is_in_order") {
        return;
    }
    let port = http_server();
    let m = manifest(
        &Vm {
            strategy: "Always",
            extra: &probe_yaml("readinessProbe", &http_handler(port), 3),
            ..Vm::default()
        }
        .yaml(),
    );
    for _ in 0..3 {
        let r = spawn(
            &m.path,
            &[
                "--guest-timeout",
                "5",
                "--restart-backoff",
                "0s",
                "--run-for",
                "1s",
            ],
            LIMIT,
        )
        .finish();
        assert_eq!(r.code, Some(0), "{}", r.dump());
        let kinds: Vec<&str> = r
            .events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            kinds[kinds.len() - 2..],
            ["summary", "finished"],
            "{}",
            r.dump()
        );
        let stopped = kinds.iter().rposition(|k| *k == "stopped").unwrap();
        // Every readiness change belongs to the VM's life: none after `stopped`.
        assert!(
            kinds[stopped..].iter().all(|k| *k != "ready"),
            "{}",
            r.dump()
        );
        let readiness: Vec<bool> = r
            .of("ready")
            .iter()
            .map(|e| e["ready"].as_bool().unwrap())
            .collect();
        assert!(
            readiness.first() == Some(&true),
            "the probe succeeds: {}",
            r.dump()
        );
        assert_eq!(readiness.last(), Some(&false), "{}", r.dump());
    }
}

#[test]
fn readiness_needs_every_probe_host() {
    if !kvm_or_skip("readiness_needs_every_probe_host") {
        return;
    }
    let port = http_server_both();
    let m = probe_manifest("readinessProbe", &http_handler(port), 3);
    let args = [
        "--guest-timeout",
        "5",
        "--run-for",
        "4s",
        "--probe-host",
        "127.0.0.1,::1",
    ];
    let r = spawn(&m.path, &args, LIMIT).finish_first_ready();
    let ok = r.first_probe("success");
    let address = ok["address"].as_str().unwrap();
    assert!(address.contains(&format!("127.0.0.1:{port}")), "{address}");
    assert!(address.contains(&format!("[::1]:{port}")), "{address}");

    // Only 127.0.0.1 answers now: never ready, and the failures name ::1.
    let v4_only = http_server();
    let m = probe_manifest("readinessProbe", &http_handler(v4_only), 3);
    let r = run_util::run(&m.path, &args, LIMIT);
    assert!(
        r.of("ready").iter().all(|e| e["ready"] == false),
        "{}",
        r.dump()
    );
    let failure = r.first_probe("failure");
    assert_eq!(
        failure["address"],
        format!("[::1]:{v4_only}"),
        "{}",
        r.dump()
    );
}

#[test]
fn readiness_exec_through_qemu_ga() {
    if !kvm_or_skip("readiness_exec_through_qemu_ga") {
        return;
    }
    let qga = TempQga::start();
    let sock = &qga.sock;
    let healthy = qga.dir.path().join("healthy.txt");
    std::fs::write(&healthy, "all good\n").unwrap();
    let handler = format!(
        "        exec:\n          command: [\"cat\", \"{}\"]\n",
        healthy.display()
    );
    let m = probe_manifest("readinessProbe", &handler, 3);
    let sock_arg = sock.to_str().unwrap().to_string();
    let args = [
        "--guest-timeout",
        "5",
        "--run-for",
        "5s",
        "--guest-agent",
        sock_arg.as_str(),
    ];
    let r = spawn(&m.path, &args, LIMIT).finish_first_ready();
    let ok = r.first_probe("success");
    assert_eq!(ok["probe"], "readiness");
    assert_eq!(ok["exit_code"], 0, "{}", r.dump());
    assert!(
        ok["output"]
            .as_str()
            .unwrap_or_default()
            .contains("all good"),
        "{}",
        r.dump()
    );
}

#[test]
fn agent_ping_over_com2_without_an_agent_fails_liveness() {
    if !kvm_or_skip("agent_ping_over_com2_without_an_agent_fails_liveness") {
        return;
    }
    // The built-in guest runs no agent on COM2: pings time out, liveness fails.
    let handler = "        guestAgentPing: {}\n";
    let m = probe_manifest("livenessProbe", handler, 2);
    let r = run_util::run(
        &m.path,
        &["--guest-timeout", "5", "--run-for", "30s", "--agent-serial"],
        LIMIT,
    );
    r.assert_story_ends(&["liveness stop", "stopped liveness", "finished 0"]);
    let failures = r
        .of("probe")
        .into_iter()
        .filter(|e| e["result"] == "failure" && e["probe"] == "liveness")
        .count();
    assert_eq!(failures, 2, "{}", r.dump());
}

#[test]
fn liveness_http_errors_are_printed_and_never_fail_the_vm() {
    if !kvm_or_skip("liveness_http_errors_are_printed_and_never_fail_the_vm") {
        return;
    }
    // Every answer's body is shorter than its Content-Length: a probe error,
    // which the kubelet throws away, so even failureThreshold 1 never trips.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = std::io::Write::write_all(
                &mut s,
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
            );
        }
    });
    let m = probe_manifest("livenessProbe", &http_handler(port), 1);
    let r = spawn(&m.path, &["--guest-timeout", "5", "--run-for", "4s"], LIMIT).finish();
    let probes = r.of("probe");
    assert!(probes.len() >= 2, "{}", r.dump());
    for p in &probes {
        assert_eq!(p["result"], "error", "{}", r.dump());
        assert_eq!(p["message"], "connection closed after 4 of 10 body bytes");
    }
    assert!(r.of("liveness").is_empty(), "{}", r.dump());
    assert_eq!(
        r.story()[r.story().len() - 2..],
        ["stopped runtime", "finished 0"]
    );
}

#[test]
fn a_flooding_http_peer_never_holds_the_vmm_loop() {
    if !kvm_or_skip("a_flooding_http_peer_never_holds_the_vmm_loop") {
        return;
    }
    // An endless stream of `102 Processing` once held the loop for tens of
    // seconds; `--run-for` must still end the run on time.
    let port = flooding_http_peer();
    let m = probe_manifest("livenessProbe", &http_handler(port), 100);
    let r = spawn(&m.path, &["--guest-timeout", "5", "--run-for", "3s"], LIMIT).finish();
    assert_eq!(
        r.story()[r.story().len() - 2..],
        ["stopped runtime", "finished 0"],
        "{}",
        r.dump()
    );
    let started = r.of("started")[0]["time_ms"].as_u64().unwrap();
    let stopped = r.of("stopped")[0]["time_ms"].as_u64().unwrap();
    assert!(
        stopped - started <= 3_300,
        "--run-for 3s ended after {} ms: {}",
        stopped - started,
        r.dump()
    );
    let probes = r.of("probe");
    assert!(probes.len() >= 2, "{}", r.dump());
    assert!(
        probes.iter().all(|p| p["result"] == "failure"),
        "{}",
        r.dump()
    );
}

#[test]
fn sigterm_acts_at_once_while_an_http_peer_floods() {
    if !kvm_or_skip("sigterm_acts_at_once_while_an_http_peer_floods") {
        return;
    }
    // The same endless `102 Processing` stream once delayed SIGTERM by 11 s and the
    // run then exited 0: it must stop the VM at once and exit 143.
    let port = flooding_http_peer();
    let m = probe_manifest("livenessProbe", &http_handler(port), 100);
    let mut live = spawn(
        &m.path,
        &["--guest-timeout", "5", "--run-for", "60s"],
        LIMIT,
    );
    // The first attempt has met the flood (it fails at its 1 s timeout); the
    // next one is in flight when the signal comes.
    assert!(
        live.until(|e| e["type"] == "probe").is_some(),
        "no probe attempt"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sent = std::time::Instant::now();
    live.signal(libc::SIGTERM);
    let r = live.finish();
    let took = sent.elapsed();
    assert_eq!(r.code, Some(143), "{}", r.dump());
    assert_eq!(
        r.story()[r.story().len() - 2..],
        ["stopped signal", "finished 143"],
        "{}",
        r.dump()
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "SIGTERM took {took:?} to end the run: {}",
        r.dump()
    );
}

/// A server on 127.0.0.1 that answers every request with an endless stream of
/// `HTTP/1.1 102 Processing` (for 10 s per connection); returns its port.
fn flooding_http_peer() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let flood = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(512);
                let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while std::time::Instant::now() < until {
                    if std::io::Write::write_all(&mut s, &flood).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}
