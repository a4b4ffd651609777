//! Expiry lateness in the live VMM (figures in docs/PERFORMANCE.md §7).
//!
//! `vmpulse_vmm::runner::run` with real KVM machines, as `vmpulse run` runs them: the
//! built-in guest arms the i6300esb with a few milliseconds per stage on the 1 MHz
//! prescaler and never kicks, so the watchdog expires again after every warm reset. The
//! sink records the `late_ms` of every `watchdog` event: from the device's stage-2
//! deadline to the action carried out. Configurations, in one run:
//!
//! 1. action `reset`, no probes;
//! 2. action `reset`, 1,000 readiness `tcpSocket` probes (period 1 s, their starts spread
//!    1 ms apart, about 1,000 attempts a second) against a loopback server, on the same
//!    loop (a warm reset restarts the probes' schedule, so the same first few probes run
//!    after every boot, still about one attempt per millisecond);
//! 3. and 4. the same with `realtime_priority` (`--realtime-priority 10`);
//! 5. action `poweroff` with runStrategy `Always` (a new VM after every expiry), no probes;
//! 6. and 7. action `inject-nmi`, without and with the probes: the guest arms the watchdog
//!    again after every NMI (`GuestOptions::rearm_after_nmi`), so it fires every two
//!    stages while the VM keeps running; `late_ms` ends when the vCPU thread has handed
//!    the NMI to KVM;
//! 8. action `poweroff` as in 5., with the probes (each new VM starts their schedule
//!    again).
//!
//! Before each, the baseline: a bare timerfd armed (relative, as the watchdog's adapter
//! arms its own) for deadlines as far apart as the VM's expiries, on an idle epoll loop on
//! a thread of this process at the configuration's scheduling priority, with the lateness
//! measured on the same clock. That is the floor of the loop's wake-up alone; each figure
//! is reported as a ratio against it.
//!
//! The last column, for `reset`: from the loop taking the expiry to its reset call
//! returning (the `started` event), i.e. how long the loop itself was held; `late_ms` stops
//! earlier, at the vCPU thread's confirmation.
//!
//! Environment: `EXPIRY_BENCH_N` (expiries per configuration; 200 under `cargo bench`, 20
//! in the `cargo test --benches` smoke run), `EXPIRY_BENCH_STAGE_MS` (per stage, default
//! 2), `EXPIRY_BENCH_PROBES` (default 1000), `EXPIRY_BENCH_CASES` (a comma-separated
//! list of the configurations' numbers above; default all). Without a usable /dev/kvm it skips loudly,
//! and fails under `CI=true`.

#[path = "../tests/common/kvm.rs"]
mod kvm;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;
use vmpulse::manifest::{LivenessAction, RunStrategy};
use vmpulse::probes::config::{ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::vmm::api::OpsConfig;
use vmpulse::vmm::events::{Event, EventSink};
use vmpulse::vmm::machine::GuestOptions;
use vmpulse::vmm::runner::{self, AgentSpec, KvmFactory, RunConfig};
use vmpulse::vmm::sched;

use i6300esb::adapters::timer::MonotonicClock;
use i6300esb::{Clock, WatchdogAction};

/// The priority of the real-time configurations (`--realtime-priority`).
const RT_PRIORITY: u8 = 10;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The load averages from /proc/loadavg (1, 5 and 15 minutes).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Records `late_ms` of each `watchdog` event; says once when it has `want` of them.
struct Recorder {
    late_us: Vec<u64>,
    /// When the loop took the last expiry (the `watchdog` event's instant).
    fired_at: Option<Instant>,
    /// From the loop taking an expiry to its `reset` call returning (the next `started`).
    resumed_us: Vec<u64>,
    probes: u64,
    errors: Vec<String>,
    want: usize,
    done: Option<mpsc::Sender<()>>,
}

impl EventSink for Recorder {
    fn emit_at(&mut self, at: Instant, event: Event) {
        match &event {
            Event::Watchdog { .. } => self.fired_at = Some(at),
            Event::Started { .. } => {
                if let Some(fired) = self.fired_at.take() {
                    let us = at.saturating_duration_since(fired).as_micros();
                    self.resumed_us.push(u64::try_from(us).unwrap_or(u64::MAX));
                }
            }
            _ => {}
        }
        self.emit(event);
    }

    fn emit(&mut self, event: Event) {
        match event {
            Event::Watchdog { late_us, .. } => {
                self.late_us
                    .push(late_us.expect("the runner fills in late_ms"));
                if self.late_us.len() >= self.want {
                    if let Some(done) = self.done.take() {
                        let _ = done.send(());
                    }
                }
            }
            Event::Probe { .. } => self.probes += 1,
            Event::Error { message } => self.errors.push(message),
            _ => {}
        }
    }
}

/// A loopback TCP server that accepts and closes, on a thread of its own.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `PUT /vm/stop` on the run's API socket once the recorder has enough expiries, again
/// until it is taken (between a poweroff and the next VM there is nothing to stop: 409).
fn stop_when_done(socket: PathBuf, done: mpsc::Receiver<()>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        if done.recv().is_err() {
            return;
        }
        for _ in 0..1000 {
            let Ok(mut s) = UnixStream::connect(&socket) else {
                // The run is over.
                return;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(s, "PUT /vm/stop HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 2") {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
    })
}

struct Figures {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Figures {
    fn of(mut us: Vec<u64>) -> Figures {
        assert!(!us.is_empty(), "no samples");
        us.sort_unstable();
        // Nearest rank.
        let rank = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
        Figures {
            n: us.len(),
            p50: Duration::from_micros(rank(0.50)),
            p99: Duration::from_micros(rank(0.99)),
            max: Duration::from_micros(*us.last().unwrap()),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
}

/// [`bare_timerfd`] on a thread of its own, under SCHED_FIFO at `realtime` if given (as
/// the runner's loop would be); `None` if that priority cannot be had.
fn baseline(n: usize, gap: Duration, realtime: Option<u8>) -> Option<Figures> {
    thread::spawn(move || {
        if let Some(priority) = realtime {
            sched::realtime(priority).ok()?;
        }
        Some(bare_timerfd(n, gap))
    })
    .join()
    .expect("the baseline thread")
}

/// The floor: a bare timerfd on an idle epoll loop, armed relative to now for a deadline
/// `gap` ahead, `n` times; how late each wake-up was on a `MonotonicClock`.
fn bare_timerfd(n: usize, gap: Duration) -> Figures {
    let clock = MonotonicClock::new();
    let epoll = Epoll::new().expect("epoll");
    let mut timer = TimerFd::new().expect("timerfd");
    epoll
        .ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .expect("epoll_ctl");
    let mut events = [EpollEvent::default(); 4];
    let mut late = Vec::with_capacity(n);
    for _ in 0..n {
        let deadline = clock.now_ns() + gap.as_nanos() as u64;
        let delay = deadline.saturating_sub(clock.now_ns()).max(1);
        timer
            .reset(Duration::from_nanos(delay), None)
            .expect("arm the timerfd");
        loop {
            match epoll.wait(-1, &mut events) {
                Ok(k) if k > 0 => break,
                _ => continue,
            }
        }
        late.push(clock.now_ns().saturating_sub(deadline) / 1000);
        timer.clear().expect("disarm the timerfd");
    }
    Figures::of(late)
}

/// One configuration, always under runStrategy `Always` (a `poweroff` brings a new VM).
struct Case {
    name: &'static str,
    action: WatchdogAction,
    probes: usize,
    /// `--realtime-priority`.
    realtime: Option<u8>,
}

struct Outcome {
    figures: Figures,
    /// For `reset`: how long the loop was held by the reset call.
    resumed: Option<Figures>,
    seconds: f64,
    probe_attempts: u64,
}

fn run_case(case: &Case, n: usize, stage: Duration, server: &Server) -> Outcome {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("api.sock");
    let probes: Vec<ProbeConfig> = (0..case.probes)
        .map(|i| {
            ProbeConfig::builder(
                ProbeKind::Readiness,
                ProbeHandler::tcp_socket(server.addr.port()),
            )
            .initial_delay(Duration::from_secs(1) * i as u32 / case.probes as u32)
            .period(Duration::from_secs(1))
            .timeout(Duration::from_secs(1))
            .build()
            .expect("a valid probe")
        })
        .collect();
    let cfg = RunConfig {
        vm_name: "lateness".into(),
        strategy: RunStrategy::Always,
        watchdog: Some(("wd".into(), case.action)),
        liveness_action: LivenessAction::Stop,
        grace_period: Duration::from_secs(1),
        probes,
        probe_addresses: vec![Ipv4Addr::LOCALHOST.into()],
        agent: AgentSpec::None,
        max_restarts: None,
        // A bound, should the stop never come.
        run_for: Some(Duration::from_secs(30) + Duration::from_millis(200) * n as u32),
        backoff: Duration::from_millis(1),
        handle_signals: false,
        ops: OpsConfig {
            api_socket: Some(socket.clone()),
            ..OpsConfig::default()
        },
        realtime_priority: case.realtime,
    };
    let mut factory = KvmFactory {
        memory_bytes: 2 << 20,
        guest: GuestOptions {
            timeout_secs: 30,
            // Never within a run: the guest only arms the watchdog at boot.
            kick_every: Duration::from_secs(3600),
            hang_after: None,
            ignore_shutdown: false,
            stage_timeout: Some(stage),
            rearm_after_nmi: case.action == WatchdogAction::InjectNmi,
        },
    };
    let (tx, rx) = mpsc::channel();
    let stopper = stop_when_done(socket, rx);
    let mut sink = Recorder {
        late_us: Vec::with_capacity(n),
        fired_at: None,
        resumed_us: Vec::with_capacity(n),
        probes: 0,
        errors: Vec::new(),
        want: n,
        done: Some(tx),
    };
    let started = Instant::now();
    let outcome = runner::run(cfg, &mut factory, &mut sink);
    let seconds = started.elapsed().as_secs_f64();
    drop(sink.done.take());
    let _ = stopper.join();
    assert!(
        sink.errors.is_empty() && outcome.exit_code == 0,
        "{}: {:?}, errors {:?}",
        case.name,
        outcome,
        sink.errors
    );
    assert!(
        sink.late_us.len() >= n,
        "{}: only {} expiries in {seconds:.1} s",
        case.name,
        sink.late_us.len()
    );
    Outcome {
        resumed: (case.action == WatchdogAction::Reset && !sink.resumed_us.is_empty())
            .then(|| Figures::of(sink.resumed_us)),
        figures: Figures::of(sink.late_us),
        seconds,
        probe_attempts: sink.probes,
    }
}

fn main() {
    if !kvm::kvm_or_skip("expiry_lateness") {
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let n = env_number("EXPIRY_BENCH_N", if bench { 200 } else { 20 }).max(1) as usize;
    let stage = Duration::from_millis(env_number("EXPIRY_BENCH_STAGE_MS", 2).max(1));
    let probe_count = env_number("EXPIRY_BENCH_PROBES", 1000) as usize;
    let server = Server::start();
    let case = |name, action, probes, realtime| Case {
        name,
        action,
        probes,
        realtime,
    };
    use WatchdogAction::{InjectNmi, Poweroff, Reset};
    let poweroff = "poweroff, then a new VM";
    let rt = Some(RT_PRIORITY);
    let cases = [
        case("reset", Reset, 0, None),
        case("reset", Reset, probe_count, None),
        case("reset", Reset, 0, rt),
        case("reset", Reset, probe_count, rt),
        case(poweroff, Poweroff, 0, None),
        case("inject-nmi", InjectNmi, 0, None),
        case("inject-nmi", InjectNmi, probe_count, None),
        case(poweroff, Poweroff, probe_count, None),
    ];
    println!(
        "expiry lateness: {n} expiries per configuration, {} ms per stage, load average {}",
        stage.as_millis(),
        load_average()
    );
    println!("| action | probes | priority | expiries | p50 | p99 | max | baseline p50 / p99 / max | ratio p50 / p99 / max | probe attempts/s | loop held p50 / p99 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let only = std::env::var("EXPIRY_BENCH_CASES").unwrap_or_default();
    for case in cases
        .iter()
        .enumerate()
        .filter(|(i, _)| only.is_empty() || only.split(',').any(|c| c == (i + 1).to_string()))
        .map(|(_, c)| c)
    {
        let priority = match case.realtime {
            Some(p) => format!("SCHED_FIFO {p}"),
            None => "normal".into(),
        };
        let Some(floor) = baseline(n, stage * 2, case.realtime) else {
            println!(
                "| {} | {} | {priority} | skipped: no permission for real-time scheduling |",
                case.name, case.probes
            );
            continue;
        };
        let got = run_case(case, n, stage, &server);
        let f = &got.figures;
        println!(
            "| {} | {} | {priority} | {} | {} | {} | {} | {} / {} / {} | {} / {} / {} | {:.0} | {} |",
            case.name,
            case.probes,
            f.n,
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            ms(floor.p50),
            ms(floor.p99),
            ms(floor.max),
            ratio(f.p50, floor.p50),
            ratio(f.p99, floor.p99),
            ratio(f.max, floor.max),
            got.probe_attempts as f64 / got.seconds,
            got.resumed
                .as_ref()
                .map_or("—".to_string(), |r| format!("{} / {}", ms(r.p50), ms(r.p99))),
        );
    }
    println!("load average at the end: {}", load_average());
}
