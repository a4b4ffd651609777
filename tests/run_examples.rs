//! The example manifests of `examples/`, run unchanged through `vmpulse run` on /dev/kvm:
//! what the README promises about them holds, and each finishes by itself.

mod run_util;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use run_util::{answer_ok, kvm_or_skip, run, spawn, LIMIT};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn watchdog_poweroff_example_restarts_once_and_ends() {
    if !kvm_or_skip("watchdog_poweroff_example_restarts_once_and_ends") {
        return;
    }
    let r = run(&example("watchdog-poweroff.yaml"), &[], LIMIT);
    r.assert_story(&[
        "started 1",
        "watchdog poweroff",
        "stopped watchdog",
        "restart 1",
        "started 2",
        "watchdog poweroff",
        "stopped watchdog",
        "finished 0",
    ]);
    let console = r.console();
    assert!(
        console
            .iter()
            .filter(|l| l.starts_with("guest: kick"))
            .count()
            >= 8
    );
    assert_eq!(
        console
            .iter()
            .filter(|l| *l == "guest: hanging (no more kicks)")
            .count(),
        2
    );
    assert_eq!(r.code, Some(0));
    assert!(r.elapsed < Duration::from_secs(30), "{:?}", r.elapsed);
}

#[test]
fn watchdog_reset_example_reports_the_watchdog_on_the_next_boot() {
    if !kvm_or_skip("watchdog_reset_example_reports_the_watchdog_on_the_next_boot") {
        return;
    }
    let r = run(&example("watchdog-reset.yaml"), &[], LIMIT);
    r.assert_story_starts(&["started 1", "watchdog reset", "started 2"]);
    r.assert_story_ends(&["stopped runtime", "finished 0"]);
    let statuses: Vec<String> = r
        .console()
        .into_iter()
        .filter(|l| l.starts_with("guest: bootstatus="))
        .collect();
    assert_eq!(statuses[0], "guest: bootstatus=0");
    assert!(statuses.len() >= 2, "{}", r.dump());
    assert!(statuses[1..]
        .iter()
        .all(|l| l.starts_with("guest: bootstatus=0x20")));
    assert_eq!(r.code, Some(0));
    assert!(r.elapsed < Duration::from_secs(30), "{:?}", r.elapsed);
}

#[test]
fn watchdog_shutdown_example_graceful_then_forced() {
    if !kvm_or_skip("watchdog_shutdown_example_graceful_then_forced") {
        return;
    }
    let r = run(&example("watchdog-shutdown.yaml"), &[], LIMIT);
    r.assert_story(&[
        "started 1",
        "watchdog shutdown",
        "stopped shutdown",
        "finished 0",
    ]);
    assert_eq!(r.of("stopped")[0]["forced"], false);

    let r = run(
        &example("watchdog-shutdown.yaml"),
        &["--guest-ignore-shutdown"],
        LIMIT,
    );
    // Forced: a failure, so RerunOnFailure restarts once (max-restarts 1).
    r.assert_story(&[
        "started 1",
        "watchdog shutdown",
        "stopped shutdown",
        "restart 1",
        "started 2",
        "watchdog shutdown",
        "stopped shutdown",
        "finished 0",
    ]);
    assert!(r.of("stopped").iter().all(|e| e["forced"] == true));
}

/// An HTTP server answering 200, until stopped (then connections are refused).
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(addr: &str) -> Server {
        let listener = TcpListener::bind(addr).expect("bind the test server");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = stream else { continue };
                answer_ok(s);
            }
            // The listener closes here.
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept() so the thread sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn probes_example_ready_then_liveness_stops_the_vm() {
    if !kvm_or_skip("probes_example_ready_then_liveness_stops_the_vm") {
        return;
    }
    // The example probes port 8080 of the VM's address; 127.0.0.2 (loopback too) keeps
    // the test clear of anything already on 127.0.0.1:8080.
    let mut server = Server::start("127.0.0.2:8080");
    let mut live = spawn(
        &example("probes.yaml"),
        &["--probe-host", "127.0.0.2"],
        LIMIT,
    );
    let ready = live.until(|e| e["type"] == "ready" && e["ready"] == true);
    assert!(ready.is_some(), "never ready: {:?}", live.events);
    server.stop();
    let r = live.finish();
    r.assert_story_ends(&["liveness stop", "stopped liveness", "finished 0"]);
    let readiness_ok = r
        .of("probe")
        .into_iter()
        .any(|e| e["probe"] == "readiness" && e["result"] == "success");
    assert!(readiness_ok, "{}", r.dump());
    let liveness_failures = r
        .of("probe")
        .into_iter()
        .filter(|e| e["probe"] == "liveness" && e["result"] == "failure")
        .count();
    assert!(liveness_failures >= 3, "{}", r.dump());
    // Attempts that completed with the fatal one are reported before the stop, none after.
    let stopped = r
        .events
        .iter()
        .position(|e| e["type"] == "stopped")
        .unwrap();
    assert!(
        r.events[stopped..].iter().all(|e| e["type"] != "probe"),
        "{}",
        r.dump()
    );
    assert_eq!(r.code, Some(0));
}
