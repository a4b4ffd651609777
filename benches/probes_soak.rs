//! Soak: probe attempts of every kind — `tcpSocket`, `httpGet`, exec
//! and `guestAgentPing` — through one `ProbeSet` on one epoll loop, against
//! loopback servers and the real `qemu-ga`. The process's open fds and resident
//! memory are sampled once the loop is warm (1 % of the attempts done) and at the
//! end; neither may grow.
//!
//! Size: `PROBES_SOAK_N` attempts of each kind (default 100,000 under
//! `cargo bench`, 300 in `cargo test --benches`), spread over
//! `PROBES_SOAK_SECONDS` (default 200) by the number of probes of each kind, all
//! at a 1 s period with a 1 s timeout (readiness probes, so no failure stops
//! anything). Without qemu-ga, the exec and ping kinds are skipped with a message.
//!
//! Output: one line per kind (attempts, successes, failures, errors), then the fd
//! count and RSS at the warm mark and at the end. The run fails (exit 1) if the fd
//! count grew, or RSS grew by more than 4 MiB, between the two samples.

#[path = "../tests/probes_util/mod.rs"]
mod probes_util;
#[path = "../tests/common/qga.rs"]
mod qga;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use probes_util::epoll_on;
use vmm_sys_util::epoll::EpollEvent;
use vmpulse::probes::config::{HttpScheme, ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::tracker::Outcome;
use vmpulse::probes::{AgentChannel, ProbeEnv, ProbeEvent, ProbeSet};

const PERIOD: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(1);
/// RSS growth tolerated between the warm sample and the end (allocator noise).
const RSS_SLACK_KIB: u64 = 4 * 1024;

/// Open fds of this process.
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A loopback server: accept and close, or answer one HTTP request and close.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(http: bool) -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..2 {
            let l = listener.try_clone().expect("listener clone");
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                for conn in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut c) = conn else { continue };
                    if http {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                    }
                }
            });
        }
        Server { addr, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accepting threads.
        for _ in 0..2 {
            let _ = std::net::TcpStream::connect(self.addr);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Http,
    Exec,
    Ping,
}

const KINDS: [Kind; 4] = [Kind::Tcp, Kind::Http, Kind::Exec, Kind::Ping];

#[derive(Clone, Copy, Default)]
struct Count {
    attempts: u64,
    successes: u64,
    failures: u64,
    errors: u64,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(handler: ProbeHandler, delay: Duration) -> ProbeConfig {
    ProbeConfig::builder(ProbeKind::Readiness, handler)
        .initial_delay(delay)
        .period(PERIOD)
        .timeout(TIMEOUT)
        .build()
        .expect("a valid probe configuration")
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = env_number("PROBES_SOAK_N", if bench { 100_000 } else { 300 });
    let seconds = env_number("PROBES_SOAK_SECONDS", if bench { 200 } else { 3 }).max(1);
    let per_kind = n.div_ceil(seconds).max(1) as usize;

    let tcp = Server::start(false);
    let http = Server::start(true);
    let qga = qga::available_or_skip().then(qga::TempQga::start);
    let kinds: Vec<Kind> = KINDS
        .into_iter()
        .filter(|k| qga.is_some() || matches!(k, Kind::Tcp | Kind::Http))
        .collect();

    // The probes of each kind, their starts spread over the period.
    let mut probes = Vec::new();
    for kind in &kinds {
        for i in 0..per_kind {
            let delay = PERIOD * i as u32 / per_kind as u32;
            let handler = match kind {
                Kind::Tcp => ProbeHandler::TcpSocket {
                    port: tcp.addr.port(),
                    host: None,
                },
                Kind::Http => ProbeHandler::HttpGet {
                    path: "/healthz".into(),
                    port: http.addr.port(),
                    host: None,
                    scheme: HttpScheme::Http,
                    headers: Vec::new(),
                },
                Kind::Exec => ProbeHandler::Exec {
                    command: vec!["true".into()],
                },
                Kind::Ping => ProbeHandler::GuestAgentPing,
            };
            probes.push(config(handler, delay));
        }
    }
    let env = ProbeEnv {
        vm_addresses: vec![Ipv4Addr::LOCALHOST.into()],
        agent: qga
            .as_ref()
            .map(|q| AgentChannel::UnixSocket(q.sock.clone())),
    };
    let mut set = ProbeSet::new(probes, env).expect("ProbeSet::new");
    let epoll = epoll_on(&set);

    println!(
        "probe soak: {n} attempts of each kind ({}), {per_kind} probes of each kind, period {PERIOD:?}, timeout {TIMEOUT:?}",
        kinds
            .iter()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let kind_of = |a: &vmpulse::probes::ProbeAttempt| -> Kind {
        match (&a.address, &a.output) {
            (_, Some(_)) => Kind::Exec,
            (Some(addr), _) if addr.ends_with(&format!(":{}", tcp.addr.port())) => Kind::Tcp,
            (Some(_), _) => Kind::Http,
            (None, None) => Kind::Ping,
        }
    };
    let index = |k: Kind| KINDS.iter().position(|x| *x == k).expect("a kind");

    let start = Instant::now();
    set.vm_started(start);
    let mut counts = [Count::default(); 4];
    let mut warm: Option<(usize, u64, Duration)> = None;
    let warm_at = (n / 100).max(1);
    let limit = Duration::from_secs(seconds * 4 + 60);
    let mut ev = [EpollEvent::default(); 4];
    let done = |c: &[Count; 4]| kinds.iter().all(|k| c[index(*k)].attempts >= n);
    while !done(&counts) && start.elapsed() < limit {
        if epoll.wait(100, &mut ev).unwrap_or(0) == 0 {
            continue;
        }
        for event in set.process(Instant::now()) {
            if let ProbeEvent::Attempt(a) = event {
                let c = &mut counts[index(kind_of(&a))];
                c.attempts += 1;
                match a.outcome {
                    Outcome::Success => c.successes += 1,
                    Outcome::Failure => c.failures += 1,
                    Outcome::Error => c.errors += 1,
                }
            }
        }
        if warm.is_none() && kinds.iter().all(|k| counts[index(*k)].attempts >= warm_at) {
            warm = Some((fd_count(), rss_kib(), start.elapsed()));
        }
    }
    // Let the attempts in flight finish, then sample.
    set.vm_stopped(Instant::now());
    let _ = set.process(Instant::now());
    let end = (fd_count(), rss_kib(), start.elapsed());

    for k in &kinds {
        let c = counts[index(*k)];
        println!(
            "{:<5} attempts {:>7}  successes {:>7}  failures {:>6}  errors {:>4}",
            format!("{k:?}"),
            c.attempts,
            c.successes,
            c.failures,
            c.errors
        );
    }
    let Some(warm) = warm else {
        println!("FAIL: the loop never got warm ({warm_at} attempts of each kind)");
        std::process::exit(1);
    };
    println!(
        "warm ({:>6.1} s): fds {:>5}  RSS {:>7} KiB",
        warm.2.as_secs_f64(),
        warm.0,
        warm.1
    );
    println!(
        "end  ({:>6.1} s): fds {:>5}  RSS {:>7} KiB",
        end.2.as_secs_f64(),
        end.0,
        end.1
    );
    let short: Vec<_> = kinds
        .iter()
        .filter(|k| counts[index(**k)].attempts < n)
        .collect();
    if !short.is_empty() {
        println!("FAIL: fewer than {n} attempts for {short:?} within {limit:?}");
        std::process::exit(1);
    }
    if end.0 > warm.0 {
        println!("FAIL: open fds grew from {} to {}", warm.0, end.0);
        std::process::exit(1);
    }
    if end.1 > warm.1 + RSS_SLACK_KIB {
        println!("FAIL: RSS grew from {} KiB to {} KiB", warm.1, end.1);
        std::process::exit(1);
    }
    println!("ok: fds and RSS flat");
    drop(qga);
}
