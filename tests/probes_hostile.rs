//! Hostile peers: a server that answers with an endless stream of
//! `HTTP/1.1 102 Processing`, over HTTP and HTTPS, and a guest agent that
//! floods reply lines. Every attempt must end within its timeout + 5 ms, and
//! no call into the `ProbeSet` may hold the runner's loop for long: a canary
//! timerfd in the same loop (as the watchdog's would be) must keep firing.
//!
//! Real sockets on loopback; every peer stops by itself after a few seconds.

mod probes_util;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use probes_util::*;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;
use vmpulse::probes::config::{HttpScheme, ProbeHandler, ProbeKind};
use vmpulse::probes::tracker::Outcome;
use vmpulse::probes::{AgentChannel, ProbeAttempt, ProbeEnv, ProbeEvent, ProbeSet};

/// How late an attempt may end past its timeout.
const SLACK: Duration = Duration::from_millis(5);
/// The canary's period and the longest gap between two of its wake-ups allowed.
const CANARY_PERIOD: Duration = Duration::from_millis(10);
const CANARY_MAX_GAP: Duration = Duration::from_millis(100);
/// The most CPU time one `process()` call may take (debug build).
const MAX_CALL: Duration = Duration::from_millis(5);

static SERIAL: Mutex<()> = Mutex::new(());

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What a run saw.
struct Run {
    /// (attempt, when it completed, when it started) since the VM started.
    attempts: Vec<(ProbeAttempt, Duration, Duration)>,
    /// The most CPU time one `process()` call took.
    longest_call: Duration,
    /// The longest gap between two canary wake-ups.
    longest_gap: Duration,
}

/// A runner-like loop: one epoll with the set's fd and a canary timerfd, for `run`.
/// Attempts start on the grid k·period (initial delay 0), each at most `timeout`.
fn run_loop(kind_handler: ProbeHandler, agent: Option<PathBuf>, timeout: Duration) -> Run {
    // Kubernetes' shortest period is 1 s.
    let period = (timeout * 2).max(Duration::from_secs(1));
    let config = config(
        ProbeKind::Readiness,
        kind_handler,
        period.as_millis() as u64,
        timeout.as_millis() as u64,
    );
    let env = ProbeEnv {
        vm_addresses: vec![V4],
        agent: agent.map(AgentChannel::UnixSocket),
    };
    let mut set = ProbeSet::new(vec![config], env).unwrap();
    set.record_lateness(true);
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            set.fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .unwrap();
    let mut canary = TimerFd::new().unwrap();
    canary.reset(CANARY_PERIOD, Some(CANARY_PERIOD)).unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            canary.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 2),
        )
        .unwrap();

    let start = Instant::now();
    set.vm_started(start);
    let run_for = period * 3;
    let mut run = Run {
        attempts: Vec::new(),
        longest_call: Duration::ZERO,
        longest_gap: Duration::ZERO,
    };
    let mut last_canary = start;
    let mut starts: Vec<Duration> = Vec::new();
    let mut ev = [EpollEvent::default(); 4];
    while start.elapsed() < run_for {
        let n = epoll.wait(20, &mut ev).unwrap_or(0);
        for e in &ev[..n] {
            match e.data() {
                1 => {
                    let t = start.elapsed();
                    // CPU time, not wall time: other builds on the machine may
                    // preempt the call, which is not work it does.
                    let before = thread_cpu_time();
                    let events = set.process(Instant::now());
                    run.longest_call = run.longest_call.max(thread_cpu_time() - before);
                    // Attempt k was due at k·period; lateness says when it began.
                    for l in set.take_lateness() {
                        let k = starts.len() as u32;
                        starts.push(period * k + l);
                    }
                    for event in events {
                        if let ProbeEvent::Attempt(a) = event {
                            let k = run.attempts.len();
                            run.attempts.push((a, t, starts[k]));
                        }
                    }
                }
                _ => {
                    let _ = canary.wait();
                    let now = Instant::now();
                    run.longest_gap = run.longest_gap.max(now - last_canary);
                    last_canary = now;
                }
            }
        }
    }
    run
}

/// CPU time used by this thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Checks every attempt's end against its start + timeout + SLACK, and the loop's health.
fn check_bounds(run: &Run, timeout: Duration, what: &str) -> Result<(), String> {
    if run.attempts.len() < 2 {
        return Err(format!("{what}: {} attempts", run.attempts.len()));
    }
    // On a machine shared with other builds this thread itself may be kept off
    // the CPU: the canary's worst lateness measures that, and is allowed on top.
    let noise = run.longest_gap.saturating_sub(CANARY_PERIOD);
    for (a, end, start) in &run.attempts {
        if *end > *start + timeout + SLACK + noise {
            return Err(format!(
                "{what}: attempt started at {start:?} ended at {end:?} (> timeout {timeout:?} \
                 + 5 ms + {noise:?} of scheduling noise): {a:?}"
            ));
        }
    }
    if run.longest_gap > CANARY_MAX_GAP {
        return Err(format!(
            "{what}: the loop was held for {:?}",
            run.longest_gap
        ));
    }
    if run.longest_call > MAX_CALL {
        return Err(format!(
            "{what}: a process() call took {:?}",
            run.longest_call
        ));
    }
    Ok(())
}

/// Run a scenario and check its bounds; on a machine shared with other builds a
/// run may be preempted at the wrong moment, so up to 3 runs are made and the
/// last error is reported if none keeps within the bounds.
fn run_checked(
    what: &str,
    timeout: Duration,
    mut scenario: impl FnMut() -> Run,
    check: impl Fn(&Run),
) {
    // One scenario at a time: the tests of this file would otherwise compete
    // for the CPU with each other's floods.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = String::new();
    for _ in 0..3 {
        let run = scenario();
        check(&run);
        eprintln!(
            "{what}: {} attempts, longest call {:?} CPU, longest canary gap {:?}",
            run.attempts.len(),
            run.longest_call,
            run.longest_gap
        );
        match check_bounds(&run, timeout, what) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("{e}");
                last = e;
            }
        }
    }
    panic!("{last}");
}

/// Write `chunk` again and again until the peer goes or `for_how_long` passes.
fn flood(w: &mut impl Write, chunk: &[u8], for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        if w.write_all(chunk).is_err() {
            return;
        }
    }
}

const INTERIM: &[u8] = b"HTTP/1.1 102 Processing\r\n\r\n";

#[test]
fn endless_interim_responses_over_http_end_every_attempt_in_time() {
    let s = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            flood(&mut conn, &INTERIM.repeat(512), Duration::from_secs(4));
        }),
    );
    let timeout = ms(1000);
    run_checked(
        "HTTP flood",
        timeout,
        || run_loop(http_get(s.port(), "/", HttpScheme::Http), None, timeout),
        |run| {
            for (a, _, _) in &run.attempts {
                // Go bounds the 1xx headers too: past 1 MiB the attempt fails.
                assert_eq!(a.outcome, Outcome::Failure, "{a:?}");
                assert!(
                    a.message.starts_with("response headers (")
                        && a.message.ends_with("longer than 1048576 bytes"),
                    "{a:?}"
                );
            }
        },
    );
}

#[test]
fn a_slow_endless_interim_stream_ends_at_the_timeout() {
    let s = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                if conn.write_all(INTERIM).is_err() {
                    return;
                }
                thread::sleep(ms(1));
            }
        }),
    );
    let timeout = ms(400);
    run_checked(
        "HTTP drip",
        timeout,
        || run_loop(http_get(s.port(), "/", HttpScheme::Http), None, timeout),
        |run| {
            for (a, end, start) in &run.attempts {
                assert_eq!(a.outcome, Outcome::Failure, "{a:?}");
                assert_eq!(
                    a.message,
                    "timed out after 400ms (waiting for the response)"
                );
                assert!(*end >= *start + timeout, "{a:?} ended early at {end:?}");
            }
        },
    );
}

mod tls {
    use super::*;

    fn https_flood(ip: IpAddr, pause: Option<Duration>) -> Server {
        let config = self_signed_tls();
        Server::start(
            ip,
            0,
            Arc::new(move |conn: TcpStream, _| {
                let Some(mut stream) = accept_tls_request(&config, conn) else {
                    return;
                };
                match pause {
                    None => flood(&mut stream, &INTERIM.repeat(512), Duration::from_secs(4)),
                    Some(p) => {
                        let until = Instant::now() + Duration::from_secs(4);
                        while Instant::now() < until {
                            if stream.write_all(INTERIM).is_err() {
                                return;
                            }
                            thread::sleep(p);
                        }
                    }
                }
            }),
        )
    }

    #[test]
    fn endless_interim_responses_over_https_end_every_attempt_in_time() {
        let s = https_flood(V4, None);
        let timeout = ms(1000);
        run_checked(
            "HTTPS flood",
            timeout,
            || run_loop(http_get(s.port(), "/", HttpScheme::Https), None, timeout),
            |run| {
                for (a, _, _) in &run.attempts {
                    assert_eq!(a.outcome, Outcome::Failure, "{a:?}");
                    assert!(a.message.ends_with("longer than 1048576 bytes"), "{a:?}");
                }
            },
        );

        let s = https_flood(V6, Some(ms(1)));
        let timeout = ms(400);
        let mut handler = http_get(s.port(), "/", HttpScheme::Https);
        if let ProbeHandler::HttpGet { host, .. } = &mut handler {
            *host = Some("::1".into());
        }
        run_checked(
            "HTTPS drip",
            timeout,
            || run_loop(handler.clone(), None, timeout),
            |run| {
                for (a, _, _) in &run.attempts {
                    assert_eq!(
                        a.message,
                        "timed out after 400ms (waiting for the response)"
                    );
                }
            },
        );
    }
}

/// A fake agent on a Unix socket: `script` gets each accepted connection.
fn fake_agent(
    script: impl Fn(std::os::unix::net::UnixStream) + Send + Sync + 'static,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let script = Arc::new(script);
    thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(40);
        while Instant::now() < until {
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let s = script.clone();
                    thread::spawn(move || s(conn));
                }
                Err(_) => thread::sleep(ms(5)),
            }
        }
    });
    (dir, path)
}

#[test]
fn an_agent_flooding_stale_delimited_replies_fails_each_ping_in_time() {
    // Never the sync id we ask for: every line is parsed and discarded.
    let (_dir, path) = fake_agent(|mut conn| {
        flood(
            &mut conn,
            &b"\xff{\"return\": 1}\n".repeat(1024),
            Duration::from_secs(4),
        );
    });
    let timeout = ms(500);
    run_checked(
        "stale sync replies",
        timeout,
        || run_loop(ProbeHandler::GuestAgentPing, Some(path.clone()), timeout),
        |run| {
            for (a, _, _) in &run.attempts {
                assert_eq!(a.outcome, Outcome::Failure, "{a:?}");
                assert_eq!(
                    a.message, "timed out: agent did not answer the sync",
                    "{a:?}"
                );
            }
        },
    );
}

#[test]
fn an_agent_flooding_echo_lines_after_the_sync_fails_each_ping_in_time() {
    // Answers the sync properly, then sends our request back forever (as a
    // looped-back serial line would): never a reply.
    let (_dir, path) = fake_agent(|conn| {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut conn = conn;
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_start_matches('\u{fffd}').trim();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            if v["execute"] == "guest-sync-delimited" {
                let id = v["arguments"]["id"].as_i64().unwrap();
                let mut bytes = vec![0xff];
                bytes.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
                if conn.write_all(&bytes).is_err() {
                    return;
                }
            } else {
                flood(
                    &mut conn,
                    &b"{\"execute\": \"guest-ping\"}\n".repeat(1024),
                    Duration::from_secs(4),
                );
                return;
            }
        }
    });
    let timeout = ms(500);
    run_checked(
        "echo flood",
        timeout,
        || run_loop(ProbeHandler::GuestAgentPing, Some(path.clone()), timeout),
        |run| {
            let (a, _, _) = &run.attempts[0];
            assert_eq!(a.message, "timed out: no reply to guest-ping", "{a:?}");
            assert!(run.attempts.iter().all(|(a, _, _)| !a.success));
        },
    );
}
