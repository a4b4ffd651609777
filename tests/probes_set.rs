//! `ProbeSet` end to end: schedules and thresholds over real sockets, driven by
//! epoll-waiting on `ProbeSet::fd()` and calling `process()`, with hard time bounds.

mod probes_util;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use probes_util::*;
use vmpulse::probes::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::tracker::Outcome;
use vmpulse::probes::{ProbeEvent, ProbeStats};

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn tcp(port: u16) -> ProbeHandler {
    ProbeHandler::TcpSocket { port, host: None }
}

fn ready_events(d: &Driver) -> Vec<(Duration, bool)> {
    d.events
        .iter()
        .filter_map(|(t, e)| match e {
            ProbeEvent::Ready(r) => Some((*t, *r)),
            _ => None,
        })
        .collect()
}

/// Completion times modulo the period: attempts start on the grid and complete
/// quickly, so each should be just past a multiple of the period.
fn assert_on_grid(times: &[Duration], period: Duration, slack: Duration) {
    for t in times {
        let phase = Duration::from_nanos((t.as_nanos() % period.as_nanos()) as u64);
        assert!(
            phase < slack,
            "completion at {t:?} is {phase:?} past the grid"
        );
    }
}

#[test]
fn readiness_thresholds_end_to_end() {
    let listener = TcpListener::bind((V4, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ProbeConfig {
        success_threshold: 2,
        failure_threshold: 2,
        ..config(tcp(port), 250, 200)
    };
    let mut d = Driver::new(vec![(ProbeKind::Readiness, config)], env(&[V4]));
    assert!(!d.set.ready());
    d.start_vm();
    assert!(d.run_until(ms(3000), |ev| ev
        .iter()
        .any(|(_, e)| *e == ProbeEvent::Ready(true))));
    let attempts = d.attempts();
    // Ready after exactly the second success, at about one period.
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|(_, a)| a.success));
    let ready_at = ready_events(&d)[0].0;
    assert!(ready_at >= ms(250) && ready_at < ms(400), "{ready_at:?}");
    assert!(d.set.ready());
    // Let it run healthy for a while: no more transitions.
    d.run_for(ms(600));
    assert_eq!(ready_events(&d).len(), 1);
    // Take the port down: two consecutive failures make it not ready.
    drop(listener);
    let before = d.attempts().len();
    assert!(d.run_until(ms(5000), |ev| ev
        .iter()
        .any(|(_, e)| *e == ProbeEvent::Ready(false))));
    let after: Vec<_> = d.attempts()[before..].to_vec();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after
        .iter()
        .all(|(_, a)| !a.success && a.message == "connect: Connection refused"));
    assert!(!d.set.ready());
    let times: Vec<Duration> = d.attempts().iter().map(|(t, _)| *t).collect();
    assert_on_grid(&times, ms(250), ms(100));
    // Idle between attempts: no busy loop.
    assert!(d.calls < 60, "{} process calls", d.calls);
}

#[test]
fn liveness_fails_at_the_threshold_then_holds_until_restart() {
    let port = free_port(V4);
    let mut d = Driver::new(
        vec![(ProbeKind::Liveness, config(tcp(port), 200, 100))],
        env(&[V4]),
    );
    d.start_vm();
    assert!(d.run_until(ms(3000), |ev| ev
        .iter()
        .any(|(_, e)| matches!(e, ProbeEvent::LivenessFailed { .. }))));
    let (t, failed) = d
        .events
        .iter()
        .find(|(_, e)| matches!(e, ProbeEvent::LivenessFailed { .. }))
        .cloned()
        .unwrap();
    assert_eq!(
        failed,
        ProbeEvent::LivenessFailed {
            message: "connect: Connection refused".into()
        }
    );
    assert!(t >= ms(400) && t < ms(600), "{t:?}");
    assert_eq!(d.attempts().len(), 3);
    // On hold: nothing more.
    d.run_for(ms(700));
    assert_eq!(d.attempts().len(), 3);
    // A new run of the VM: alive again, probing again from t = 0.
    d.events.clear();
    d.start_vm();
    assert!(d.run_until(ms(3000), |ev| ev
        .iter()
        .any(|(_, e)| matches!(e, ProbeEvent::LivenessFailed { .. }))));
    let times: Vec<Duration> = d.attempts().iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 3);
    assert!(times[0] < ms(100), "{times:?}");
    assert_on_grid(&times, ms(200), ms(80));
}

#[test]
fn vm_stopped_publishes_not_ready_and_cancels_attempts() {
    // An HTTP server that answers 200 after 150 ms (so one attempt is in flight).
    let s = Server::http(V4, |_, _| {
        thread::sleep(ms(150));
        response("200 OK", "", "")
    });
    let mut d = Driver::new(
        vec![(
            ProbeKind::Readiness,
            config(http_get(s.port(), "/", HttpScheme::Http), 300, 1000),
        )],
        env(&[V4]),
    );
    d.start_vm();
    assert!(d.run_until(ms(3000), |ev| ev
        .iter()
        .any(|(_, e)| *e == ProbeEvent::Ready(true))));
    // Stop in the middle of the next attempt.
    d.run_until(ms(350), |_| false);
    let attempts = d.attempts().len();
    assert!(d.set.in_flight() > 0);
    d.set.vm_stopped();
    assert!(!d.set.ready());
    assert_eq!(d.set.in_flight(), 0);
    let stop_at = d.start.elapsed();
    assert!(d.run_until(stop_at + ms(1000), |ev| ev
        .iter()
        .any(|(_, e)| *e == ProbeEvent::Ready(false))));
    let (t, _) = *ready_events(&d).last().unwrap();
    assert!(
        t - stop_at < ms(100),
        "Ready(false) {:?} after the stop",
        t - stop_at
    );
    d.run_for(ms(800));
    assert_eq!(d.attempts().len(), attempts, "attempts after the stop");
}

#[test]
fn initial_delay_is_honoured_exactly() {
    let l = TcpListener::bind((V6, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let config = ProbeConfig {
        initial_delay: ms(300),
        ..config(tcp(port), 10_000, 1000)
    };
    let mut d = Driver::new(vec![(ProbeKind::Readiness, config)], env(&[V6]));
    d.start_vm();
    assert!(d.run_until(ms(3000), |ev| ev
        .iter()
        .any(|(_, e)| *e == ProbeEvent::Ready(true))));
    let (t, a) = d.attempts()[0].clone();
    assert!(a.success);
    assert!(t >= ms(300) && t < ms(450), "{t:?}");
}

#[test]
fn without_a_readiness_probe_ready_follows_the_vm() {
    let l = TcpListener::bind((V4, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let mut d = Driver::new(
        vec![(ProbeKind::Liveness, config(tcp(port), 10_000, 1000))],
        env(&[V4]),
    );
    d.start_vm();
    assert!(d.set.ready());
    assert!(d.run_until(ms(1000), |ev| ev.len() >= 2));
    assert_eq!(d.events[0].1, ProbeEvent::Ready(true));
    assert!(matches!(&d.events[1].1, ProbeEvent::Attempt(a) if a.success));
    d.set.vm_stopped();
    d.run_until(ms(2000), |ev| ev.len() >= 3);
    assert_eq!(d.events[2].1, ProbeEvent::Ready(false));
}

#[test]
fn agent_probes_without_an_agent_fail_clearly() {
    let exec = ProbeHandler::Exec {
        command: vec!["true".into()],
    };
    for handler in [exec, ProbeHandler::GuestAgentPing] {
        let (a, t) = probe_once(handler, 1000, &[V4]);
        assert!(!a.success);
        assert_eq!(a.message, "no guest agent configured (--guest-agent)");
        assert_eq!(a.address, None);
        assert!(t < ms(200));
    }
}

#[test]
fn overrunning_attempts_start_at_completion() {
    // Accepts, reads, never answers: every attempt times out after 500 ms,
    // longer than the 200 ms period.
    let s = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            thread::sleep(ms(3000));
            let _ = conn.write_all(b"");
        }),
    );
    let config = ProbeConfig {
        failure_threshold: 3,
        ..config(http_get(s.port(), "/", HttpScheme::Http), 200, 500)
    };
    let mut d = Driver::new(vec![(ProbeKind::Liveness, config)], env(&[V4]));
    d.start_vm();
    assert!(d.run_until(ms(4000), |ev| ev
        .iter()
        .any(|(_, e)| matches!(e, ProbeEvent::LivenessFailed { .. }))));
    let times: Vec<Duration> = d.attempts().iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 3);
    // Attempts at 0, 0.5, 1.0 failing at 0.5, 1.0, 1.5: each starts when the
    // previous one times out, not on the 200 ms grid.
    let mut previous = Duration::ZERO;
    for (k, t) in times.iter().enumerate() {
        let gap = *t - previous;
        assert!(gap >= ms(500) && gap < ms(600), "attempt {k} took {gap:?}");
        previous = *t;
    }
    for (_, a) in d.attempts() {
        assert_eq!(
            a.message,
            "timed out after 500ms (waiting for the response)"
        );
    }
    assert_eq!(
        d.set.stats(),
        ProbeStats {
            started: 3,
            attempts: 3,
            successes: 0,
            failures: 3,
            errors: 0,
            timeouts: 3,
            body_stalls: 0
        }
    );
}

#[test]
fn a_body_stall_is_an_error_and_is_counted() {
    let s = Server::start(
        V6,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
            thread::sleep(ms(3000));
        }),
    );
    let mut d = Driver::new(
        vec![(
            ProbeKind::Readiness,
            config(http_get(s.port(), "/", HttpScheme::Http), 10_000, 300),
        )],
        env(&[V6]),
    );
    d.start_vm();
    assert!(d.run_until(ms(2000), |ev| !ev.is_empty()));
    let (t, a) = d.attempts().remove(0);
    assert!(!a.success);
    assert_eq!(a.outcome, Outcome::Error);
    assert_eq!(a.message, "timed out after 300ms (reading the body)");
    assert!(t >= ms(300) && t < ms(450), "{t:?}");
    let st = d.set.stats();
    assert_eq!(
        (st.failures, st.errors, st.timeouts, st.body_stalls),
        (0, 1, 1, 1)
    );
    // An error counts toward neither threshold: still not ready, no transition.
    assert!(!d.set.ready());
}

#[test]
fn two_probes_share_one_loop() {
    let ok = Server::http(V4, |_, _| response("200 OK", "", ""));
    let l = TcpListener::bind((V6, 0)).unwrap();
    let port6 = l.local_addr().unwrap().port();
    // The HTTP server only listens on 127.0.0.1: the readiness probe names its
    // host, the TCP probe uses the VM address (::1).
    let mut d = Driver::new(
        vec![
            (
                ProbeKind::Readiness,
                config(
                    ProbeHandler::HttpGet {
                        path: "/".into(),
                        port: ok.port(),
                        host: Some("127.0.0.1".into()),
                        scheme: HttpScheme::Http,
                        headers: vec![],
                    },
                    200,
                    500,
                ),
            ),
            (ProbeKind::Liveness, config(tcp(port6), 300, 500)),
        ],
        env(&[V6]),
    );
    d.start_vm();
    d.run_for(ms(1000));
    let attempts = d.attempts();
    let readiness = attempts
        .iter()
        .filter(|(_, a)| a.probe == ProbeKind::Readiness && a.success)
        .count();
    let liveness = attempts
        .iter()
        .filter(|(_, a)| a.probe == ProbeKind::Liveness && a.success)
        .count();
    // 0, 200, 400, 600, 800 (maybe 1000) and 0, 300, 600, 900.
    assert!((5..=6).contains(&readiness), "{attempts:?}");
    assert!((4..=4).contains(&liveness), "{attempts:?}");
    assert_eq!(ready_events(&d).len(), 1);
    assert_eq!(attempts.len(), readiness + liveness);
}
