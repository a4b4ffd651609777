//! The guest-agent client against the real `qemu-ga` (Debian's qemu-guest-agent,
//! started by each test in `unix-listen` mode in a temporary directory) and
//! against fake agents (Unix listeners in the test) that misbehave.
//!
//! Every wait is bounded; each test kills the agent it started (on drop).

#[path = "common/agent_epoll.rs"]
mod agent_epoll;
#[path = "common/qga.rs"]
mod qga;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use agent_epoll::AgentFds;
use vmm_sys_util::epoll::EpollEvent;
use vmpulse::probes::agent::{AgentClient, AgentOutcome};
use vmpulse::probes::AgentChannel;

/// A real qemu-ga listening on a Unix socket in a temporary directory.
struct Qga {
    child: Option<Child>,
    dir: PathBuf,
    sock: PathBuf,
    extra: Vec<String>,
}

impl Qga {
    /// Starts qemu-ga in `dir` (its socket, state dir and pidfile all live there).
    fn start_in(dir: &Path, extra: &[&str]) -> Qga {
        let mut q = Qga {
            child: None,
            dir: dir.to_path_buf(),
            sock: qga::socket_in(dir),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        q.restart();
        q
    }

    /// (Re)starts the agent on the same socket and waits (bounded) until it accepts.
    fn restart(&mut self) {
        self.child = Some(qga::spawn_in(&self.dir, &self.extra));
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Qga {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped agent must be resumed to die promptly after SIGKILL on some kernels.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// A small epoll loop that drives one client the way a VMM loop would.
struct Driver {
    fds: AgentFds,
}

impl Driver {
    fn new() -> Driver {
        Driver {
            fds: AgentFds::new(),
        }
    }

    /// Runs until `n` completions arrived or `limit` passed; returns them with
    /// their completion times.
    fn run(
        &mut self,
        c: &mut AgentClient,
        n: usize,
        limit: Duration,
    ) -> Vec<(u64, AgentOutcome, Instant)> {
        let end = Instant::now() + limit;
        let mut got = Vec::new();
        let mut events = [EpollEvent::default(); 8];
        loop {
            let now = Instant::now();
            for (id, o) in c.take_completions() {
                got.push((id, o, now));
            }
            if got.len() >= n || now >= end {
                return got;
            }
            self.fds.sync(c);
            let wake = c.next_deadline().map_or(end, |d| d.min(end));
            let ms = wake
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000)
                .min(1000) as i32;
            let ready = self.fds.ep.wait(ms, &mut events).expect("epoll wait");
            let now = Instant::now();
            if ready > 0 {
                c.on_ready(now);
            }
            if c.next_deadline().is_some_and(|d| d <= now) {
                c.on_timer(now);
            }
        }
    }

    /// Runs one attempt to completion (bounded) and returns its outcome and duration.
    fn one(&mut self, c: &mut AgentClient, id: u64, limit: Duration) -> (AgentOutcome, Duration) {
        let t0 = Instant::now();
        let got = self.run(c, 1, limit);
        assert_eq!(got.len(), 1, "no completion within {limit:?}");
        assert_eq!(got[0].0, id);
        (got[0].1.clone(), got[0].2 - t0)
    }
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn exec(
    d: &mut Driver,
    c: &mut AgentClient,
    id: u64,
    argv: &[&str],
    timeout: Duration,
) -> (AgentOutcome, Duration) {
    let now = Instant::now();
    c.start_exec(id, &args(argv), now, now + timeout);
    d.one(c, id, timeout + Duration::from_secs(2))
}

fn ping(
    d: &mut Driver,
    c: &mut AgentClient,
    id: u64,
    timeout: Duration,
) -> (AgentOutcome, Duration) {
    let now = Instant::now();
    c.start_ping(id, now, now + timeout);
    d.one(c, id, timeout + Duration::from_secs(2))
}

fn failed_msg(o: &AgentOutcome) -> &str {
    match o {
        AgentOutcome::Failed(m) => m,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn exited(o: &AgentOutcome) -> (Option<i32>, Option<i32>, &str) {
    match o {
        AgentOutcome::Exited {
            code,
            signal,
            output,
        } => (*code, *signal, output),
        other => panic!("expected Exited, got {other:?}"),
    }
}

/// Kills the guest command named in a "still running (pid N)" message (the
/// "guest" is this machine), so that no `sleep` outlives its test.
fn kill_guest_pid(message: &str) {
    let pid = message
        .rsplit("pid ")
        .next()
        .and_then(|s| s.trim_end_matches(')').parse::<u32>().ok())
        .expect("message names the pid");
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

fn client_for(q: &Qga) -> AgentClient {
    AgentClient::new(AgentChannel::UnixSocket(q.sock.clone()))
}

/// A real agent in a new temporary directory, a client of it and a driver.
fn real_agent(extra: &[&str]) -> (tempfile::TempDir, Qga, AgentClient, Driver) {
    let dir = tempfile::tempdir().unwrap();
    let q = Qga::start_in(dir.path(), extra);
    let c = client_for(&q);
    (dir, q, c, Driver::new())
}

const T1: Duration = Duration::from_secs(1);
const T5: Duration = Duration::from_secs(5);

#[test]
fn ping_real_agent_pongs_after_one_sync() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let (o, took) = ping(&mut d, &mut c, 1, T1);
    assert_eq!(o, AgentOutcome::Pong);
    assert!(took < T1, "ping took {took:?}");
    let (o, _) = ping(&mut d, &mut c, 1, T1);
    assert_eq!(o, AgentOutcome::Pong);
    let s = c.stats();
    assert_eq!(s.connects, 1, "{s:?}");
    assert_eq!(s.syncs, 1, "one persistent connection, synced once: {s:?}");
    assert_eq!(s.requests, 3, "sync + 2 pings: {s:?}");
}

#[test]
fn exec_cat_of_existing_then_deleted_file() {
    let dir = tempfile::tempdir().unwrap();
    let q = Qga::start_in(dir.path(), &[]);
    let file = dir.path().join("healthy.txt");
    std::fs::write(&file, "healthy-42\n").unwrap();
    let path = file.to_str().unwrap();
    let mut c = client_for(&q);
    let mut d = Driver::new();
    let (o, _) = exec(&mut d, &mut c, 3, &["cat", path], T5);
    assert_eq!(
        o,
        AgentOutcome::Exited {
            code: Some(0),
            signal: None,
            output: "healthy-42\n".into()
        }
    );
    std::fs::remove_file(&file).unwrap();
    let (o, _) = exec(&mut d, &mut c, 3, &["cat", path], T5);
    let (code, signal, output) = exited(&o);
    assert_eq!((code, signal), (Some(1), None));
    assert!(
        output.contains("No such file"),
        "stderr captured: {output:?}"
    );
}

#[test]
fn exec_exit_code_three() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let (o, _) = exec(
        &mut d,
        &mut c,
        1,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        T5,
    );
    assert_eq!(
        o,
        AgentOutcome::Exited {
            code: Some(3),
            signal: None,
            output: "out\nerr\n".into()
        }
    );
    let (o, _) = exec(&mut d, &mut c, 1, &["true"], T5);
    assert_eq!(
        o,
        AgentOutcome::Exited {
            code: Some(0),
            signal: None,
            output: String::new()
        },
        "no out-data field means empty output"
    );
}

#[test]
fn exec_killed_by_signal_reports_the_signal() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let (o, _) = exec(&mut d, &mut c, 1, &["sh", "-c", "kill -9 $$"], T5);
    assert_eq!(
        o,
        AgentOutcome::Exited {
            code: None,
            signal: Some(9),
            output: String::new()
        }
    );
}

#[test]
fn exec_missing_binary_fails_with_agent_error() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let (o, took) = exec(&mut d, &mut c, 1, &["/nonexistent/probe-binary"], T5);
    let m = failed_msg(&o);
    assert!(m.starts_with("guest-exec: GenericError"), "{m}");
    assert!(m.contains("/nonexistent/probe-binary"), "{m}");
    assert!(took < T1, "an error reply fails at once, took {took:?}");
    // The link stays in sync after an error reply.
    let (o, _) = ping(&mut d, &mut c, 2, T1);
    assert_eq!(o, AgentOutcome::Pong);
    assert_eq!(c.stats().syncs, 1);
}

#[test]
fn exec_hang_fails_at_deadline_and_blocks_the_next_exec_of_that_probe() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let (o, took) = exec(&mut d, &mut c, 7, &["sleep", "30"], T1);
    let m = failed_msg(&o);
    assert!(m.contains("still running"), "{m}");
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_millis(1300),
        "failed at {took:?}, not at the 1 s deadline"
    );
    // The same probe again while `sleep 30` still runs: refused at once.
    let now = Instant::now();
    c.start_exec(7, &args(&["true"]), now, now + T1);
    assert_eq!(
        c.take_completions(),
        vec![(
            7,
            AgentOutcome::Failed("previous exec still running".into())
        )]
    );
    // Background checks of the stuck pid keep the link healthy; other probes work.
    let got = d.run(&mut c, 99, Duration::from_millis(1500));
    assert!(got.is_empty());
    let (o, _) = exec(&mut d, &mut c, 8, &["true"], T1);
    assert_eq!(exited(&o).0, Some(0));
    let (o, _) = ping(&mut d, &mut c, 9, T1);
    assert_eq!(o, AgentOutcome::Pong);
    let now = Instant::now();
    c.start_exec(7, &args(&["true"]), now, now + T1);
    assert_eq!(
        c.take_completions(),
        vec![(
            7,
            AgentOutcome::Failed("previous exec still running".into())
        )]
    );
    kill_guest_pid(m);
}

#[test]
fn stuck_exec_is_released_when_it_exits() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let (o, _) = exec(
        &mut d,
        &mut c,
        4,
        &["sh", "-c", "sleep 1; echo late"],
        Duration::from_millis(300),
    );
    assert!(failed_msg(&o).contains("still running"));
    // The background check (every second) reaps it once it exits.
    let got = d.run(&mut c, 99, Duration::from_millis(2500));
    assert!(got.is_empty());
    let (o, _) = exec(&mut d, &mut c, 4, &["echo", "again"], T1);
    assert_eq!(exited(&o), (Some(0), None, "again\n"));
}

#[test]
fn stuck_exec_is_forgotten_after_the_bound() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    c.set_stuck_exec_bound(Duration::from_millis(500));
    let (o, _) = exec(
        &mut d,
        &mut c,
        5,
        &["sleep", "29"],
        Duration::from_millis(300),
    );
    let m = failed_msg(&o).to_string();
    assert!(m.contains("still running"));
    let now = Instant::now();
    c.start_exec(5, &args(&["true"]), now, now + T1);
    assert_eq!(
        c.take_completions(),
        vec![(
            5,
            AgentOutcome::Failed("previous exec still running".into())
        )]
    );
    d.run(&mut c, 99, Duration::from_millis(600));
    let (o, _) = exec(&mut d, &mut c, 5, &["true"], T1);
    assert_eq!(exited(&o).0, Some(0));
    kill_guest_pid(&m);
}

#[test]
fn exec_arguments_arrive_intact() {
    let (dir, _q, mut c, mut d) = real_agent(&[]);
    let tricky = "a \"quoted\" \\back\\slash\\\" \nnew line\ttab ünïcødé 🚀 'single' $HOME `id` {}[],:\u{7f}";
    let (o, _) = exec(&mut d, &mut c, 1, &["printf", "%s", tricky], T5);
    assert_eq!(exited(&o), (Some(0), None, tricky));
    // The shell sees the quoted test intact too (docs/PROBES.md P-43).
    let file = dir.path().join("f");
    std::fs::write(&file, "ok").unwrap();
    let script = format!("test \"$(cat {})\" = ok", file.display());
    let (o, _) = exec(&mut d, &mut c, 1, &["sh", "-c", &script], T5);
    assert_eq!(exited(&o).0, Some(0));
}

#[test]
fn two_probes_share_one_agent() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let now = Instant::now();
    c.start_ping(1, now, now + T1);
    c.start_exec(2, &args(&["echo", "hi"]), now, now + T1);
    c.start_ping(3, now, now + T1);
    let mut got: Vec<_> = d
        .run(&mut c, 3, Duration::from_secs(3))
        .into_iter()
        .map(|(id, o, _)| (id, o))
        .collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(
        got,
        vec![
            (1, AgentOutcome::Pong),
            (
                2,
                AgentOutcome::Exited {
                    code: Some(0),
                    signal: None,
                    output: "hi\n".into()
                }
            ),
            (3, AgentOutcome::Pong)
        ]
    );
}

#[test]
fn agent_absent_fails_fast_then_reconnects_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let mut c = AgentClient::new(AgentChannel::UnixSocket(sock));
    let mut d = Driver::new();
    let (o, took) = ping(&mut d, &mut c, 1, T1);
    assert!(failed_msg(&o).contains("not reachable"), "{o:?}");
    assert!(took < Duration::from_millis(100), "took {took:?}");
    let (o, took) = exec(&mut d, &mut c, 2, &["true"], T1);
    assert!(failed_msg(&o).contains("not reachable"), "{o:?}");
    assert!(took < Duration::from_millis(300), "took {took:?}");
    let q = Qga::start_in(dir.path(), &[]);
    let (o, _) = ping(&mut d, &mut c, 1, Duration::from_secs(3));
    assert_eq!(o, AgentOutcome::Pong);
    let (o, _) = exec(&mut d, &mut c, 2, &["true"], T1);
    assert_eq!(exited(&o).0, Some(0));
    drop(q);
}

#[test]
fn agent_killed_mid_exec_fails_then_restarted_agent_works() {
    let (_dir, mut q, mut c, mut d) = real_agent(&[]);
    let now = Instant::now();
    c.start_exec(1, &args(&["sleep", "3"]), now, now + T5);
    assert!(d.run(&mut c, 1, Duration::from_millis(300)).is_empty());
    q.kill();
    let (o, took) = d.one(&mut c, 1, T5);
    assert!(failed_msg(&o).contains("connection lost"), "{o:?}");
    assert!(took < T1, "failed {took:?} after the kill");
    // Absent while restarting: fails, never hangs.
    let (o, _) = ping(&mut d, &mut c, 2, Duration::from_millis(200));
    assert!(matches!(o, AgentOutcome::Failed(_)));
    q.restart();
    let (o, _) = ping(&mut d, &mut c, 2, Duration::from_secs(3));
    assert_eq!(o, AgentOutcome::Pong);
    let (o, _) = exec(&mut d, &mut c, 3, &["echo", "back"], T1);
    assert_eq!(exited(&o), (Some(0), None, "back\n"));
    assert!(c.stats().connects >= 2);
}

#[test]
fn agent_hung_then_resumed_resyncs_and_discards_stale_replies() {
    let (_dir, q, mut c, mut d) = real_agent(&[]);
    assert_eq!(ping(&mut d, &mut c, 1, T1).0, AgentOutcome::Pong);
    q.signal("STOP");
    let (o, took) = ping(&mut d, &mut c, 1, Duration::from_millis(500));
    assert!(failed_msg(&o).contains("timed out"), "{o:?}");
    assert!(
        took >= Duration::from_millis(495) && took < Duration::from_millis(800),
        "{took:?}"
    );
    // The abandoned ping's reply is still queued in the agent.
    let (o, _) = ping(&mut d, &mut c, 1, Duration::from_millis(500));
    assert!(failed_msg(&o).contains("timed out"), "{o:?}");
    q.signal("CONT");
    let (o, _) = ping(&mut d, &mut c, 1, T1);
    assert_eq!(o, AgentOutcome::Pong);
    let s = c.stats();
    assert_eq!(s.connects, 1, "the same connection survived: {s:?}");
    assert_eq!(s.syncs, 2, "{s:?}");
    assert!(
        s.stale_replies >= 1,
        "the hung sync's reply was discarded: {s:?}"
    );
}

#[test]
fn partial_request_left_by_a_previous_client_is_reset_by_the_sync() {
    // docs/PROBES.md P-48: the agent's JSON lexer keeps a half request across reconnects;
    // only the 0xFF reset lets the next client's commands through.
    let dir = tempfile::tempdir().unwrap();
    let q = Qga::start_in(dir.path(), &[]);
    {
        let mut other = UnixStream::connect(&q.sock).unwrap();
        other.write_all(b"{\"execute\":\"guest-").unwrap();
    }
    let mut c = client_for(&q);
    let mut d = Driver::new();
    let (o, took) = ping(&mut d, &mut c, 1, T1);
    assert_eq!(o, AgentOutcome::Pong);
    assert!(took < T1);
    let (o, _) = exec(&mut d, &mut c, 2, &["echo", "clean"], T1);
    assert_eq!(exited(&o), (Some(0), None, "clean\n"));
}

#[test]
fn background_child_holding_stdout_times_out() {
    // docs/PROBES.md P-41: with captured output the agent reports exited only once the
    // pipes close, so a background child keeps the probe running past T.
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let (o, took) = exec(
        &mut d,
        &mut c,
        1,
        &["sh", "-c", "sleep 2 & exit 0"],
        Duration::from_millis(700),
    );
    assert!(failed_msg(&o).contains("still running"), "{o:?}");
    assert!(took >= Duration::from_millis(695), "{took:?}");
}

#[test]
fn exec_output_is_bounded_and_oversized_replies_fail_cleanly() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    // 5000 bytes of output: the reply fits, the excerpt keeps 1 KiB.
    let (o, _) = exec(
        &mut d,
        &mut c,
        1,
        &["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x"],
        T5,
    );
    assert_eq!(exited(&o), (Some(0), None, "x".repeat(1024).as_str()));
    // 100 000 bytes: the base64 reply line exceeds the 64 KiB cap.
    let (o, took) = exec(
        &mut d,
        &mut c,
        1,
        &["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"],
        T5,
    );
    assert!(failed_msg(&o).contains("longer than 65536"), "{o:?}");
    assert!(took < T1, "{took:?}");
    // The rest of that reply is skipped by the resync; the link works again.
    let (o, _) = exec(&mut d, &mut c, 1, &["echo", "small"], T1);
    assert_eq!(exited(&o), (Some(0), None, "small\n"));
    assert_eq!(c.stats().syncs, 2);
    assert_eq!(c.stats().connects, 1);
}

#[test]
fn hung_agent_fails_each_probe_at_its_own_deadline() {
    // docs/PROBES.md P-55: two probes on one hung agent; neither waits past its deadline.
    let (_dir, q, mut c, mut d) = real_agent(&[]);
    assert_eq!(ping(&mut d, &mut c, 1, T1).0, AgentOutcome::Pong);
    q.signal("STOP");
    let t0 = Instant::now();
    c.start_ping(1, t0, t0 + Duration::from_millis(600));
    c.start_exec(2, &args(&["true"]), t0, t0 + Duration::from_millis(300));
    let got = d.run(&mut c, 2, Duration::from_secs(3));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, 2);
    assert!(failed_msg(&got[0].1).contains("timed out"));
    let at = got[0].2 - t0;
    assert!(
        at >= Duration::from_millis(295) && at < Duration::from_millis(500),
        "{at:?}"
    );
    assert_eq!(got[1].0, 1);
    assert!(failed_msg(&got[1].1).contains("timed out"));
    let at = got[1].2 - t0;
    assert!(
        at >= Duration::from_millis(595) && at < Duration::from_millis(800),
        "{at:?}"
    );
    q.signal("CONT");
    assert_eq!(ping(&mut d, &mut c, 1, T1).0, AgentOutcome::Pong);
}

#[test]
fn blocked_guest_ping_is_an_error_reply() {
    let (_dir, _q, mut c, mut d) = real_agent(&["-b", "guest-ping,guest-exec"]);
    let (o, took) = ping(&mut d, &mut c, 1, T1);
    let m = failed_msg(&o);
    assert!(m.starts_with("guest-ping: "), "{m}");
    assert!(m.contains("disabled"), "{m}");
    assert!(took < T1);
    let (o, _) = exec(&mut d, &mut c, 2, &["true"], T1);
    assert!(failed_msg(&o).starts_with("guest-exec: "), "{o:?}");
}

// ----- fake agents -----

/// A fake agent: accepts one connection and hands it to `script` (on a thread,
/// with read/write timeouts so it never outlives the test by much).
fn fake_agent<F>(script: F) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<()>)
where
    F: FnOnce(UnixStream) + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let h = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T5)).unwrap();
        s.set_write_timeout(Some(T5)).unwrap();
        script(s);
    });
    (dir, path, h)
}

/// Reads one request (up to a newline); returns it without a leading 0xFF.
fn read_request(s: &mut UnixStream) -> Option<serde_json::Value> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
    let start = usize::from(line.first() == Some(&0xFF));
    serde_json::from_slice(&line[start..]).ok()
}

fn sync_id(req: &serde_json::Value) -> i64 {
    assert_eq!(req["execute"], "guest-sync-delimited");
    req["arguments"]["id"].as_i64().unwrap()
}

/// Reads the client's sync request and answers it properly (0xFF, then the id).
fn answer_sync(s: &mut UnixStream) {
    let id = sync_id(&read_request(s).unwrap());
    s.write_all(&[0xFF]).unwrap();
    s.write_all(format!("{{\"return\": {id}}}\n").as_bytes())
        .unwrap();
}

/// Reads (and discards) until the client hangs up or the read timeout passes.
fn drain(s: &mut UnixStream) {
    let mut sink = [0u8; 1024];
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

#[test]
fn fake_agent_garbage_never_syncs_and_fails_at_the_deadline() {
    let (_dir, path, h) = fake_agent(|mut s| {
        let _ = read_request(&mut s);
        let mut junk =
            b"login: \r\n\x00\x01\xfe\xfd not json {\"return\": \n\xff[1,2]\n\xff{\"ret".to_vec();
        junk.extend(vec![b'x'; 200 * 1024]);
        junk.extend_from_slice(b"\xff\xff\xff");
        junk.extend(vec![0xFFu8; 100 * 1024]);
        let _ = s.write_all(&junk);
        drain(&mut s);
    });
    let mut c = AgentClient::new(AgentChannel::UnixSocket(path));
    let mut d = Driver::new();
    let (o, took) = ping(&mut d, &mut c, 1, Duration::from_millis(700));
    assert!(failed_msg(&o).contains("sync"), "{o:?}");
    assert!(
        took >= Duration::from_millis(695) && took < Duration::from_millis(1000),
        "{took:?}"
    );
    let s = c.stats();
    assert!(s.skipped_bytes > 200 * 1024, "{s:?}");
    assert_eq!(s.syncs, 0);
    drop(c);
    h.join().unwrap();
}

#[test]
fn fake_agent_that_never_answers_fails_at_the_deadline() {
    let (_dir, path, h) = fake_agent(|mut s| {
        drain(&mut s);
    });
    let mut c = AgentClient::new(AgentChannel::UnixSocket(path));
    let mut d = Driver::new();
    let (o, took) = exec(&mut d, &mut c, 1, &["true"], Duration::from_millis(400));
    assert!(failed_msg(&o).contains("timed out"), "{o:?}");
    assert!(
        took >= Duration::from_millis(395) && took < Duration::from_millis(700),
        "{took:?}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn fake_agent_stale_replies_and_echo_before_the_real_ones() {
    let (_dir, path, h) = fake_agent(|mut s| {
        let id = sync_id(&read_request(&mut s).unwrap());
        // Stale plain replies, the complaint about 0xFF, a stale delimited reply,
        // then ours split over several writes.
        s.write_all(b"{\"return\": {}}\n{\"return\": 5}\n").unwrap();
        s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n").unwrap();
        s.write_all(b"\x00\x00\n").unwrap();
        s.write_all(b"\xff{\"return\": 424242}\n\xff{\"return\": ")
            .unwrap();
        thread::sleep(Duration::from_millis(20));
        s.write_all(format!("{id}}}\n").as_bytes()).unwrap();
        let req = read_request(&mut s).unwrap();
        assert_eq!(req["execute"], "guest-ping");
        // A serial line echoes the request before the reply; then the reply byte by byte.
        s.write_all(b"{\"execute\":\"guest-ping\"}\n").unwrap();
        for b in b"{\"return\": {}}\n" {
            s.write_all(&[*b]).unwrap();
        }
        drain(&mut s);
    });
    let mut c = AgentClient::new(AgentChannel::UnixSocket(path));
    let mut d = Driver::new();
    let (o, _) = ping(&mut d, &mut c, 1, T1);
    assert_eq!(o, AgentOutcome::Pong);
    let s = c.stats();
    assert_eq!(s.syncs, 1, "{s:?}");
    assert_eq!(s.stale_replies, 1, "{s:?}");
    assert_eq!(s.echoes, 1, "{s:?}");
    assert_eq!(s.garbled, 0, "{s:?}");
    drop(c);
    h.join().unwrap();
}

#[test]
fn fake_agent_garbled_reply_fails_fast_then_resyncs() {
    let (_dir, path, h) = fake_agent(|mut s| {
        // 1: a reply that is JSON but neither return nor error.
        let id = sync_id(&read_request(&mut s).unwrap());
        s.write_all(b"noise\n\x00\n").unwrap();
        s.write_all(&[0xFF]).unwrap();
        s.write_all(format!("{{\"return\": {id}}}\n").as_bytes())
            .unwrap();
        let _ = read_request(&mut s).unwrap();
        s.write_all(b"{\"bogus\": 1}\n").unwrap();
        // 2: resync, then a reply line over the 64 KiB cap.
        answer_sync(&mut s);
        let _ = read_request(&mut s).unwrap();
        let mut big = b"{\"return\": \"".to_vec();
        big.extend(vec![b'A'; 100 * 1024]);
        s.write_all(&big).unwrap();
        // 3: resync, then a proper reply.
        answer_sync(&mut s);
        let req = read_request(&mut s).unwrap();
        assert_eq!(req["execute"], "guest-ping");
        s.write_all(b"{\"return\": {}}\n").unwrap();
        drain(&mut s);
    });
    let mut c = AgentClient::new(AgentChannel::UnixSocket(path));
    let mut d = Driver::new();
    let (o, took) = ping(&mut d, &mut c, 1, T5);
    assert!(failed_msg(&o).contains("garbled"), "{o:?}");
    assert!(took < T1, "{took:?}");
    let (o, took) = ping(&mut d, &mut c, 1, T5);
    assert!(failed_msg(&o).contains("longer than"), "{o:?}");
    assert!(took < T1, "{took:?}");
    let (o, _) = ping(&mut d, &mut c, 1, T5);
    assert_eq!(o, AgentOutcome::Pong);
    let s = c.stats();
    assert_eq!(s.syncs, 3, "{s:?}");
    assert_eq!(s.garbled, 2, "{s:?}");
    assert_eq!(s.connects, 1, "{s:?}");
    drop(c);
    h.join().unwrap();
}

#[test]
fn fake_agent_closing_the_connection_fails_then_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let h = thread::spawn(move || {
        // First client: read the sync, then hang up.
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T5)).unwrap();
        let _ = read_request(&mut s);
        drop(s);
        // Second client: behave.
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T5)).unwrap();
        answer_sync(&mut s);
        let _ = read_request(&mut s).unwrap();
        s.write_all(b"{\"return\": {}}\n").unwrap();
        drain(&mut s);
    });
    let mut c = AgentClient::new(AgentChannel::UnixSocket(path));
    let mut d = Driver::new();
    let (o, took) = ping(&mut d, &mut c, 1, T5);
    assert!(failed_msg(&o).contains("connection lost"), "{o:?}");
    assert!(took < T1, "{took:?}");
    let (o, _) = ping(&mut d, &mut c, 1, T5);
    assert_eq!(o, AgentOutcome::Pong);
    assert_eq!(c.stats().connects, 2);
    drop(c);
    h.join().unwrap();
}

#[test]
fn busy_agent_with_a_full_backlog_is_retried_until_the_deadline() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    // Fill the backlog with clients nobody accepts yet.
    let mut fillers = Vec::new();
    loop {
        let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&SockAddr::unix(&path).unwrap()) {
            Ok(()) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filler connect: {e}"),
        }
        assert!(fillers.len() < 64, "backlog never filled");
    }
    let n_fillers = fillers.len();
    let h = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        for _ in 0..n_fillers {
            drop(listener.accept().unwrap());
        }
        let (s, _) = listener.accept().unwrap();
        let mut s: UnixStream = std::os::fd::OwnedFd::from(s).into();
        s.set_read_timeout(Some(T5)).unwrap();
        answer_sync(&mut s);
        let _ = read_request(&mut s).unwrap();
        s.write_all(b"{\"return\": {}}\n").unwrap();
        drain(&mut s);
    });
    let mut c = AgentClient::new(AgentChannel::UnixSocket(path));
    let mut d = Driver::new();
    let (o, took) = ping(&mut d, &mut c, 1, Duration::from_secs(2));
    assert_eq!(o, AgentOutcome::Pong);
    assert!(took >= Duration::from_millis(250), "{took:?}");
    let s = c.stats();
    assert!(s.connect_failures >= 1, "{s:?}");
    assert_eq!(s.connects, 1, "{s:?}");
    drop(fillers);
    drop(c);
    h.join().unwrap();
}

#[test]
fn stream_channel_closed_fails_every_attempt_without_hanging() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut c = AgentClient::new(AgentChannel::Stream(ours));
    drop(theirs);
    let mut d = Driver::new();
    let (o, took) = ping(&mut d, &mut c, 1, T1);
    assert!(
        failed_msg(&o).contains("closed") || failed_msg(&o).contains("lost"),
        "{o:?}"
    );
    assert!(took < Duration::from_millis(200), "{took:?}");
    let (o, took) = exec(&mut d, &mut c, 2, &["true"], T1);
    assert!(failed_msg(&o).contains("closed"), "{o:?}");
    assert!(took < Duration::from_millis(200), "{took:?}");
}

#[test]
fn stream_channel_to_the_real_agent() {
    // The VMM hands over an already connected stream (e.g. the host end of COM2);
    // a stream connected to qemu-ga's socket exercises the same path.
    let dir = tempfile::tempdir().unwrap();
    let q = Qga::start_in(dir.path(), &[]);
    let stream = UnixStream::connect(&q.sock).unwrap();
    let mut c = AgentClient::new(AgentChannel::Stream(stream));
    let mut d = Driver::new();
    let (o, _) = ping(&mut d, &mut c, 1, T5);
    assert_eq!(o, AgentOutcome::Pong);
    let (o, _) = exec(&mut d, &mut c, 2, &["echo", "serial"], T5);
    assert_eq!(exited(&o), (Some(0), None, "serial\n"));
    assert_eq!(c.stats().connects, 0, "a stream is never (re)connected");
    assert_eq!(c.stats().syncs, 1);
}

#[test]
fn cancel_reports_nothing_and_keeps_the_link_usable() {
    let (_dir, _q, mut c, mut d) = real_agent(&[]);
    let now = Instant::now();
    c.start_ping(1, now, now + T1);
    c.start_exec(2, &args(&["sleep", "0.2"]), now, now + T1);
    c.cancel(1);
    c.cancel(2);
    assert!(d.run(&mut c, 1, Duration::from_millis(500)).is_empty());
    let (o, _) = ping(&mut d, &mut c, 3, T1);
    assert_eq!(o, AgentOutcome::Pong);
}
