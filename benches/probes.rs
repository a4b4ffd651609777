//! Probe runtime benchmarks (figures in docs/PERFORMANCE.md §3).
//!
//! 1. 10,000 `tcpSocket` probes, then 10,000 `httpGet` probes, at a 1 s period on
//!    one `ProbeSet` loop, against a loopback server; initial delays spread the
//!    probes evenly over the period (10,000 attempts per second). Measured: start
//!    lateness (actual start − scheduled start) p50/p99/max and the loop thread's
//!    CPU time per attempt.
//!    The same again with 1 ms of timer slack (`ProbeSet::set_timer_slack`): starts
//!    due within a millisecond of each other share a wake-up.
//! 2. Baseline, same run, same server, same schedule: a bare paced loop that
//!    sleeps until each scheduled instant and does a blocking connect (and for
//!    HTTP request/response) and close. The two alternate, one measured round
//!    (one period) each at a time; every `ProbeSet` round has its own warm-up
//!    period.
//! 3. Criterion micro-benchmarks of the pure tracker.
//!
//! Environment: `PROBES_BENCH_N` (default 10000 under `cargo bench`, 500 in the
//! `cargo test --benches` smoke run), `PROBES_BENCH_ROUNDS` (default 3; 1 in the
//! smoke run), `PROBES_BENCH_KINDS` (`tcp,http` by default: which loops to run),
//! `PROBES_BENCH_ONLY` (`bare` or `set`: run only that side, e.g. under `strace -c`).

#[path = "../tests/probes_util/mod.rs"]
mod probes_util;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;
use probes_util::epoll_on;
use vmm_sys_util::epoll::EpollEvent;
use vmpulse::probes::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::tracker::{Outcome, Tracker};
use vmpulse::probes::{ProbeEnv, ProbeEvent, ProbeSet};

const PERIOD: Duration = Duration::from_secs(1);
/// The timer slack of the third loop (`ProbeSet::set_timer_slack`).
const SLACK: Duration = Duration::from_millis(1);
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n";

/// CPU time of the calling thread (from /proc, no unsafe).
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Tcp,
    Http,
}

/// A loopback server: accept and close (TCP) or answer 200 and close (HTTP).
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Server {
    fn start(kind: Kind) -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let l = listener.try_clone().unwrap();
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    for conn in l.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(mut c) = conn else { continue };
                        if kind == Kind::Http {
                            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut got = Vec::new();
                            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                                match c.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => got.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = c.write_all(RESPONSE);
                        }
                    }
                })
            })
            .collect();
        Server {
            addr,
            stop,
            threads,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..self.threads.len() {
            let _ = TcpStream::connect(self.addr);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What one run of a loop measured.
#[derive(Default)]
struct Run {
    lateness: Vec<Duration>,
    cpu: Duration,
    ops: usize,
    failures: usize,
    /// Failures that were timeouts (ProbeSet only).
    timeouts: u64,
    /// Loop wake-ups (`process` calls) while measuring (ProbeSet only).
    calls: u64,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.lateness.extend(other.lateness);
        self.cpu += other.cpu;
        self.ops += other.ops;
        self.failures += other.failures;
        self.timeouts += other.timeouts;
        self.calls += other.calls;
    }

    fn cpu_per_op(&self) -> Duration {
        self.cpu / self.ops.max(1) as u32
    }
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    if v.is_empty() {
        return Default::default();
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

/// N probes on one ProbeSet, spread over the period; one warm-up round, then
/// `rounds` measured rounds.
fn probeset(kind: Kind, addr: SocketAddr, n: usize, rounds: u32, slack: Duration) -> Run {
    let probes: Vec<ProbeConfig> = (0..n)
        .map(|i| {
            let handler = match kind {
                Kind::Tcp => ProbeHandler::TcpSocket {
                    port: addr.port(),
                    host: None,
                },
                Kind::Http => ProbeHandler::HttpGet {
                    path: "/".into(),
                    port: addr.port(),
                    host: None,
                    scheme: HttpScheme::Http,
                    headers: vec![],
                },
            };
            ProbeConfig::builder(ProbeKind::Readiness, handler)
                .initial_delay(PERIOD * i as u32 / n as u32)
                .period(PERIOD)
                .timeout(Duration::from_secs(1))
                .build()
                .expect("a valid probe configuration")
        })
        .collect();
    let env = ProbeEnv {
        vm_addresses: vec![addr.ip()],
        agent: None,
    };
    let mut set = ProbeSet::new(probes, env).unwrap();
    set.set_timer_slack(slack);
    let epoll = epoll_on(&set);
    let mut ev = [EpollEvent::default(); 4];
    let start = Instant::now();
    set.vm_started(start);
    let measure_from = start + PERIOD;
    let end = measure_from + PERIOD * rounds;
    let mut measuring = false;
    let (mut cpu0, mut ops, mut failures) = (Duration::ZERO, 0, 0);
    let mut timeouts0 = 0;
    let mut calls = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !measuring && now >= measure_from {
            measuring = true;
            set.record_lateness(true);
            timeouts0 = set.stats().timeouts;
            cpu0 = thread_cpu();
        }
        let wait = (end - now).as_millis().min(50) as i32 + 1;
        if epoll.wait(wait, &mut ev).unwrap_or(0) == 0 {
            continue;
        }
        if measuring {
            calls += 1;
        }
        for e in set.process(Instant::now()) {
            if let ProbeEvent::Attempt(a) = e {
                if measuring {
                    ops += 1;
                    failures += usize::from(!a.success);
                }
            }
        }
    }
    Run {
        cpu: thread_cpu() - cpu0,
        lateness: set.take_lateness(),
        ops,
        failures,
        timeouts: set.stats().timeouts - timeouts0,
        calls,
    }
}

/// The bare baseline: the same schedule in a paced blocking loop.
fn bare(kind: Kind, addr: SocketAddr, n: usize, rounds: u32) -> Run {
    let total = n * rounds as usize;
    let step = PERIOD / n as u32;
    let mut lateness = Vec::with_capacity(total);
    let mut failures = 0;
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    for k in 0..total {
        let due = start + step * k as u32;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        lateness.push(Instant::now().saturating_duration_since(due));
        let ok = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => match kind {
                Kind::Tcp => true,
                Kind::Http => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut got = 0;
                    let sent = s.write_all(REQUEST).is_ok();
                    while let Ok(m) = s.read(&mut buf) {
                        if m == 0 {
                            break;
                        }
                        got += m;
                    }
                    sent && got >= RESPONSE.len()
                }
            },
            Err(_) => false,
        };
        failures += usize::from(!ok);
    }
    Run {
        cpu: thread_cpu() - cpu0,
        lateness,
        ops: total,
        failures,
        timeouts: 0,
        calls: 0,
    }
}

fn print(name: &str, r: &Run) {
    let wakeups = if r.calls > 0 {
        format!(
            "  wake-ups/attempt {:.2}",
            r.calls as f64 / r.ops.max(1) as f64
        )
    } else {
        String::new()
    };
    let (p50, p99, max) = percentiles(r.lateness.clone());
    println!(
        "{name:<34} attempts {:>6}  failures {:>4} (timeouts {:>4})  lateness p50 {p50:>9.1?} p99 {p99:>9.1?} max {max:>9.1?}  CPU/attempt {:>7.1?}{wakeups}",
        r.ops, r.failures, r.timeouts, r.cpu_per_op()
    );
}

fn loop_benchmarks() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("PROBES_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 10_000 } else { 500 });
    let rounds: u32 = std::env::var("PROBES_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 3 } else { 1 });
    println!(
        "probes on one loop: {n} probes, period {PERIOD:?}, spread over the period, {rounds} measured rounds"
    );
    let kinds = std::env::var("PROBES_BENCH_KINDS").unwrap_or_else(|_| "tcp,http".into());
    let only = std::env::var("PROBES_BENCH_ONLY").unwrap_or_default();
    for (kind, label) in [(Kind::Tcp, "tcp"), (Kind::Http, "http")] {
        if !kinds.split(',').any(|k| k.trim() == label) {
            continue;
        }
        let server = Server::start(kind);
        // One measured round of each at a time, alternating, so that a change in
        // the machine's load during the run weighs on both sides alike.
        let (mut base, mut set, mut slack) = (Run::default(), Run::default(), Run::default());
        for _ in 0..rounds {
            if only != "set" {
                base.add(bare(kind, server.addr, n, 1));
            }
            if only != "bare" {
                set.add(probeset(kind, server.addr, n, 1, Duration::ZERO));
                slack.add(probeset(kind, server.addr, n, 1, SLACK));
            }
        }
        let base = (only != "set").then_some(base);
        let sets = (only != "bare").then_some([("", set), (" with 1 ms timer slack", slack)]);
        if let Some(base) = &base {
            print(&format!("{label}: bare paced blocking loop"), base);
        }
        for (what, set) in sets.iter().flatten() {
            print(&format!("{label}: ProbeSet (one epoll loop){what}"), set);
            if let Some(base) = &base {
                println!(
                    "{label}: CPU per attempt, ProbeSet{what} / bare = {:.2}",
                    set.cpu_per_op().as_secs_f64() / base.cpu_per_op().as_secs_f64().max(1e-12)
                );
            }
        }
        drop(server);
    }
}

fn tracker_benchmarks(c: &mut Criterion) {
    let s = Duration::from_secs;
    c.bench_function("tracker: begin + complete (one attempt)", |b| {
        let mut t = Tracker::with_params(ProbeKind::Readiness, s(0), s(1), s(1), 1, 3);
        t.start();
        let mut now = s(0);
        b.iter(|| {
            now = t.next_start().unwrap();
            t.begin(black_box(now));
            black_box(t.complete(now, Outcome::Success));
        })
    });
}

fn main() {
    loop_benchmarks();
    let mut c = Criterion::default().configure_from_args();
    tracker_benchmarks(&mut c);
    c.final_summary();
}
