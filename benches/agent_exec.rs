//! Exec probes through the real `qemu-ga` (one persistent connection, driven by
//! an epoll loop as in the VMM) against spawning one process per probe
//! (`std::process::Command::new("true")`), measured in the same run.
//!
//! The agent's floor, also measured in the same run against the same agent: a
//! minimal blocking client (`UnixStream`, one `guest-sync-delimited` handshake,
//! then `guest-exec` of `true` with `capture-output` and `guest-exec-status` as
//! fast as the agent answers until `exited`; for ping, `guest-ping` round trips).
//! It runs before and after the `ProbeSet` runs, whose attempts' `duration`s (what
//! the `probe` events report as `duration_ms`) are compared with it: exec and
//! `guestAgentPing` probes at a 1 s period, their starts spread over the period
//! so that they never wait for each other on the agent's one connection. The
//! floor keeps the same pace (one exchange per period / probes), so that both
//! find the agent, and this process, idle between exchanges alike.
//!
//! Size: `AGENT_BENCH_PROBES` probes of each kind in the `ProbeSet` for
//! `AGENT_BENCH_SECONDS` (default 50 probes for 10 s under `cargo bench`, 10
//! probes for 1 s in `cargo test --benches`); each floor run makes as many
//! exchanges.
//!
//! `AGENT_BENCH_ONLY=set` runs only the two `ProbeSet` runs and prints their
//! figures (e.g. to count their system calls under `strace -c`).
//!
//! Reported per probe: wall latency (criterion, plus our own totals) and CPU:
//! - agent path: CPU of this process (the client, i.e. what the VMM pays) and of
//!   the qemu-ga process including the `true` children it reaps (what the guest
//!   pays; here the "guest" is this host);
//! - spawn path: CPU of this process plus the reaped `true` children.
//!
//! This process's CPU comes from getrusage(2); qemu-ga's and the reaped
//! children's from /proc/<pid>/stat (clock ticks), summed over every iteration
//! criterion runs (warm-up included), so figures are averages over thousands of
//! probes. Skips with a message when /usr/sbin/qemu-ga is missing.

#[path = "../tests/common/agent_epoll.rs"]
mod agent_epoll;
#[path = "../tests/probes_util/mod.rs"]
mod probes_util;
#[path = "../tests/common/qga.rs"]
mod qga;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_epoll::AgentFds;
use criterion::Criterion;
use probes_util::epoll_on;
use qga::TempQga;
use serde_json::Value;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;
use vmpulse::probes::agent::{AgentClient, AgentOutcome};
use vmpulse::probes::config::{ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::{AgentChannel, ProbeEnv, ProbeEvent, ProbeSet};

/// Token of the driver's timerfd in its epoll (the agent's fds use their fd numbers).
const TIMER_TOKEN: u64 = u64::MAX;

/// CPU time (user + system) of this process so far, from getrusage(2).
fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mean, p50 and p99 of some durations, in microseconds.
fn summary(d: &mut [Duration]) -> (f64, f64, f64) {
    if d.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    d.sort();
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    let mean = d.iter().map(|x| us(*x)).sum::<f64>() / d.len() as f64;
    let at = |q: f64| us(d[((d.len() - 1) as f64 * q).round() as usize]);
    (mean, at(0.5), at(0.99))
}

/// The agent's floor: a minimal blocking client on its own connection.
struct Floor {
    r: BufReader<UnixStream>,
    w: UnixStream,
    line: Vec<u8>,
}

/// What the floor client measured.
#[derive(Default)]
struct FloorRun {
    walls: Vec<Duration>,
    polls: u64,
    cpu: Duration,
}

impl Floor {
    /// Connects (waiting while the agent still serves a previous client) and syncs once.
    fn connect(sock: &Path) -> Floor {
        let w = UnixStream::connect(sock).expect("connect to qemu-ga");
        w.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let r = BufReader::new(w.try_clone().expect("clone the agent stream"));
        let mut f = Floor {
            r,
            w,
            line: Vec::new(),
        };
        let id = 4_711_000 + u64::from(std::process::id());
        let mut req = vec![0xFF];
        req.extend_from_slice(
            format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n")
                .as_bytes(),
        );
        f.w.write_all(&req).expect("write sync");
        loop {
            let v = f.reply();
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return f;
            }
        }
    }

    /// Reads one reply line (skipping the sync delimiter byte).
    fn reply(&mut self) -> Value {
        self.line.clear();
        let n = self
            .r
            .read_until(b'\n', &mut self.line)
            .expect("read from qemu-ga");
        assert!(n > 0, "qemu-ga closed the connection");
        let start = self.line.iter().position(|b| *b != 0xFF).unwrap_or(0);
        serde_json::from_slice(&self.line[start..]).expect("a JSON reply from qemu-ga")
    }

    fn call(&mut self, request: &[u8]) -> Value {
        self.w.write_all(request).expect("write to qemu-ga");
        let v = self.reply();
        assert!(v.get("error").is_none(), "qemu-ga error: {v}");
        v
    }

    /// `n` exec probes of `true`, one every `every`, each polled as fast as the agent answers.
    fn exec(sock: &Path, n: u64, every: Duration) -> FloorRun {
        let mut f = Floor::connect(sock);
        let mut run = FloorRun::default();
        let cpu0 = own_cpu();
        let start = Instant::now();
        for k in 0..n {
            pace(start, every, k);
            let t0 = Instant::now();
            let v = f.call(
                b"{\"execute\":\"guest-exec\",\"arguments\":{\"path\":\"true\",\"capture-output\":true}}\n",
            );
            let pid = v["return"]["pid"].as_i64().expect("a pid");
            let status =
                format!("{{\"execute\":\"guest-exec-status\",\"arguments\":{{\"pid\":{pid}}}}}\n");
            loop {
                run.polls += 1;
                let v = f.call(status.as_bytes());
                if v["return"]["exited"].as_bool() == Some(true) {
                    assert_eq!(v["return"]["exitcode"].as_i64(), Some(0));
                    break;
                }
            }
            run.walls.push(t0.elapsed());
        }
        run.cpu = own_cpu() - cpu0;
        run
    }

    /// `n` guest-ping round trips, one every `every`.
    fn ping(sock: &Path, n: u64, every: Duration) -> FloorRun {
        let mut f = Floor::connect(sock);
        let mut run = FloorRun::default();
        let cpu0 = own_cpu();
        let start = Instant::now();
        for k in 0..n {
            pace(start, every, k);
            let t0 = Instant::now();
            f.call(b"{\"execute\":\"guest-ping\"}\n");
            run.walls.push(t0.elapsed());
        }
        run.cpu = own_cpu() - cpu0;
        run
    }
}

/// Sleeps until the `k`-th slot of `every` after `start`.
fn pace(start: Instant, every: Duration, k: u64) {
    let due = start + every * k as u32;
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// What a `ProbeSet` run measured.
#[derive(Default)]
struct SetRun {
    durations: Vec<Duration>,
    failures: u64,
    cpu: Duration,
}

/// `probes` probes of one handler at a 1 s period, starts spread over the
/// period, on a `ProbeSet` driven by an epoll loop for `seconds`.
fn probe_set(sock: &Path, handler: ProbeHandler, probes: u64, seconds: u64) -> SetRun {
    let period = Duration::from_secs(1);
    let configs = (0..probes).map(|i| {
        ProbeConfig::builder(ProbeKind::Readiness, handler.clone())
            .initial_delay(period * i as u32 / probes as u32)
            .period(period)
            .timeout(period)
            .build()
            .expect("a valid probe configuration")
    });
    let env = ProbeEnv {
        vm_addresses: vec![Ipv4Addr::LOCALHOST.into()],
        agent: Some(AgentChannel::UnixSocket(sock.to_path_buf())),
    };
    let mut set = ProbeSet::new(configs, env).expect("ProbeSet::new");
    let epoll = epoll_on(&set);
    let mut run = SetRun::default();
    let mut ev = [EpollEvent::default(); 4];
    let start = Instant::now();
    let cpu0 = own_cpu();
    set.vm_started(start);
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        if epoll.wait(100, &mut ev).unwrap_or(0) == 0 {
            continue;
        }
        for event in set.process(Instant::now()) {
            if let ProbeEvent::Attempt(a) = event {
                if a.success {
                    run.durations.push(a.duration);
                } else {
                    run.failures += 1;
                }
            }
        }
    }
    set.vm_stopped(Instant::now());
    let _ = set.process(Instant::now());
    run.cpu = own_cpu() - cpu0;
    run
}

/// utime, stime, cutime, cstime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> [u64; 4] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after = &stat[stat.rfind(')').expect("stat format") + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14..=17 of stat(5); `after` starts at field 3.
    let t = |i: usize| f[i - 3].parse::<u64>().expect("tick count");
    [t(14), t(15), t(16), t(17)]
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// Totals over every iteration criterion ran.
#[derive(Default)]
struct Totals {
    iters: u64,
    wall: Duration,
    /// CPU time of this process itself.
    own: Duration,
    /// Ticks spent elsewhere: qemu-ga and its children, or the spawned children.
    other: u64,
}

impl Totals {
    fn own_us(&self) -> f64 {
        self.own.as_secs_f64() * 1e6 / self.iters.max(1) as f64
    }
    fn other_us(&self, tps: f64) -> f64 {
        self.other as f64 / tps * 1e6 / self.iters.max(1) as f64
    }
    fn wall_us(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.iters.max(1) as f64
    }
}

/// The VMM-style loop: epoll on the client's fds, timers from next_deadline.
/// The client's deadlines go on a timerfd in the same epoll, as the VMM keeps
/// them (an epoll timeout would round sub-millisecond polls up to 1 ms).
struct Driver {
    fds: AgentFds,
    timer: TimerFd,
    events: [EpollEvent; 8],
}

impl Driver {
    fn new() -> Driver {
        let fds = AgentFds::new();
        let timer = TimerFd::new().expect("timerfd");
        fds.ep
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TIMER_TOKEN),
            )
            .expect("epoll add timerfd");
        Driver {
            fds,
            timer,
            events: [EpollEvent::default(); 8],
        }
    }

    /// One exec probe of `true`, to completion.
    fn exec_true(&mut self, c: &mut AgentClient, argv: &[String]) {
        let now = Instant::now();
        c.start_exec(1, argv, now, now + Duration::from_secs(5));
        loop {
            if let Some((_, outcome)) = c.take_completions().pop() {
                assert_eq!(
                    outcome,
                    AgentOutcome::Exited {
                        code: Some(0),
                        signal: None,
                        output: String::new()
                    }
                );
                return;
            }
            self.fds.sync(c);
            let now = Instant::now();
            match c.next_deadline() {
                Some(d) => {
                    // A zero duration would disarm the timerfd.
                    let after = d
                        .saturating_duration_since(now)
                        .max(Duration::from_nanos(1));
                    self.timer.reset(after, None).expect("arm timerfd");
                }
                None => self.timer.clear().expect("disarm timerfd"),
            }
            let n = self.fds.ep.wait(100, &mut self.events).expect("epoll wait");
            let now = Instant::now();
            if self.events[..n].iter().any(|e| e.data() != TIMER_TOKEN) {
                c.on_ready(now);
            }
            if c.next_deadline().is_some_and(|d| d <= now) {
                c.on_timer(now);
            }
        }
    }
}

fn main() {
    if !qga::available_or_skip() {
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let set_probes = env_number("AGENT_BENCH_PROBES", if bench { 50 } else { 10 }).max(1);
    let set_seconds = env_number("AGENT_BENCH_SECONDS", if bench { 10 } else { 1 }).max(1);
    let n = set_probes * set_seconds;
    let every = Duration::from_secs(1) / set_probes as u32;
    let tps = ticks_per_second();
    let me = std::process::id();
    let agent = TempQga::start();
    let agent_pid = agent.child.id();

    // The floor, then the probes through a ProbeSet, then the floor again: the
    // agent (one client at a time) serves each connection in turn.
    let exec_handler = ProbeHandler::Exec {
        command: vec!["true".into()],
    };
    if std::env::var("AGENT_BENCH_ONLY").is_ok_and(|v| v == "set") {
        for (label, handler) in [
            ("exec", exec_handler),
            ("ping", ProbeHandler::GuestAgentPing),
        ] {
            let mut run = probe_set(&agent.sock, handler, set_probes, set_seconds);
            let k = run.durations.len();
            let (mean, p50, p99) = summary(&mut run.durations);
            println!(
                "{label} ProbeSet: {k} attempts ({} failed), duration mean {mean:.0} us, p50 {p50:.0}, p99 {p99:.0}; CPU {:.1} us per attempt (whole loop)",
                run.failures,
                run.cpu.as_secs_f64() * 1e6 / k.max(1) as f64
            );
        }
        return;
    }
    let mut floor_exec = Floor::exec(&agent.sock, n, every);
    let mut floor_ping = Floor::ping(&agent.sock, n, every);
    let mut set_exec = probe_set(&agent.sock, exec_handler, set_probes, set_seconds);
    let mut set_ping = probe_set(
        &agent.sock,
        ProbeHandler::GuestAgentPing,
        set_probes,
        set_seconds,
    );
    let floor_exec2 = Floor::exec(&agent.sock, n, every);
    let floor_ping2 = Floor::ping(&agent.sock, n, every);
    floor_exec.walls.extend(floor_exec2.walls);
    floor_exec.polls += floor_exec2.polls;
    floor_exec.cpu += floor_exec2.cpu;
    floor_ping.walls.extend(floor_ping2.walls);
    floor_ping.cpu += floor_ping2.cpu;

    let mut client = AgentClient::new(AgentChannel::UnixSocket(agent.sock.clone()));
    let mut driver = Driver::new();
    let argv = vec!["true".to_string()];

    let mut crit = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let mut group = crit.benchmark_group("exec_probe");

    let mut via_agent = Totals::default();
    group.bench_function("qemu_ga_exec_true", |b| {
        b.iter_custom(|iters| {
            let c0 = own_cpu();
            let a0 = cpu_ticks(agent_pid).iter().sum::<u64>();
            let t0 = Instant::now();
            for _ in 0..iters {
                driver.exec_true(&mut client, &argv);
            }
            let took = t0.elapsed();
            let c1 = own_cpu();
            let a1 = cpu_ticks(agent_pid).iter().sum::<u64>();
            via_agent.iters += iters;
            via_agent.wall += took;
            via_agent.own += c1 - c0;
            via_agent.other += a1 - a0;
            took
        })
    });

    let mut spawned = Totals::default();
    group.bench_function("spawn_true_per_probe", |b| {
        b.iter_custom(|iters| {
            let c0 = own_cpu();
            let [_, _, cu0, cs0] = cpu_ticks(me);
            let t0 = Instant::now();
            for _ in 0..iters {
                let st = Command::new("true").status().expect("spawn true");
                assert!(st.success());
            }
            let took = t0.elapsed();
            let c1 = own_cpu();
            let [_, _, cu1, cs1] = cpu_ticks(me);
            spawned.iters += iters;
            spawned.wall += took;
            spawned.own += c1 - c0;
            spawned.other += (cu1 + cs1) - (cu0 + cs0);
            took
        })
    });
    group.finish();
    crit.final_summary();

    let stats = client.stats();
    drop(client);
    drop(agent);

    let a_wall = via_agent.wall_us();
    let s_wall = spawned.wall_us();
    let a_own = via_agent.own_us();
    let a_other = via_agent.other_us(tps);
    let s_own = spawned.own_us();
    let s_other = spawned.other_us(tps);
    let s_total = (s_own + s_other).max(f64::MIN_POSITIVE);
    println!();
    println!("exec probe of `true`, per probe (averages over all iterations run):");
    println!(
        "  via qemu-ga (AgentClient on an epoll + timerfd loop): {} probes, wall {a_wall:.0} us, CPU client (VMM side) {a_own:.1} us + qemu-ga and child {a_other:.1} us = {:.1} us",
        via_agent.iters,
        a_own + a_other
    );
    println!(
        "  spawn       : {} probes, wall {s_wall:.0} us, CPU parent {s_own:.1} us + child {s_other:.1} us = {s_total:.1} us",
        spawned.iters,
    );
    println!(
        "  ratios (qemu-ga / spawn): wall {:.2}x, total CPU {:.2}x, VMM-side CPU {:.3}x",
        a_wall / s_wall,
        (a_own + a_other) / s_total,
        a_own / s_total
    );
    println!(
        "  agent link: {} requests for {} probes ({:.2} per probe: guest-exec + status polls), {} syncs",
        stats.requests,
        via_agent.iters,
        stats.requests as f64 / via_agent.iters.max(1) as f64,
        stats.syncs
    );

    let per = |cpu: Duration, k: usize| cpu.as_secs_f64() * 1e6 / k.max(1) as f64;
    let floor_n = floor_exec.walls.len();
    let floor_exec_cpu = per(floor_exec.cpu, floor_n);
    let floor_ping_cpu = per(floor_ping.cpu, floor_ping.walls.len());
    let set_exec_n = set_exec.durations.len();
    let set_ping_n = set_ping.durations.len();
    let set_exec_cpu = per(set_exec.cpu, set_exec_n);
    let set_ping_cpu = per(set_ping.cpu, set_ping_n);
    let (fe_mean, fe_p50, fe_p99) = summary(&mut floor_exec.walls);
    let (fp_mean, fp_p50, fp_p99) = summary(&mut floor_ping.walls);
    let (se_mean, se_p50, se_p99) = summary(&mut set_exec.durations);
    let (sp_mean, sp_p50, sp_p99) = summary(&mut set_ping.durations);
    println!();
    println!(
        "against the agent's floor (blocking client, same agent, same run, one exchange every {every:?}; us):"
    );
    println!(
        "  exec floor    : {floor_n} probes, mean {fe_mean:.0}, p50 {fe_p50:.0}, p99 {fe_p99:.0}; {:.2} status polls per probe; CPU {floor_exec_cpu:.1} per probe",
        floor_exec.polls as f64 / floor_n.max(1) as f64
    );
    println!(
        "  exec ProbeSet : {set_exec_n} attempts ({} failed), duration mean {se_mean:.0}, p50 {se_p50:.0}, p99 {se_p99:.0}; CPU {set_exec_cpu:.1} per attempt (whole loop)",
        set_exec.failures
    );
    println!(
        "  ping floor    : {} pings, mean {fp_mean:.0}, p50 {fp_p50:.0}, p99 {fp_p99:.0}; CPU {floor_ping_cpu:.1} per ping",
        floor_ping.walls.len()
    );
    println!(
        "  ping ProbeSet : {set_ping_n} attempts ({} failed), duration mean {sp_mean:.0}, p50 {sp_p50:.0}, p99 {sp_p99:.0}; CPU {set_ping_cpu:.1} per attempt (whole loop)",
        set_ping.failures
    );
    println!(
        "  ratios (ProbeSet / floor): exec mean {:.2}x, p50 {:.2}x; ping mean {:.2}x, p50 {:.2}x",
        se_mean / fe_mean,
        se_p50 / fe_p50,
        sp_mean / fp_mean,
        sp_p50 / fp_p50
    );
    println!(
        "  VMM CPU per exec probe / spawn (parent + child): ProbeSet {:.3}x, AgentClient alone {:.3}x",
        set_exec_cpu / s_total,
        a_own / s_total
    );
}
