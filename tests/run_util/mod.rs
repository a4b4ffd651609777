//! Shared helpers of the `run_*` integration tests: run the real `vmpulse run --events json`
//! binary with a manifest, bounded in wall time, and parse its JSON lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The wall-time limit of every run of these tests.
pub const LIMIT: Duration = Duration::from_secs(60);

#[path = "../common/kvm.rs"]
mod kvm;
pub use kvm::kvm_or_skip;

/// A manifest written to a temporary directory.
pub struct Manifest {
    _dir: tempfile::TempDir,
    /// Its path.
    pub path: PathBuf,
}

/// Write `text` as a manifest file.
pub fn manifest(text: &str) -> Manifest {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("vm.yaml");
    std::fs::write(&path, text).expect("write the manifest");
    Manifest { _dir: dir, path }
}

/// A VirtualMachine manifest for the built-in test guest.
pub struct Vm<'a> {
    /// `spec.runStrategy`.
    pub strategy: &'a str,
    /// The watchdog action (`None`: no watchdog).
    pub action: Option<&'a str>,
    /// `terminationGracePeriodSeconds`.
    pub grace: u32,
    /// Extra annotations, `key: "value"` lines.
    pub annotations: &'a [(&'a str, &'a str)],
    /// Extra YAML under `spec.template.spec`, indented by 6 spaces already.
    pub extra: &'a str,
}

impl Default for Vm<'_> {
    fn default() -> Self {
        Vm {
            strategy: "Once",
            action: Some("reset"),
            grace: 1,
            annotations: &[],
            extra: "",
        }
    }
}

impl<'a> Vm<'a> {
    /// The default VM with this run strategy and watchdog action.
    pub fn with(strategy: &'a str, action: &'a str) -> Vm<'a> {
        Vm {
            strategy,
            action: Some(action),
            ..Vm::default()
        }
    }

    /// The manifest text.
    pub fn yaml(&self) -> String {
        let mut s = String::from(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: testvm\n",
        );
        if !self.annotations.is_empty() {
            s.push_str("  annotations:\n");
            for (k, v) in self.annotations {
                s.push_str(&format!("    {k}: \"{v}\"\n"));
            }
        }
        s.push_str(&format!(
            "spec:\n  runStrategy: {}\n  template:\n    spec:\n      domain:\n        devices:\n",
            self.strategy
        ));
        match self.action {
            Some(a) => s.push_str(&format!(
                "          watchdog:\n            name: mywatchdog\n            i6300esb:\n              action: {a}\n"
            )),
            None => s.push_str("          disks: []\n"),
        }
        s.push_str("        resources:\n          requests:\n            memory: 8Mi\n");
        s.push_str(&format!(
            "      terminationGracePeriodSeconds: {}\n",
            self.grace
        ));
        s.push_str(self.extra);
        s
    }
}

/// What a finished run produced.
pub struct Run {
    /// Every JSON line of stdout, parsed.
    pub events: Vec<Value>,
    /// The exit code (`None`: killed, e.g. by the wall-time limit).
    pub code: Option<i32>,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Run {
    /// Events of one type.
    pub fn of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }
    /// Console lines.
    pub fn console(&self) -> Vec<String> {
        self.of("console")
            .iter()
            .map(|e| e["line"].as_str().unwrap_or_default().to_string())
            .collect()
    }
    /// The lifecycle events (started/watchdog/stopped/restart/liveness/error/finished), in
    /// order, with their main field: e.g. `started 1`, `stopped watchdog`.
    pub fn story(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| {
                let t = e["type"].as_str()?;
                Some(match t {
                    "started" => format!("started {}", e["boot"]),
                    "watchdog" => format!("watchdog {}", e["action"].as_str()?),
                    "stopped" => format!("stopped {}", e["reason"].as_str()?),
                    "restart" => format!("restart {}", e["count"]),
                    "liveness" => format!("liveness {}", e["action"].as_str()?),
                    "error" => "error".to_string(),
                    "finished" => format!("finished {}", e["exit_code"]),
                    _ => return None,
                })
            })
            .collect()
    }
    /// Asserts the whole [`Run::story`].
    #[track_caller]
    pub fn assert_story(&self, expected: &[&str]) {
        assert_eq!(self.story(), expected, "{}", self.dump());
    }
    /// Asserts the first `expected.len()` entries of [`Run::story`].
    #[track_caller]
    pub fn assert_story_starts(&self, expected: &[&str]) {
        let story = self.story();
        let head: Vec<&str> = story
            .iter()
            .map(String::as_str)
            .take(expected.len())
            .collect();
        assert_eq!(head, expected, "{}", self.dump());
    }
    /// Asserts the last `expected.len()` entries of [`Run::story`].
    #[track_caller]
    pub fn assert_story_ends(&self, expected: &[&str]) {
        let story = self.story();
        let tail = &story[story.len().saturating_sub(expected.len())..];
        assert_eq!(tail, expected, "{}", self.dump());
    }
    /// The first `probe` event with this `result`; panics (with the dump) when there is none.
    #[track_caller]
    pub fn first_probe(&self, result: &str) -> Value {
        self.of("probe")
            .into_iter()
            .find(|e| e["result"] == result)
            .cloned()
            .unwrap_or_else(|| panic!("no probe with result {result}: {}", self.dump()))
    }
    /// A dump for assertion messages.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for e in &self.events {
            s.push_str(&e.to_string());
            s.push('\n');
        }
        s.push_str("--- stderr ---\n");
        s.push_str(&self.stderr);
        s
    }
}

/// A running `vmpulse run --events json`, read line by line.
pub struct Live {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    started: Instant,
    limit: Duration,
    /// Every event seen so far.
    pub events: Vec<Value>,
}

/// Start `vmpulse run --events json MANIFEST ARGS...`; it is killed after `limit`.
pub fn spawn(manifest: &Path, args: &[&str], limit: Duration) -> Live {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .arg("run")
        .arg("--events")
        .arg("json")
        .arg(manifest)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmpulse");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    Live {
        child,
        lines: rx,
        stderr: Some(stderr),
        started: Instant::now(),
        limit,
        events: Vec::new(),
    }
}

impl Live {
    /// Wait for the next event; `None` at the end of output or at the wall-time limit.
    pub fn next(&mut self) -> Option<Value> {
        let left = self.limit.checked_sub(self.started.elapsed())?;
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(v["time_ms"].is_u64(), "no time_ms: {line}");
                assert!(v["type"].is_string(), "no type: {line}");
                self.events.push(v.clone());
                Some(v)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Read events until one satisfies `pred`; `None` if the output ended first.
    pub fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        while let Some(v) = self.next() {
            if pred(&v) {
                return Some(v);
            }
        }
        None
    }

    /// Wait for the first `ready` event, read to the end, and assert that event said
    /// ready: true.
    #[track_caller]
    pub fn finish_first_ready(mut self) -> Run {
        let ready = self.until(|e| e["type"] == "ready");
        let r = self.finish();
        assert_eq!(
            ready.map(|e| e["ready"].clone()),
            Some(Value::Bool(true)),
            "{}",
            r.dump()
        );
        r
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) to the running `vmpulse`.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with the pid of our own child and a plain signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Read to the end (or the limit, then kill) and collect the result.
    pub fn finish(mut self) -> Run {
        while self.next().is_some() {}
        let code = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.code(),
                Ok(None) if self.started.elapsed() < self.limit => {
                    // Output is closed; the process is exiting.
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Run {
            events: std::mem::take(&mut self.events),
            code,
            stderr,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Never leave a VM behind, whatever the test did.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run to completion with a wall-time limit.
pub fn run(manifest: &Path, args: &[&str], limit: Duration) -> Run {
    spawn(manifest, args, limit).finish()
}

/// Run the built-in test guest with `vm`'s manifest, the [`fast_guest`] settings (hang
/// after 1 s) and the `extra` flags, within [`LIMIT`].
pub fn run_fast_guest(vm: &Vm, extra: &[&str]) -> Run {
    let m = manifest(&vm.yaml());
    let mut args: Vec<&str> = fast_guest("1");
    args.extend(extra);
    run(&m.path, &args, LIMIT)
}

/// Answer one HTTP request on `s` with 200 "ok" (reads the request head first, bounded by
/// a 2 s read timeout).
pub fn answer_ok(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

/// The test guest's fast watchdog settings: heartbeat 1 s, kicks every 0.5 s, hang after
/// `hang` seconds; restart back-off 200 ms.
pub fn fast_guest(hang: &'static str) -> Vec<&'static str> {
    vec![
        "--guest-timeout",
        "1",
        "--guest-kick-every",
        "0.5",
        "--guest-hang-after",
        hang,
        "--restart-backoff",
        "200ms",
    ]
}
