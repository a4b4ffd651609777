//! Exec probes through the real `qemu-ga` (one persistent connection, driven by
//! an epoll loop as in the VMM) against spawning one process per probe
//! (`std::process::Command::new("true")`), measured in the same run.
//!
//! Reported per probe: wall latency (criterion, plus our own totals) and CPU:
//! - agent path: CPU of this process (the client, i.e. what the VMM pays) and of
//!   the qemu-ga process including the `true` children it reaps (what the guest
//!   pays; here the "guest" is this host);
//! - spawn path: CPU of this process plus the reaped `true` children.
//!
//! CPU comes from /proc/<pid>/stat (clock ticks), summed over every iteration
//! criterion runs (warm-up included), so figures are averages over thousands of
//! probes. Skips with a message when /usr/sbin/qemu-ga is missing.

#[path = "../tests/common/agent_epoll.rs"]
mod agent_epoll;
#[path = "../tests/common/qga.rs"]
mod qga;

use std::process::Command;
use std::time::{Duration, Instant};

use agent_epoll::AgentFds;
use criterion::Criterion;
use qga::TempQga;
use vmm_sys_util::epoll::EpollEvent;
use vmpulse::probes::agent::{AgentClient, AgentOutcome};
use vmpulse::probes::AgentChannel;

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
    /// Ticks spent by this process itself.
    own: u64,
    /// Ticks spent elsewhere: qemu-ga and its children, or the spawned children.
    other: u64,
}

impl Totals {
    fn per_probe_us(&self, ticks: u64, tps: f64) -> f64 {
        ticks as f64 / tps * 1e6 / self.iters.max(1) as f64
    }
    fn wall_us(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.iters.max(1) as f64
    }
}

/// The VMM-style loop: epoll on the client's fds, timers from next_deadline.
struct Driver {
    fds: AgentFds,
    events: [EpollEvent; 8],
}

impl Driver {
    fn new() -> Driver {
        Driver {
            fds: AgentFds::new(),
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
            let ms = c.next_deadline().map_or(100, |d| {
                d.saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000)
                    .min(100) as i32
            });
            let n = self.fds.ep.wait(ms, &mut self.events).expect("epoll wait");
            let now = Instant::now();
            if n > 0 {
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
    let tps = ticks_per_second();
    let me = std::process::id();
    let agent = TempQga::start();
    let agent_pid = agent.child.id();
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
            let [u0, s0, ..] = cpu_ticks(me);
            let a0 = cpu_ticks(agent_pid).iter().sum::<u64>();
            let t0 = Instant::now();
            for _ in 0..iters {
                driver.exec_true(&mut client, &argv);
            }
            let took = t0.elapsed();
            let [u1, s1, ..] = cpu_ticks(me);
            let a1 = cpu_ticks(agent_pid).iter().sum::<u64>();
            via_agent.iters += iters;
            via_agent.wall += took;
            via_agent.own += (u1 + s1) - (u0 + s0);
            via_agent.other += a1 - a0;
            took
        })
    });

    let mut spawned = Totals::default();
    group.bench_function("spawn_true_per_probe", |b| {
        b.iter_custom(|iters| {
            let [u0, s0, cu0, cs0] = cpu_ticks(me);
            let t0 = Instant::now();
            for _ in 0..iters {
                let st = Command::new("true").status().expect("spawn true");
                assert!(st.success());
            }
            let took = t0.elapsed();
            let [u1, s1, cu1, cs1] = cpu_ticks(me);
            spawned.iters += iters;
            spawned.wall += took;
            spawned.own += (u1 + s1) - (u0 + s0);
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
    let a_own = via_agent.per_probe_us(via_agent.own, tps);
    let a_other = via_agent.per_probe_us(via_agent.other, tps);
    let s_own = spawned.per_probe_us(spawned.own, tps);
    let s_other = spawned.per_probe_us(spawned.other, tps);
    println!();
    println!("exec probe of `true`, per probe (averages over all iterations run):");
    println!(
        "  via qemu-ga : {} probes, wall {a_wall:.0} us, CPU client (VMM side) {a_own:.1} us + qemu-ga and child {a_other:.1} us = {:.1} us",
        via_agent.iters,
        a_own + a_other
    );
    println!(
        "  spawn       : {} probes, wall {s_wall:.0} us, CPU parent {s_own:.1} us + child {s_other:.1} us = {:.1} us",
        spawned.iters,
        s_own + s_other
    );
    println!(
        "  ratios (qemu-ga / spawn): wall {:.2}x, total CPU {:.2}x, VMM-side CPU {:.3}x",
        a_wall / s_wall,
        (a_own + a_other) / (s_own + s_other).max(f64::MIN_POSITIVE),
        a_own / (s_own + s_other).max(f64::MIN_POSITIVE)
    );
    println!(
        "  agent link: {} requests for {} probes ({:.1} per probe: guest-exec + status polls), {} syncs",
        stats.requests,
        via_agent.iters,
        stats.requests as f64 / via_agent.iters.max(1) as f64,
        stats.syncs
    );
}
