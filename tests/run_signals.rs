//! `vmpulse run` stops the VM cleanly on SIGINT and SIGTERM: a `stopped` event with reason
//! `signal`, no restart, and the exit code a shell expects (128 + the signal).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/kvm.rs"]
mod kvm;

fn interrupt_a_running_vm(signal: &str, expected_code: i32) {
    if !kvm::kvm_or_skip(&format!("interrupt_a_running_vm({signal})")) {
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/watchdog-reset.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .args(["run", "--events", "json", "--run-for", "60s"])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmpulse");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).expect("every line is JSON");
            if tx.send(v).is_err() {
                break;
            }
        }
    });

    // Wait until the guest has armed the watchdog, then interrupt vmpulse.
    let limit = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    loop {
        let left = limit.saturating_duration_since(Instant::now());
        let Ok(v) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("the guest never armed the watchdog: {events:?}");
        };
        let armed = v["type"] == "console"
            && v["line"]
                .as_str()
                .is_some_and(|l| l.starts_with("guest: watchdog armed"));
        events.push(v);
        if armed {
            break;
        }
    }
    let sent = Instant::now();
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());

    // It must exit promptly by itself, well before --run-for.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("vmpulse did not exit within 10 s of SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    events.extend(rx.try_iter());

    assert_eq!(status.code(), Some(expected_code), "exit code: {events:?}");
    let stopped: Vec<&Value> = events.iter().filter(|v| v["type"] == "stopped").collect();
    assert_eq!(stopped.len(), 1, "{events:?}");
    assert_eq!(stopped[0]["reason"], "signal");
    assert!(
        events.iter().all(|v| v["type"] != "restart"),
        "no restart after a signal: {events:?}"
    );
    let finished = events.last().expect("events");
    assert_eq!(finished["type"], "finished");
    assert_eq!(finished["exit_code"], expected_code);
}

#[test]
fn sigterm_stops_the_vm_and_exits_143() {
    interrupt_a_running_vm("TERM", 143);
}

#[test]
fn sigint_stops_the_vm_and_exits_130() {
    interrupt_a_running_vm("INT", 130);
}
