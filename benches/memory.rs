//! Memory: bytes per i6300esb device model and per probe in a
//! `ProbeSet`, counted by a global allocator that tracks live heap bytes; the RSS
//! of a process running a large `ProbeSet`; the RSS of an idle `vmpulse run`.
//!
//! - Device: `size_of::<I6300Esb<MonotonicClock, Arc<EventCounters>>>()`, plus
//!   the heap it holds once armed and kicked: `MEMORY_BENCH_DEVICES` devices
//!   (default 1,000) in one `Vec`, live heap bytes divided by the count.
//! - `ProbeSet`: `MEMORY_BENCH_PROBES` `tcpSocket` probes (default 10,000 under
//!   `cargo bench`, 200 in `cargo test --benches`) at a 1 s period, starts spread
//!   over the period, against a loopback server that accepts and closes: live heap
//!   bytes per probe once built, and while running (sampled at the end of
//!   `MEMORY_BENCH_SECONDS`, default 5 s; 1 s in the smoke run), and this
//!   process's RSS before the set existed and while it runs.
//! - `vmpulse run`: the release binary on a minimal manifest (a kicking test guest
//!   on real KVM, no probes), its VmRSS sampled 3 s in. A manifest holds at most
//!   one liveness and one readiness probe, so a 10,000-probe `vmpulse run` cannot
//!   be expressed; the `ProbeSet` figure above is the per-probe cost it would add.
//!   Skipped with a message when /dev/kvm is missing or the run fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use i6300esb::{EventCounters, I6300Esb, MonotonicClock, WatchdogAction};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmpulse::probes::config::{ProbeConfig, ProbeHandler, ProbeKind};
use vmpulse::probes::{ProbeEnv, ProbeEvent, ProbeSet};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a
// counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A field of /proc/<pid>/status, in KiB.
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Device = I6300Esb<MonotonicClock, Arc<EventCounters>>;

/// A device as Linux leaves it (BAR0 mapped, both stages loaded, running), then kicked.
fn armed(counters: &Arc<EventCounters>) -> Device {
    let mut d = I6300Esb::with_events(
        WatchdogAction::Reset,
        MonotonicClock::new(),
        counters.clone(),
    );
    d.config_write(0x10, &0xfebf_0000u32.to_le_bytes());
    d.config_write(0x04, &0x0103u16.to_le_bytes());
    d.config_write(0x60, &0x0003u16.to_le_bytes());
    for reg in [0x00u64, 0x04] {
        d.bar0_write(0x0c, &0x80u16.to_le_bytes());
        d.bar0_write(0x0c, &0x86u16.to_le_bytes());
        d.bar0_write(reg, &(2046u32 << 9).to_le_bytes());
    }
    d.config_write(0x68, &[0x02]);
    for _ in 0..10 {
        d.bar0_write(0x0c, &0x80u16.to_le_bytes());
        d.bar0_write(0x0c, &0x86u16.to_le_bytes());
        d.bar0_write(0x0c, &0x0100u16.to_le_bytes());
    }
    assert!(d.next_deadline().is_some(), "the device runs");
    d
}

fn devices(n: usize) {
    let counters = Arc::new(EventCounters::default());
    let before = live();
    let mut v: Vec<Device> = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(armed(&counters));
    }
    let bytes = live() - before;
    let size = std::mem::size_of::<Device>();
    let heap = bytes as f64 / n as f64 - size as f64;
    println!("device model (I6300Esb<MonotonicClock, Arc<EventCounters>>), {n} armed and kicked:");
    println!(
        "  size_of {size} bytes, heap {heap:.1} bytes per device, total {:.1} bytes per device ({} bytes live for {n}); EventCounters (shared, one per VM): {} bytes",
        bytes as f64 / n as f64,
        bytes,
        std::mem::size_of::<EventCounters>()
    );
    drop(v);
}

/// Accepts and closes connections until dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..2 {
            let l = listener.try_clone().expect("listener clone");
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    drop(conn);
                }
            });
        }
        Server { port, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..2 {
            let _ = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        }
    }
}

fn probe_set(n: u64, seconds: u64) {
    let server = Server::start();
    let rss0 = status_kib("self", "VmRSS:").unwrap_or(0);
    let period = Duration::from_secs(1);
    let before = live();
    let configs = (0..n).map(|i| {
        ProbeConfig::builder(
            ProbeKind::Readiness,
            ProbeHandler::TcpSocket {
                port: server.port,
                host: None,
            },
        )
        .initial_delay(period * i as u32 / n as u32)
        .period(period)
        .timeout(period)
        .build()
        .expect("a valid probe configuration")
    });
    let env = ProbeEnv {
        vm_addresses: vec![Ipv4Addr::LOCALHOST.into()],
        agent: None,
    };
    let mut set = ProbeSet::new(configs, env).expect("ProbeSet::new");
    let built = live() - before;
    let epoll = Epoll::new().expect("epoll");
    epoll
        .ctl(
            ControlOperation::Add,
            set.fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .expect("epoll_ctl");
    let start = Instant::now();
    set.vm_started(start);
    let end = start + Duration::from_secs(seconds);
    let mut ev = [EpollEvent::default(); 4];
    let (mut attempts, mut failures) = (0u64, 0u64);
    while Instant::now() < end {
        if epoll.wait(100, &mut ev).unwrap_or(0) == 0 {
            continue;
        }
        for event in set.process(Instant::now()) {
            if let ProbeEvent::Attempt(a) = event {
                attempts += 1;
                failures += u64::from(!a.success);
            }
        }
    }
    let running = live() - before;
    let rss1 = status_kib("self", "VmRSS:").unwrap_or(0);
    let in_flight = set.in_flight();
    set.vm_stopped(Instant::now());
    let _ = set.process(Instant::now());
    drop(set);
    let after = live() - before;
    drop(server);
    let nf = n as f64;
    println!(
        "ProbeSet of {n} tcpSocket probes, period 1 s, {seconds} s running ({attempts} attempts, {failures} failed, {in_flight} in flight at the sample):"
    );
    println!(
        "  heap: {:.0} bytes per probe built, {:.0} bytes per probe running; {after} bytes still live after drop",
        built as f64 / nf,
        running as f64 / nf
    );
    println!(
        "  RSS of this process: {rss0} KiB before the set, {rss1} KiB while it runs (+{} KiB, {:.0} bytes per probe)",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) as f64 * 1024.0 / nf
    );
}

fn vmpulse_run_idle() {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("vmpulse run idle RSS: SKIP (no /dev/kvm)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = dir.path().join("idle.yaml");
    let mut f = std::fs::File::create(&manifest).expect("create manifest");
    f.write_all(
        b"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: idle
  annotations:
    vmpulse.io/guest-timeout: \"30\"
    vmpulse.io/run-for: \"5s\"
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          watchdog:
            name: wd
            i6300esb:
              action: reset
        resources:
          requests:
            memory: 16Mi
",
    )
    .expect("write manifest");
    drop(f);
    let mut child = match Command::new(env!("CARGO_BIN_EXE_vmpulse"))
        .arg("run")
        .arg(&manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("vmpulse run idle RSS: SKIP (spawn: {e})");
            return;
        }
    };
    thread::sleep(Duration::from_secs(3));
    let pid = child.id().to_string();
    let rss = status_kib(&pid, "VmRSS:");
    let hwm = status_kib(&pid, "VmHWM:");
    let status = child.wait().expect("wait for vmpulse");
    match (rss, status.success()) {
        (Some(rss), true) => println!(
            "vmpulse run, idle (16 MiB test guest kicking its watchdog, no probes), 3 s in: VmRSS {rss} KiB, VmHWM {} KiB",
            hwm.unwrap_or(0)
        ),
        _ => println!("vmpulse run idle RSS: SKIP (the run failed: {status}, RSS {rss:?})"),
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n_dev = env_number("MEMORY_BENCH_DEVICES", 1_000) as usize;
    let n_probes = env_number("MEMORY_BENCH_PROBES", if bench { 10_000 } else { 200 }).max(1);
    let seconds = env_number("MEMORY_BENCH_SECONDS", if bench { 5 } else { 1 }).max(1);
    println!(
        "memory: baseline RSS of this process {} KiB",
        status_kib("self", "VmRSS:").unwrap_or(0)
    );
    devices(n_dev.max(1));
    probe_set(n_probes, seconds);
    vmpulse_run_idle();
}
