//! `ProbeSet` end to end over real loopback sockets.
//!
//! The schedule tests run in virtual time ([`VirtualDriver`]): the test passes
//! `now`, real I/O settles at each instant, and every start, completion and
//! transition is asserted at its exact instant. A few tests run the set from a
//! real epoll loop and clock ([`Driver`]) with generous bounds, to show the fd
//! and the timerfd wake the caller in time.

mod probes_util;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use probes_util::*;
use vmpulse::probes::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::{ProbeEnv, ProbeEvent, ProbeSet, ProbeSetError, ProbeStats};

const R: ProbeKind = ProbeKind::Readiness;
const L: ProbeKind = ProbeKind::Liveness;
use vmm_sys_util::epoll::EpollEvent;
use vmpulse::probes::tracker::Outcome;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn s(x: u64) -> Duration {
    Duration::from_secs(x)
}

fn tcp(port: u16) -> ProbeHandler {
    ProbeHandler::tcp_socket(port)
}

fn ready_events(events: &[(Duration, ProbeEvent)]) -> Vec<(Duration, bool)> {
    events
        .iter()
        .filter_map(|(t, e)| match e {
            ProbeEvent::Ready(r) => Some((*t, *r)),
            _ => None,
        })
        .collect()
}

/// (virtual start, virtual report time, success) of every attempt of `kind`.
fn schedule(d: &VirtualDriver, kind: ProbeKind) -> Vec<(Duration, Duration, bool)> {
    d.attempts()
        .iter()
        .filter(|(_, a)| a.probe == kind)
        .map(|(t, a)| (d.started(a), *t, a.success))
        .collect()
}

/// A server that accepts, reads the request and never answers.
fn silent_server() -> Server {
    Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            thread::sleep(s(30));
            let _ = conn.write_all(b"");
        }),
    )
}

#[test]
fn readiness_thresholds_on_an_exact_schedule() {
    let listener = TcpListener::bind((V4, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ProbeConfig::builder(R, tcp(port))
        .period(s(10))
        .success_threshold(2)
        .failure_threshold(2)
        .build()
        .unwrap();
    let mut d = VirtualDriver::new(vec![config], env(&[V4]));
    assert_eq!(d.set.next_deadline(), None, "nothing before the VM starts");
    assert!(!d.set.ready());
    d.start_vm();
    assert_eq!(d.set.next_deadline(), Some(d.at(s(10))));
    d.advance_to(s(35));
    // Connections on loopback complete at the instant they start.
    assert_eq!(
        schedule(&d, R),
        [
            (s(0), s(0), true),
            (s(10), s(10), true),
            (s(20), s(20), true),
            (s(30), s(30), true)
        ]
    );
    assert!(d
        .attempts()
        .iter()
        .all(|(_, a)| a.duration == Duration::ZERO
            && a.message == "connected"
            && a.address.as_deref() == Some(&*format!("127.0.0.1:{port}"))));
    // Ready after exactly the second success.
    assert_eq!(ready_events(&d.events), [(s(10), true)]);
    assert!(d.set.ready());
    // Take the port down: two consecutive failures make it not ready.
    drop(listener);
    d.advance_to(s(60));
    let after: Vec<_> = schedule(&d, R)[4..].to_vec();
    assert_eq!(
        after,
        [
            (s(40), s(40), false),
            (s(50), s(50), false),
            (s(60), s(60), false)
        ]
    );
    assert_eq!(ready_events(&d.events), [(s(10), true), (s(50), false)]);
    assert!(d.attempts()[4..]
        .iter()
        .all(|(_, a)| a.message == "connect: Connection refused"));
    assert!(!d.set.ready());
    assert_eq!(d.set.next_deadline(), Some(d.at(s(70))));
}

#[test]
fn liveness_fails_at_the_threshold_then_holds_until_restart() {
    let port = free_port(V4);
    let mut d = VirtualDriver::new(vec![config(L, tcp(port), 10_000, 1000)], env(&[V4]));
    d.start_vm();
    d.advance_to(s(100));
    assert_eq!(
        schedule(&d, L),
        [
            (s(0), s(0), false),
            (s(10), s(10), false),
            (s(20), s(20), false)
        ]
    );
    let failed: Vec<_> = d
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ProbeEvent::LivenessFailed { .. }))
        .cloned()
        .collect();
    assert_eq!(
        failed,
        [(
            s(20),
            ProbeEvent::LivenessFailed {
                message: "connect: Connection refused".into()
            }
        )]
    );
    // On hold: nothing scheduled, nothing more.
    assert_eq!(d.set.next_deadline(), None);
    // A new run of the VM at 100 s: alive again, probing again from its time 0.
    d.start_vm();
    d.advance_to(s(150));
    let restarted: Vec<_> = schedule(&d, L)[3..].iter().map(|(t, _, _)| *t).collect();
    assert_eq!(restarted, [s(100), s(110), s(120)]);
    let failures: Vec<Duration> = d
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ProbeEvent::LivenessFailed { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(failures, [s(20), s(120)]);
}

#[test]
fn initial_delay_and_period_are_honoured_exactly() {
    let l = TcpListener::bind((V6, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let config = ProbeConfig::builder(R, tcp(port))
        .initial_delay(ms(7_250))
        .period(s(10))
        .build()
        .unwrap();
    let mut d = VirtualDriver::new(vec![config], env(&[V6]));
    d.start_vm();
    d.advance_to(ms(7_249));
    assert!(d.attempts().is_empty());
    d.advance_to(s(40));
    let starts: Vec<Duration> = schedule(&d, R).iter().map(|(t, _, _)| *t).collect();
    assert_eq!(starts, [ms(7_250), ms(17_250), ms(27_250), ms(37_250)]);
    assert_eq!(ready_events(&d.events), [(ms(7_250), true)]);
}

#[test]
fn timeouts_fail_exactly_at_the_deadline_and_carry_their_duration() {
    let server = silent_server();
    let config = ProbeConfig::builder(L, ProbeHandler::http_get(server.port(), "/"))
        .period(s(10))
        .timeout(s(2))
        .failure_threshold(1)
        .build()
        .unwrap();
    let mut d = VirtualDriver::new(vec![config], env(&[V4]));
    d.start_vm();
    assert_eq!(d.set.in_flight(), 1);
    assert_eq!(d.set.next_deadline(), Some(d.at(s(2))));
    d.advance_to(ms(1_999));
    assert!(d.attempts().is_empty(), "{:?}", d.events);
    d.advance_to(s(5));
    let (t, a) = d.attempts().remove(0);
    assert_eq!(t, s(2));
    assert_eq!(d.started(&a), s(0));
    assert_eq!(a.duration, s(2));
    assert!(!a.success);
    assert!(a.message.contains("timed out"), "{}", a.message);
    assert!(matches!(d.events.last(), Some((t, ProbeEvent::LivenessFailed { .. })) if *t == s(2)));
    assert_eq!(d.set.in_flight(), 0);
}

#[test]
fn overrunning_attempts_start_at_completion() {
    // Every attempt times out after 3 s, longer than the 1 s period.
    let server = silent_server();
    let config = ProbeConfig::builder(L, ProbeHandler::http_get(server.port(), "/"))
        .period(s(1))
        .timeout(s(3))
        .build()
        .unwrap();
    let mut d = VirtualDriver::new(vec![config], env(&[V4]));
    d.start_vm();
    d.advance_to(s(10));
    // Attempts at 0, 3, 6 failing at 3, 6, 9: each starts when the previous one
    // times out, not on the 1 s grid; the third failure fails liveness.
    assert_eq!(
        schedule(&d, L),
        [
            (s(0), s(3), false),
            (s(3), s(6), false),
            (s(6), s(9), false)
        ]
    );
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
    let server = Server::start(
        V6,
        0,
        Arc::new(|mut conn: TcpStream, _| {
            let _ = read_head(&mut conn);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
            thread::sleep(s(30));
        }),
    );
    let config = ProbeConfig::builder(R, ProbeHandler::http_get(server.port(), "/"))
        .timeout(s(3))
        .build()
        .unwrap();
    let mut d = VirtualDriver::new(vec![config], env(&[V6]));
    d.start_vm();
    d.advance_to(s(5));
    let (t, a) = d.attempts().remove(0);
    assert!(!a.success);
    assert_eq!(a.outcome, Outcome::Error);
    assert_eq!(t, s(3));
    assert_eq!(a.duration, s(3));
    assert_eq!(a.message, "timed out after 3s (reading the body)");
    let st = d.set.stats();
    assert_eq!(
        (st.failures, st.errors, st.timeouts, st.body_stalls),
        (0, 1, 1, 1)
    );
    // An error counts toward neither threshold: still not ready, no transition.
    assert!(!d.set.ready());
}

#[test]
fn vm_stopped_publishes_not_ready_and_cancels_attempts() {
    // Answers the first connection, never the later ones.
    let server = Server::start(
        V4,
        0,
        Arc::new(|mut conn: TcpStream, n| {
            let _ = read_head(&mut conn);
            if n == 0 {
                let _ = conn.write_all(&response("200 OK", "", ""));
            } else {
                thread::sleep(s(30));
            }
        }),
    );
    let config = ProbeConfig::builder(R, ProbeHandler::http_get(server.port(), "/"))
        .period(s(10))
        .timeout(s(5))
        .build()
        .unwrap();
    let mut d = VirtualDriver::new(vec![config], env(&[V4]));
    d.start_vm();
    d.advance_to(s(12));
    assert_eq!(ready_events(&d.events), [(s(0), true)]);
    assert_eq!(d.attempts().len(), 1);
    assert_eq!(d.set.in_flight(), 1, "the attempt of 10 s hangs");
    d.stop_vm();
    assert!(!d.set.ready());
    assert_eq!(d.set.in_flight(), 0);
    assert_eq!(ready_events(&d.events), [(s(0), true), (s(12), false)]);
    assert_eq!(d.set.next_deadline(), None);
    d.advance_to(s(60));
    assert_eq!(d.attempts().len(), 1, "no attempt after the stop");
}

#[test]
fn without_a_readiness_probe_ready_follows_the_vm() {
    let l = TcpListener::bind((V4, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let mut d = VirtualDriver::new(vec![config(L, tcp(port), 10_000, 1000)], env(&[V4]));
    d.now = s(3);
    d.start_vm();
    assert!(d.set.ready());
    assert_eq!(d.events[0], (s(3), ProbeEvent::Ready(true)));
    assert!(matches!(&d.events[1], (t, ProbeEvent::Attempt(a)) if *t == s(3) && a.success));
    d.advance_to(s(4));
    d.stop_vm();
    assert_eq!(d.events[2], (s(4), ProbeEvent::Ready(false)));
}

#[test]
fn agent_probes_without_an_agent_fail_clearly() {
    for handler in [ProbeHandler::exec(["true"]), ProbeHandler::GuestAgentPing] {
        let mut d = VirtualDriver::new(vec![config(R, handler, 10_000, 1000)], env(&[V4]));
        d.start_vm();
        let (t, a) = d.attempts().remove(0);
        assert!(!a.success);
        assert_eq!(a.message, "no guest agent channel configured");
        assert_eq!(a.address, None);
        assert_eq!((t, d.started(&a), a.duration), (s(0), s(0), Duration::ZERO));
    }
}

#[test]
fn two_probes_share_one_loop() {
    let ok = Server::http(V4, |_, _| response("200 OK", "", ""));
    let l = TcpListener::bind((V6, 0)).unwrap();
    let port6 = l.local_addr().unwrap().port();
    // The HTTP server only listens on 127.0.0.1: the readiness probe names its
    // host, the TCP probe uses the VM address (::1).
    let http = ProbeHandler::HttpGet {
        path: "/".into(),
        port: ok.port(),
        host: Some("127.0.0.1".into()),
        scheme: HttpScheme::Http,
        headers: vec![],
    };
    let mut d = VirtualDriver::new(
        vec![
            config(R, http, 2_000, 1_000),
            config(L, tcp(port6), 3_000, 1_000),
        ],
        env(&[V6]),
    );
    d.start_vm();
    d.advance_to(s(10));
    let starts = |kind| -> Vec<Duration> {
        schedule(&d, kind)
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(t, _, _)| *t)
            .collect()
    };
    assert_eq!(starts(R), [s(0), s(2), s(4), s(6), s(8), s(10)]);
    assert_eq!(starts(L), [s(0), s(3), s(6), s(9)]);
    assert_eq!(d.attempts().len(), 10);
    assert_eq!(ready_events(&d.events), [(s(0), true)]);
    assert_eq!(ok.requests().len(), 6);
}

#[test]
fn new_refuses_network_probes_without_an_address() {
    let no_address = ProbeEnv {
        vm_addresses: vec![],
        agent: None,
    };
    let err = ProbeSet::new(vec![config(L, tcp(80), 10_000, 1000)], no_address).unwrap_err();
    assert!(
        matches!(err, ProbeSetError::NoAddress(ProbeKind::Liveness)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "liveness probe: no host and no VM address to probe"
    );
    // A probe with its own host, or through the agent, needs no VM address.
    let own_host = ProbeHandler::TcpSocket {
        port: 80,
        host: Some("127.0.0.1".into()),
    };
    for handler in [own_host, ProbeHandler::GuestAgentPing] {
        let env = ProbeEnv {
            vm_addresses: vec![],
            agent: None,
        };
        assert!(ProbeSet::new(vec![config(R, handler, 10_000, 1000)], env).is_ok());
    }
}

// Real time: the caller only watches the fd and passes the clock's `now`.

#[test]
fn real_time_loop_is_woken_on_schedule() {
    let listener = TcpListener::bind((V4, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ProbeConfig::builder(R, tcp(port))
        .period(s(1))
        .success_threshold(2)
        .build()
        .unwrap();
    let mut d = Driver::new(vec![config], env(&[V4]));
    d.start_vm();
    assert!(d.run_until(s(5), |ev| ev
        .iter()
        .any(|(_, e)| *e == ProbeEvent::Ready(true))));
    let attempts = d.attempts();
    assert_eq!(attempts.len(), 2);
    // The second attempt starts at 1 s: the timerfd woke the loop in time.
    let second = attempts[1].1.started.duration_since(d.start);
    assert!(second >= s(1) && second < ms(1_500), "{second:?}");
    let ready_at = ready_events(&d.events)[0].0;
    assert!(ready_at >= s(1) && ready_at < ms(1_500), "{ready_at:?}");
    // Idle between attempts: no busy loop.
    assert!(d.calls < 20, "{} process calls", d.calls);
}

#[test]
fn real_time_timeout_is_measured() {
    let server = silent_server();
    let (a, t) = probe_once(ProbeHandler::http_get(server.port(), "/"), 300, &[V4]);
    assert!(!a.success);
    assert!(
        a.duration >= ms(300) && a.duration < ms(1_000),
        "{:?}",
        a.duration
    );
    assert!(t >= ms(300) && t < ms(1_000), "{t:?}");
}

#[test]
fn an_answer_seen_after_the_deadline_is_a_timeout() {
    let server = Server::http(V4, |_, _| response("200 OK", "", "ok"));
    let config = ProbeConfig::builder(R, ProbeHandler::http_get(server.port(), "/"))
        .period(s(10))
        .timeout(s(1))
        .build()
        .unwrap();
    let mut set = ProbeSet::new(vec![config], env(&[V4])).unwrap();
    let epoll = epoll_on(&set);
    let t0 = Instant::now();
    set.vm_started(t0);
    assert!(
        set.process(t0).is_empty(),
        "the request is out, no answer yet"
    );
    assert_eq!(set.in_flight(), 1);
    // The answer arrives at once, but the loop only sees it 2 s into the attempt
    // (a loop held up, or one woken with timer slack).
    let mut ev = [EpollEvent::default(); 4];
    let mut attempts = Vec::new();
    let give_up = Instant::now() + s(10);
    while attempts.is_empty() && Instant::now() < give_up {
        epoll.wait(1000, &mut ev).unwrap();
        attempts.extend(set.process(t0 + s(2)).into_iter().filter_map(|e| match e {
            ProbeEvent::Attempt(a) => Some(a),
            _ => None,
        }));
    }
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let a = &attempts[0];
    assert!(!a.success);
    assert!(a.message.contains("timed out after 1s"), "{}", a.message);
    assert_eq!(set.stats().timeouts, 1);
    assert_eq!(set.in_flight(), 0);
}

#[test]
fn timer_slack_lets_the_timerfd_fire_late_but_keeps_next_deadline_exact() {
    let listener = TcpListener::bind((V4, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    for slack in [ms(0), ms(8), ms(20)] {
        let config = ProbeConfig::builder(R, tcp(port))
            .initial_delay(ms(30))
            .build()
            .unwrap();
        let mut set = ProbeSet::new(vec![config], env(&[V4])).unwrap();
        set.set_timer_slack(slack);
        let epoll = epoll_on(&set);
        let t0 = Instant::now();
        set.vm_started(t0);
        assert!(set.process(t0).is_empty());
        assert_eq!(
            set.next_deadline(),
            Some(t0 + ms(30)),
            "exact, whatever the slack"
        );
        let mut ev = [EpollEvent::default(); 4];
        assert_eq!(epoll.wait(5_000, &mut ev).unwrap(), 1, "the timerfd fires");
        let woken = t0.elapsed();
        // A timer never fires early: with slack, not before the start plus the slack.
        // (Slack is capped at 10 ms.)
        let slack = slack.min(ms(10));
        assert!(
            woken >= ms(30) + slack,
            "slack {slack:?}: woken at {woken:?}"
        );
        assert!(woken < s(3), "slack {slack:?}: woken at {woken:?}");
        let started: Vec<_> = set
            .process(Instant::now())
            .into_iter()
            .filter(|e| matches!(e, ProbeEvent::Attempt(_)))
            .collect();
        assert_eq!(started.len(), 1, "the attempt ran once woken");
    }
}
